"""Manifest and output formats as pure functions, the documented examples, and what travels to executors."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from datetime import datetime, timezone
from functools import partial

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from common import manifest as manifest_mod
from common import status, storage
from common.manifest import (
    FORMAT_VERSION,
    ManifestError,
    ShardEntry,
    iter_shards,
    manifest_from_bytes,
    read_shards,
    write_manifest,
)
from common.model_files import ModelSpec
from common.output import ImageResult, check_run_id, default_run_id, part_key, predictions_table, table_to_parquet
from common.status import ShardStatus
from infer.plan import make_plan
from infer.task import InferSettings, run_group
from tests.helpers import ROOT

EXAMPLES = os.path.join(ROOT, "manifests", "examples")


def _entries(n: int = 2):
    return [ShardEntry(i, f"s3://b/s/shards/shard-{i:05d}.rec", 2 - i % 2, 10, f"{i:064x}",
                       tuple(f"{i}-{j}.png" for j in range(2 - i % 2))) for i in range(n)]


def test_manifest_roundtrip_and_stable_id(tmp_path):
    m = write_manifest(_entries(70), f"{tmp_path}/a/", "s3://b/in/", 64, 3, shards_per_part=32)
    assert [(p.first_shard_id, p.num_shards) for p in m.parts] == [(0, 32), (32, 32), (64, 6)]
    assert m.num_shards == 70 and m.num_images == 105 and m.batch_size == 64 and m.num_skipped == 3
    assert list(iter_shards(m)) == _entries(70)
    assert read_shards(m, [65, 3, 40]) == [_entries(70)[i] for i in (65, 3, 40)]
    again = write_manifest(list(reversed(_entries(70))), f"{tmp_path}/b/", "s3://b/in/", 64, 3, shards_per_part=32,
                           created_at=datetime(2020, 1, 1, tzinfo=timezone.utc))
    assert again.manifest_id == m.manifest_id  # content, not time or place
    other = write_manifest(_entries(69), f"{tmp_path}/c/", "s3://b/in/", 64, 3, shards_per_part=32)
    assert other.manifest_id != m.manifest_id
    with pytest.raises(ManifestError, match="no shard 70"):
        read_shards(m, [70])


def test_a_task_reads_only_its_row_groups(tmp_path):
    """A part of 1,024 shards in row groups of 32: reading 4 shards costs a footer read and one span."""
    rng = np.random.default_rng(0)
    entries = [ShardEntry(i, f"s3://b/s/shards/shard-{i:05d}.rec", 64, 10, f"{i:064x}",
                          tuple(f"in/{rng.integers(1 << 62):x}.png" for _ in range(64))) for i in range(1024)]
    m = write_manifest(entries, f"{tmp_path}/", "s3://b/in/", 64)
    part = m.parts[0]
    assert part.num_bytes > 500_000
    reads = []
    real = storage.read_range
    try:
        storage.read_range = lambda uri, a, b, e=None: reads.append(b - a) or real(uri, a, b, e)
        manifest_mod._FOOTERS.clear()
        assert [e.shard_id for e in read_shards(m, [100, 101, 102, 103])] == [100, 101, 102, 103]
        assert len(reads) == 2 and reads[1] < part.num_bytes / 16  # tail (footer) + one row group's chunks
        reads.clear()
        read_shards(m, [500])
        assert len(reads) == 1  # the footer is cached per process
    finally:
        storage.read_range = real


def test_originals_are_read_when_asked_for_and_only_then(tmp_path):
    """prepare --max-side's record of the images it stored downscaled: kept by read_shards(originals=True) as
    pyarrow reads the part; a task's read (the default) leaves the column unread."""
    from common.manifest import Original

    big = Original(4032, 3024, 3_385_725, "ab" * 32)
    entries = _entries(4)
    entries[1] = dataclasses.replace(entries[1], originals=(big,))
    entries[2] = dataclasses.replace(entries[2], originals=(None, big))
    m = write_manifest(entries, f"{tmp_path}/", "s3://b/in/", 64)
    got = read_shards(m, [2, 1, 0], originals=True)
    column = pq.read_table(m.parts[0].uri).column("originals").to_pylist()  # pyarrow's own reading of the part
    assert [e.originals for e in got] == [(None, big), (big,), None]
    assert [None if c is None else tuple(None if o is None else Original(**o) for o in c) for c in column] == [
        e.originals for e in entries]
    assert [e.originals for e in read_shards(m, [2, 1])] == [None, None]


def test_manifest_rejects_gaps(tmp_path):
    with pytest.raises(ManifestError, match="without gaps"):
        write_manifest(_entries()[1:], f"{tmp_path}/", "s3://b/in/", 64)


def test_example_manifest_reads_as_documented():
    m = manifest_from_bytes(open(os.path.join(EXAMPLES, "manifest.parquet"), "rb").read(),
                            os.path.join(EXAMPLES, "manifest.parquet"))
    entries = list(iter_shards(m))
    assert m.version == "3" and m.max_side == 256 and [e.num_records for e in entries] == [64, 64, 2]
    assert entries[1].keys[0] == "cifar10/test/00064.png"
    t = pq.read_table(os.path.join(EXAMPLES, "manifest.parquet"))
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta["shardinfer.format_version"] == FORMAT_VERSION and meta["shardinfer.num_images"] == "130"
    assert t.to_pylist()[0]["uri"] == "s3://example-bucket/shards/cifar10-test/manifest/part-00000.parquet"
    path = os.path.join(EXAMPLES, "manifest", "*.parquet")  # the shard rows: every part file
    rows = duckdb.sql(f"SELECT shard_id, unnest(keys) AS key, generate_subscripts(keys, 1) - 1 AS record "
                      f"FROM '{path}' ORDER BY shard_id, record").fetchall()
    assert len(rows) == 130 and rows[64] == (1, "cifar10/test/00064.png", 0)
    # originals: one per key of a shard with a downscaled image (null where the shard holds the object's bytes)
    big = duckdb.sql(f"SELECT k.key, o.original.width, o.original.height FROM (SELECT shard_id, unnest(keys) AS key, "
                     f"generate_subscripts(keys, 1) AS i FROM '{path}') k JOIN (SELECT shard_id, unnest(originals) AS "
                     f"original, generate_subscripts(originals, 1) AS i FROM '{path}') o USING (shard_id, i) "
                     "WHERE o.original IS NOT NULL ORDER BY k.key").fetchall()
    assert len(big) == 22 and big[0] == ("cifar10/test/00000.png", 4032, 3024)
    index = os.path.join(EXAMPLES, "manifest.parquet")
    kv = dict(duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{index}')").fetchall())
    assert kv["shardinfer.manifest_id"] == m.manifest_id
    skipped = pq.read_table(os.path.join(EXAMPLES, "skipped.parquet"))
    assert skipped.schema.names == ["key", "reason"] and skipped.num_rows == 2


def test_version_1_and_2_manifests_still_read():
    """Files as older shardinfer versions wrote them (kept, not regenerated)."""
    path = os.path.join(EXAMPLES, "v1", "manifest.parquet")
    v1 = manifest_from_bytes(open(path, "rb").read(), path)
    v2_path = os.path.join(EXAMPLES, "v2", "manifest.parquet")
    v2 = manifest_from_bytes(open(v2_path, "rb").read(), v2_path)
    v3_path = os.path.join(EXAMPLES, "manifest.parquet")
    v3 = manifest_from_bytes(open(v3_path, "rb").read(), v3_path)
    assert v1.version == "1" and len(v1.parts) == 1 and v1.parts[0].uri == path
    assert v2.version == "2" and v2.max_side is None and v2.parts[0].uri == os.path.join(EXAMPLES, "v2", "manifest",
                                                                                         "part-00000.parquet")
    assert (v1.manifest_id, v1.num_shards, v1.num_images) == (v2.manifest_id, 3, 130)
    assert list(iter_shards(v1)) == list(iter_shards(v2))
    assert [(e.shard_id, e.keys) for e in iter_shards(v2)] == [(e.shard_id, e.keys) for e in iter_shards(v3)]
    assert read_shards(v1, [2])[0].keys == read_shards(v2, [2])[0].keys == ("cifar10/test/00128.png",
                                                                            "cifar10/test/00129.png")


def test_unknown_version_is_refused_by_name():
    with open(os.path.join(EXAMPLES, "manifest-unknown-version.parquet"), "rb") as f:
        data = f.read()
    with pytest.raises(ManifestError, match=r"s3://x/manifest.parquet: manifest format version '999' is not supported"):
        manifest_from_bytes(data, "s3://x/manifest.parquet")


def test_not_parquet_is_refused_by_name():
    with pytest.raises(ManifestError, match="s3://x/m.parquet: not a readable Parquet manifest"):
        manifest_from_bytes(b"hello", "s3://x/m.parquet")


def test_run_ids_and_part_keys():
    assert part_key("s3://b/predictions/", "r1", 42) == "s3://b/predictions/run_id=r1/part-00042.parquet"
    rid = default_run_id("m0123456789abcdef", "resnet-18", "f" * 64)
    assert rid == "m0123456789abcdef-resnet-18-ffffffff" and ":" not in rid and "/" not in rid
    for bad in ("a/b", "a:b", "", "-x", "x" * 200, "a b"):
        with pytest.raises(ValueError, match="is not allowed"):
            check_run_id(bad)


def test_predictions_parquet_round_trip():
    results = [ImageResult("a.png", 0, "ok", [3, 1], [0.7, 0.2]), ImageResult("b.png", 1, "error: bad")]
    labels = [f"l{i}" for i in range(5)]
    t = predictions_table(results, labels, 7, "m@sha256:x", "mid", datetime(2026, 1, 1, tzinfo=timezone.utc))
    rows = pq.read_table(io.BytesIO(table_to_parquet(t, "k"))).to_pylist()
    assert rows[0]["top_k"] == [{"class_id": 3, "label": "l3", "prob": 0.7}, {"class_id": 1, "label": "l1", "prob": 0.2}]
    assert (rows[0]["top1_class_id"], rows[0]["top1_label"], rows[0]["shard_id"]) == (3, "l3", 7)
    assert rows[1]["top_k"] is None and rows[1]["status"] == "error: bad"


def test_task_closure_is_picklable():
    """What travels to executors is strings and numbers: no client, no model."""
    settings = InferSettings(ModelSpec("s3://b/m-symbol.json", "s3://b/m.params", "s3://b/s.txt"), "s3://b/p/", "r",
                             "m1")
    assert pickle.loads(pickle.dumps(partial(run_group, settings=settings))).keywords["settings"] == settings
    plan = make_plan(manifest_from_bytes(open(os.path.join(EXAMPLES, "manifest.parquet"), "rb").read(), "m"),
                     np.array([[0, 3]]), None, 2)
    assert len(pickle.dumps(plan)) < 2000  # the broadcast plan: the index and a few ranges, no keys


def test_status_files_latest_per_shard_whole_or_ranged(tmp_path):
    """Two invocations: the newer file's row wins per shard; reading whole or by ranges gives the same."""
    out = f"{tmp_path}/pred/"

    def rows(ids, status, t):
        return [ShardStatus(shard_id=i, uri=f"s3://b/s/{i}.rec", status=status,
                            outcome="written" if status == "ok" else "failed",
                            error=None if status == "ok" else f"boom {i}", rows=64, t_start=t, t_end=t + 1,
                            t_task_start=t, t_task_end=t + 2, host="h", pid=1, attempt=0, task=i // 2,
                            invocation=f"inv{int(t)}") for i in ids]

    for t, ok, bad in ((1000.0, range(0, 6), range(6, 10)), (2000.0, range(6, 8), range(8, 10))):
        w = status.Writer(out, "r", t, f"inv{int(t)}")
        w.add([status.pack(rows(ok, "ok", t)), status.pack(rows(bad, "failed", t))])
        assert w.close().endswith(".parquet") and w.failed_count == len(bad)
    whole = status.read_latest(out, "r")
    ranged = status.read_latest(out, "r", whole_read=0)
    assert whole.equals(ranged)
    assert whole.column("shard_id").to_pylist() == list(range(10))
    assert status.failed_ids(out, "r").tolist() == [8, 9]
    recs = status.records(whole)
    assert recs[7]["invocation"] == "inv2000" and recs[7]["t_end"] == 2001.0 and recs[9]["error"] == "boom 9"


def test_manifest_id_does_not_depend_on_the_split_into_parts(tmp_path):
    a = write_manifest(_entries(70), f"{tmp_path}/a/", "s3://b/in/", 64, shards_per_part=32)
    b = write_manifest(_entries(70), f"{tmp_path}/b/", "s3://b/in/", 64, shards_per_part=5)
    assert len(a.parts) == 3 and len(b.parts) == 14 and a.manifest_id == b.manifest_id


def test_compaction_reads_part_files_from_before_the_embedding_column():
    from infer.compact import _current_schema

    results = [ImageResult("a.png", 0, "ok", [3, 1], [0.7, 0.2])]
    t = predictions_table(results, [f"l{i}" for i in range(5)], 7, "m", "mid", datetime(2026, 1, 1, tzinfo=timezone.utc))
    old = t.drop_columns(["embedding"])
    upgraded = _current_schema(old)
    assert upgraded.schema.equals(t.schema) and upgraded.column("embedding").null_count == 1
