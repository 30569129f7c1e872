"""A damaged manifest is bad input: infer checks every part against the index before any task
runs (a LIST for presence and size, one Spark stage for sha256), exits 2 with one line naming
the part, and writes nothing: no part file, no run record, no Glue table."""

from __future__ import annotations

import pytest

from common import storage
from common.manifest import PARTS_DIR, iter_shards, read_manifest
from manifests.make_examples import v1_manifest_bytes
from testkit.localdev import upload_cifar_like
from tests.helpers import infer_args

pytestmark = pytest.mark.once  # the manifest's integrity checks, on the driver: the same on either Spark line

BUCKET = "integrity"


@pytest.fixture(scope="module")
def good(s3, spark) -> str:
    """12 PNGs packed in shards of 4, one shard per manifest part (3 parts); the index's URI."""
    from prepare.main import main

    s3.create_bucket(BUCKET)
    upload_cifar_like(f"s3://{BUCKET}/in/", 12, seed=41, endpoint_url=s3.endpoint_url)
    assert main(["--input", f"s3://{BUCKET}/in/", "--output", f"s3://{BUCKET}/good/", "--batch", "4",
                 "--shards-per-part", "1"]) == 0
    index = f"s3://{BUCKET}/good/manifest.parquet"
    assert len(read_manifest(index).parts) == 3
    return index


def _copy(good: str, name: str) -> str:
    """A copy of the good manifest folder (index and parts) under ``name/``; the copy's index URI."""
    src = good.rsplit("/", 1)[0] + "/"
    for o in storage.list_objects(src):
        rel = o.key[len(storage.parse_s3(src).key):]
        storage.write_bytes(f"s3://{BUCKET}/{name}/{rel}", storage.read_bytes(f"s3://{BUCKET}/{o.key}"))
    return f"s3://{BUCKET}/{name}/manifest.parquet"


def _part(index: str, part_id: int) -> str:
    return f"{index.rsplit('/', 1)[0]}/{PARTS_DIR}/part-{part_id:05d}.parquet"


def _infer_refuses(capsys, index: str, model_uris: dict, name: str, expected: list[str], *extra: str) -> None:
    from infer.main import main

    out = f"s3://{BUCKET}/pred-{name}/"
    rc = main(infer_args(index, model_uris, out, *extra))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("infer: error: "), err
    for text in expected:
        assert text in err[0], err[0]
    assert list(storage.list_objects(out)) == []  # no part file, no status, no run record


def test_missing_part(s3, good, model_uris, capsys):
    index = _copy(good, "missing")
    storage.delete(_part(index, 1))
    _infer_refuses(capsys, index, model_uris, "missing", [_part(index, 1), "is missing", "2 of the 3 parts"])


def test_wrong_sized_part(s3, good, model_uris, capsys):
    index = _copy(good, "resized")
    data = storage.read_bytes(_part(index, 2))
    storage.write_bytes(_part(index, 2), data + b"\0")
    _infer_refuses(capsys, index, model_uris, "resized", [_part(index, 2), f"{len(data) + 1} bytes",
                                                           f"the index says {len(data)}"])


def test_part_with_another_checksum(s3, good, model_uris, capsys):
    """Same size, other bytes: only the sha256 tells, and the check reads the part in a Spark task."""
    index = _copy(good, "changed")
    data = bytearray(storage.read_bytes(_part(index, 0)))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(_part(index, 0), bytes(data))
    _infer_refuses(capsys, index, model_uris, "changed", [_part(index, 0), "sha256", "changed after prepare"])


def test_glue_table_is_not_created_for_a_damaged_manifest(s3, good, model_uris, capsys):
    import boto3

    index = _copy(good, "noglue")
    storage.delete(_part(index, 0))
    _infer_refuses(capsys, index, model_uris, "noglue", ["is missing"], "--glue-database", "integrity_db",
                   "--glue-table", "preds")
    glue = boto3.client("glue", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    assert "integrity_db" not in [d["Name"] for d in glue.get_databases()["DatabaseList"]]


def test_only_the_selected_parts_are_read(s3, good, model_uris, capsys):
    """--shards 0 needs part 0 only: a damaged part 2 does not stop it, and it is not read."""
    from infer.main import main

    index = _copy(good, "selected")
    data = bytearray(storage.read_bytes(_part(index, 2)))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(_part(index, 2), bytes(data))
    out = f"s3://{BUCKET}/pred-selected/"
    assert main(infer_args(index, model_uris, out, "--shards", "0", "--run-id", "sel")) == 0
    assert [o.key.rsplit("/", 1)[-1] for o in storage.list_objects(out + "run_id=sel/")] == ["part-00000.parquet"]


@pytest.mark.parametrize("damage", ["truncated", "grown"])
def test_version_1_manifest_that_changed_size(s3, good, model_uris, capsys, damage):
    """A version-1 manifest is its own one part: a cut or grown file is unreadable, exit 2, nothing written."""
    loaded = read_manifest(good)
    v1 = v1_manifest_bytes(list(iter_shards(loaded)), loaded.manifest_id, loaded.input_uri, 4, 0)
    index = f"s3://{BUCKET}/v1-{damage}/manifest.parquet"
    storage.write_bytes(index, v1[: len(v1) - 100] if damage == "truncated" else v1 + b"x" * 100)
    _infer_refuses(capsys, index, model_uris, f"v1-{damage}", [index, "not a readable Parquet manifest"])


def test_intact_manifests_of_both_formats_pass(s3, good, model_uris):
    """No false alarm: the same shards as format 1 and format 2 both run (dry run checks the listing)."""
    from infer.main import main

    loaded = read_manifest(good)
    v1 = f"s3://{BUCKET}/v1-ok/manifest.parquet"
    storage.write_bytes(v1, v1_manifest_bytes(list(iter_shards(loaded)), loaded.manifest_id, loaded.input_uri, 4, 0))
    for index in (good, v1):
        assert main(infer_args(index, model_uris, f"s3://{BUCKET}/pred-ok/", "--shards", "2", "--run-id",
                               "ok" + read_manifest(index).version)) == 0
