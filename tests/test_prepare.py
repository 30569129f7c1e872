"""prepare on a bucket of 200 images and hostile objects: every object accounted for exactly once."""

from __future__ import annotations

import hashlib
import io

import mxnet as mx
import pyarrow.parquet as pq
import pytest

from common import storage
from common.manifest import FORMAT_VERSION, INDEX_SCHEMA, SHARD_SCHEMA
from common.shard import unpack_shard
from tests.conftest import GOOD_IMAGES, hostile_objects
from tests.helpers import read_manifest


@pytest.fixture(scope="module")
def manifest(prepared):
    return read_manifest(prepared["manifest"])


@pytest.fixture(scope="module")
def skipped(prepared) -> dict[str, str]:
    t = pq.read_table(io.BytesIO(storage.read_bytes(prepared["skipped"])))
    assert t.schema.names == ["key", "reason"]
    keys = t.column("key").to_pylist()
    assert len(keys) == len(set(keys))
    return dict(zip(keys, t.column("reason").to_pylist()))


def test_every_object_lands_exactly_once(prepared, manifest, skipped):
    in_shards = [k for e in manifest.entries for k in e.keys]
    assert len(in_shards) == len(set(in_shards)), "a key is in two shards"
    assert not set(in_shards) & set(skipped), "a key is both in a shard and skipped"
    assert set(in_shards) | set(skipped) == set(prepared["objects"])
    valid = sum(1 for _, reason in prepared["objects"].values() if reason is None)
    assert len(in_shards) == valid == GOOD_IMAGES + sum(1 for _, r in hostile_objects().values() if r is None)


@pytest.mark.once
def test_skip_reasons(prepared, skipped):
    for key, (_, expected) in prepared["objects"].items():
        if expected is not None:
            assert expected in skipped[key], (key, skipped[key])
    assert "undecodable" in skipped["in/truncated.png"]


@pytest.mark.once
def test_unusual_pngs_are_images(manifest):
    keys = {k for e in manifest.entries for k in e.keys}
    for rel in ("gray.png", "rgba.png", "palette.png", "sixteen-bit.png", "large-640x480.png", "with space.png",
                "ünïcødé-猫.png", "UPPER.PNG"):
        assert f"in/{rel}" in keys


@pytest.mark.once
def test_shards_are_sorted_full_and_hold_original_bytes(prepared, manifest, skipped):
    entries = manifest.entries
    assert [e.shard_id for e in entries] == list(range(len(entries)))
    # batch i of the sorted candidates is shard i, less its undecodable images (skipped, never refilled)
    undecodable = {k for k, r in skipped.items() if r.startswith(("undecodable", "content is"))}
    assert undecodable
    candidates = sorted(undecodable | {k for e in entries for k in e.keys})
    for e in entries:
        assert set(e.keys) == set(candidates[64 * e.shard_id : 64 * (e.shard_id + 1)]) - undecodable
    all_keys = [k for e in entries for k in e.keys]
    assert all_keys == sorted(all_keys), "shard contents must follow the sorted listing"
    for e in entries:
        data = storage.read_bytes(e.uri)
        assert e.uri == f"{prepared['output']}shards/shard-{e.shard_id:05d}.rec"
        assert hashlib.sha256(data).hexdigest() == e.sha256 and len(data) == e.num_bytes
        payloads = unpack_shard(data, e.uri)
        assert payloads == [prepared["objects"][k][0] for k in e.keys]


@pytest.mark.once
def test_shard_reads_with_mxrecordio(prepared, manifest, tmp_path):
    e = manifest.entries[0]
    path = tmp_path / "s.rec"
    path.write_bytes(storage.read_bytes(e.uri))
    reader = mx.recordio.MXRecordIO(str(path), "r")
    for i, key in enumerate(e.keys):
        header, png = mx.recordio.unpack(reader.read())
        assert (header.flag, header.label, header.id, header.id2) == (0, 0.0, i, 0)
        assert png == prepared["objects"][key][0]
    assert reader.read() is None


@pytest.mark.once
def test_manifest_metadata(prepared, manifest):
    t = pq.read_table(io.BytesIO(storage.read_bytes(prepared["manifest"])))
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert FORMAT_VERSION == "3" and meta["shardinfer.format_version"] == FORMAT_VERSION
    assert meta["shardinfer.input"] == prepared["prefix"]
    assert meta["shardinfer.batch_size"] == "64"
    assert meta["shardinfer.manifest_id"] == manifest.manifest_id
    assert meta["shardinfer.created_at"].endswith("Z")
    assert meta["shardinfer.num_images"] == str(manifest.num_images)
    assert meta["shardinfer.num_skipped"] == str(len(pq.read_table(io.BytesIO(storage.read_bytes(prepared["skipped"])))))
    assert t.schema.remove_metadata() == INDEX_SCHEMA  # the index: one row per part, never the keys
    rows = t.to_pylist()
    assert [r["part_id"] for r in rows] == list(range(len(rows)))
    for r in rows:
        data = storage.read_bytes(r["uri"])
        assert r["uri"] == f"{prepared['output']}manifest/part-{r['part_id']:05d}.parquet"
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["num_bytes"]
        part = pq.ParquetFile(io.BytesIO(data))
        assert part.schema_arrow.remove_metadata() == SHARD_SCHEMA and part.metadata.num_rows == r["num_shards"]
        assert all(part.metadata.row_group(g).num_rows <= 32 for g in range(part.metadata.num_row_groups))


def test_rerun_gives_the_same_shards(prepared, manifest):
    """Deterministic: a second prepare into another prefix gives byte-identical shards and the same id."""
    from prepare.main import main

    out = prepared["output"].replace("shards/t/", "shards/t-again/")
    assert main(["--input", prepared["prefix"], "--output", out]) == 0
    again = read_manifest(out + "manifest.parquet")
    assert again.manifest_id == manifest.manifest_id
    assert [(e.sha256, e.keys) for e in again.entries] == [(e.sha256, e.keys) for e in manifest.entries]


@pytest.mark.once
def test_missing_bucket_is_a_clear_error(spark, capsys):
    from prepare.main import main

    rc = main(["--input", "s3://no-such-bucket-here/in/", "--output", "s3://no-such-bucket-here/out/"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "prepare: error: s3://no-such-bucket-here/in/: bucket does not exist" in err
    assert "Traceback" not in err


def test_batch_must_be_positive(capsys):
    from prepare.main import main

    assert main(["--input", "s3://x/in/", "--output", "s3://x/o/", "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err


@pytest.mark.once
def test_bad_image_leaves_its_shard_one_short_and_moves_no_other(s3, spark):
    """65 candidates, one undecodable: shard 0 holds the 63 good images of the first 64, shard 1 the 65th."""
    from prepare.main import main
    from testkit.localdev import upload_cifar_like

    s3.create_bucket("stale")
    upload_cifar_like("s3://stale/in/", 64, seed=61, endpoint_url=s3.endpoint_url)
    storage.write_bytes("s3://stale/in/00010_bad.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    assert main(["--input", "s3://stale/in/", "--output", "s3://stale/out/"]) == 0
    m = read_manifest("s3://stale/out/manifest.parquet")
    assert [e.num_records for e in m.entries] == [63, 1] and "in/00010_bad.png" not in m.entries[0].keys
    assert [o.key for o in storage.list_objects("s3://stale/out/shards/")] == ["out/shards/shard-00000.rec",
                                                                             "out/shards/shard-00001.rec"]
    for e in m.entries:
        assert unpack_shard(storage.read_bytes(e.uri), "s") == [storage.read_bytes(f"s3://stale/{k}") for k in e.keys]
    skipped = pq.read_table(io.BytesIO(storage.read_bytes("s3://stale/out/skipped.parquet"))).to_pylist()
    assert [r["key"] for r in skipped] == ["in/00010_bad.png"]


# ----------------------------------------------------------------------------- the guard against junk


def test_guard_verdict_names_the_fraction_the_reasons_and_the_flag():
    from collections import Counter

    from prepare.guard import summarise, verdict

    rows = [(f"a/{i}.JPG", "not a .png key") for i in range(9)] + [("a/", "folder marker"),
                                                                   ("a/b.png", "undecodable PNG: truncated")]
    reasons, exts, markers = summarise(rows)
    assert markers == 1 and reasons == Counter({"not a .png key": 9, "undecodable PNG": 1}) and exts == {".jpg": 9}
    line = verdict(11, reasons, exts, 0.5, ("png",))
    assert line.startswith("91% of the 11 listed objects were skipped, more than --max-skipped-fraction 0.5 "
                           "(commonest: 9 'not a .png key', 1 'undecodable PNG')")
    assert "pass --formats jpeg,png (or all)" in line and line.endswith("no manifest was written")
    assert verdict(20, reasons, exts, 0.5, ("png",)) is None  # exactly half: an image and a sidecar each
    assert verdict(11, reasons, exts, 1.0, ("png",)) is None
    assert "--formats" not in verdict(11, Counter({"undecodable PNG": 9}), Counter(), 0.5, ("png",))


@pytest.mark.once
@pytest.mark.spark
def test_mostly_junk_writes_skipped_but_no_manifest_and_exits_1(s3, spark, capsys):
    from prepare.main import main

    s3.create_bucket("junk")
    for i in range(9):  # a photo archive prepared with the default --formats png
        storage.write_bytes(f"s3://junk/in/photo-{i}.jpg", b"jpeg bytes")
    good = storage.read_bytes(upload_one("s3://junk/in/"))
    storage.write_bytes("s3://junk/bad/ok.png", good)
    for i in range(3):
        storage.write_bytes(f"s3://junk/bad/broken-{i}.png", good[: len(good) // 3])
    cases = (("in", [], "90% of the 10 listed objects", "pass --formats jpeg,png"),
             ("bad", [], "75% of the 4 listed objects", "3 'undecodable PNG'"))  # found only when packing
    for name, extra, fraction, said in cases:
        out = f"s3://junk/out-{name}/"
        assert main(["--input", f"s3://junk/{name}/", "--output", out, *extra]) == 1
        err = capsys.readouterr().err
        assert f"prepare: error: {fraction} were skipped" in err and said in err, err
        assert len(err.strip().splitlines()) == 1
        assert not storage.exists(out + "manifest.parquet")
        skipped = pq.read_table(io.BytesIO(storage.read_bytes(out + "skipped.parquet"))).column("key").to_pylist()
        assert len(skipped) == (9 if name == "in" else 3)
    assert main(["--input", "s3://junk/bad/", "--output", "s3://junk/out-ok/", "--max-skipped-fraction", "1"]) == 0
    assert read_manifest("s3://junk/out-ok/manifest.parquet").num_images == 1
    assert main(["--input", "s3://junk/bad/", "--output", "s3://junk/x/", "--max-skipped-fraction", "1.5"]) == 2
    assert "--max-skipped-fraction must be between 0 and 1, got 1.5" in capsys.readouterr().err


def upload_one(prefix: str) -> str:
    """One generated PNG under ``prefix``; returns its URI."""
    from testkit.localdev import upload_cifar_like

    [uri] = upload_cifar_like(prefix, 1, seed=9)
    return uri


# ----------------------------------------------------------------------------- daily increments


@pytest.mark.once
@pytest.mark.spark
def test_exclude_manifest_packs_only_the_new_keys_and_nothing_new_is_an_empty_manifest(s3, spark, model_uris, capsys):
    from infer.main import main as infer
    from prepare.main import main
    from testkit.localdev import upload_cifar_like

    s3.create_bucket("daily")
    day1 = {storage.parse_s3(u).key for u in upload_cifar_like("s3://daily/in/", 6, seed=21)}
    assert main(["--input", "s3://daily/in/", "--output", "s3://daily/m1/", "--batch", "4"]) == 0
    new = {storage.parse_s3(u).key for u in upload_cifar_like("s3://daily/in/day2-", 3, seed=22)}
    assert main(["--input", "s3://daily/in/", "--output", "s3://daily/m2/", "--batch", "4",
                 "--exclude-manifest", "s3://daily/m1/manifest.parquet"]) == 0
    assert "6 keys already in the excluded manifests left out" in capsys.readouterr().out
    m1, m2 = read_manifest("s3://daily/m1/manifest.parquet"), read_manifest("s3://daily/m2/manifest.parquet")
    assert {k for e in m1.entries for k in e.keys} == day1
    assert sorted(k for e in m2.entries for k in e.keys) == sorted(new) and m2.manifest_id != m1.manifest_id
    # nothing new: an empty manifest, exit 0; infer over it has nothing to do, exit 0
    assert main(["--input", "s3://daily/in/", "--output", "s3://daily/m3/", "--exclude-manifest",
                 "s3://daily/m1/manifest.parquet", "--exclude-manifest", "s3://daily/m2/manifest.parquet"]) == 0
    assert "nothing new: an empty manifest" in capsys.readouterr().out
    m3 = read_manifest("s3://daily/m3/manifest.parquet")
    assert (m3.num_shards, m3.num_images, len(m3.parts)) == (0, 0, 0)
    assert infer(["--manifest", "s3://daily/m3/manifest.parquet", "--sym-url", model_uris["sym"], "--param-url",
                  model_uris["params"], "--label-url", model_uris["labels"], "--output", "s3://daily/pred/"]) == 0
    assert "running 0 shards: nothing to do" in capsys.readouterr().out
    # a manifest of another bucket's images: its keys mean other objects
    s3.create_bucket("daily-other")
    upload_cifar_like("s3://daily-other/in/", 2, seed=23)
    assert main(["--input", "s3://daily-other/in/", "--output", "s3://daily-other/m/",
                 "--exclude-manifest", "s3://daily/m1/manifest.parquet"]) == 2
    assert "its images are in s3://daily/in/, not in the bucket of --input" in capsys.readouterr().err
