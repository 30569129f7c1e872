"""Manifest and output formats as pure functions, the documented examples, and what travels to executors."""

from __future__ import annotations

import io
import os
import pickle
from datetime import datetime, timezone
from functools import partial

import duckdb
import pyarrow.parquet as pq
import pytest

from common.manifest import FORMAT_VERSION, ManifestError, ShardEntry, manifest_from_bytes, manifest_to_bytes
from common.model import ModelSpec
from common.output import (ImageResult, check_run_id, default_run_id, part_key, predictions_table,
                           table_to_parquet)
from infer.task import InferSettings, run_group

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "manifests", "examples")


def _entries():
    return [ShardEntry(0, "s3://b/s/shards/shard-00000.rec", 2, 10, "ab" * 32, ("a.png", "b.png")),
            ShardEntry(1, "s3://b/s/shards/shard-00001.rec", 1, 5, "cd" * 32, ("c.png",))]


def test_manifest_roundtrip_and_stable_id():
    data, mid = manifest_to_bytes(_entries(), "s3://b/in/", 64, 3)
    m = manifest_from_bytes(data, "mem")
    assert m.manifest_id == mid and m.entries == tuple(_entries()) and m.batch_size == 64 and m.num_images == 3
    data2, mid2 = manifest_to_bytes(list(reversed(_entries())), "s3://b/in/", 64, 3,
                                    created_at=datetime(2020, 1, 1, tzinfo=timezone.utc))
    assert mid2 == mid


def test_manifest_rejects_gaps():
    with pytest.raises(ManifestError, match="without gaps"):
        manifest_to_bytes(_entries()[1:], "s3://b/in/", 64, 0)


def test_example_manifest_reads_as_documented():
    with open(os.path.join(EXAMPLES, "manifest.parquet"), "rb") as f:
        m = manifest_from_bytes(f.read(), "example")
    assert [e.num_records for e in m.entries] == [64, 64, 2]
    assert m.entries[1].keys[0] == "cifar10/test/00064.png"
    t = pq.read_table(os.path.join(EXAMPLES, "manifest.parquet"))
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta["shardinfer.format_version"] == FORMAT_VERSION and meta["shardinfer.num_images"] == "130"
    path = os.path.join(EXAMPLES, "manifest.parquet")
    rows = duckdb.sql(f"SELECT shard_id, unnest(keys) AS key, generate_subscripts(keys, 1) - 1 AS record "
                      f"FROM '{path}' ORDER BY shard_id, record").fetchall()
    assert len(rows) == 130 and rows[64] == (1, "cifar10/test/00064.png", 0)
    kv = dict(duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{path}')").fetchall())
    assert kv["shardinfer.manifest_id"] == m.manifest_id
    skipped = pq.read_table(os.path.join(EXAMPLES, "skipped.parquet"))
    assert skipped.schema.names == ["key", "reason"] and skipped.num_rows == 2


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
