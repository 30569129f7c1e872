"""infer/task.py without Spark: the stages (check, fetch, decode, predict, write) of a group of shards and its
retry policy, run by run_entries on the local S3 server, every part file read back with pyarrow."""

from __future__ import annotations

import dataclasses
import io

import pyarrow.parquet as pq
import pytest

from common import storage
from common.images import Preprocessing
from common.manifest import iter_shards
from common.model_files import ModelSpec
from common.output import META_INPUT_DIGEST, part_key
from common.storage import Store
from infer.task import InferSettings, run_entries, shard_digest
from tests.helpers import hand_packed

SIZE = (32, 32)  # the test ResNet-18 pools globally: a small input keeps its forward passes short


@pytest.fixture(scope="module")
def packed(s3, model_uris):
    s3.create_bucket("unit-task")
    shards = hand_packed("unit-task", seed=61)
    from common.manifest import read_manifest

    return list(iter_shards(read_manifest(shards["manifest"]))), shards


def _settings(model_uris, s3, run_id: str, **kw) -> InferSettings:
    spec = ModelSpec(model_uris["sym"], model_uris["params"], model_uris["labels"], image_size=SIZE)
    prep = Preprocessing(SIZE, "stretch", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "exact", "rgb")
    return InferSettings(spec, "s3://unit-task/predictions/", run_id, "m1", top_k=3, prep=prep,
                         store=kw.pop("store", Store(s3.endpoint_url)), invocation=run_id + "-1", **kw)


def test_a_group_writes_one_part_file_per_shard_and_a_rerun_writes_none(s3, packed, model_uris):
    entries, shards = packed
    settings = _settings(model_uris, s3, "unit-ok")
    statuses = run_entries(entries, settings)
    assert [(s.shard_id, s.status, s.rows) for s in statuses] == [(0, "ok", 64), (1, "ok", 64), (2, "ok", 21)]
    assert [s.rows_error for s in statuses] == [0, 0, 1]
    for entry in entries:
        key = part_key(settings.output_prefix, settings.run_id, entry.shard_id)
        table = pq.read_table(io.BytesIO(storage.read_bytes(key)))
        assert table.column("key").to_pylist() == list(entry.keys)
        rows = table.to_pylist()
        bad = [r for r in rows if r["status"] != "ok"]
        assert [r["key"] for r in bad] == ([shards["bad_key"]] if entry.shard_id == 2 else [])
        assert all(len(r["top_k"]) == 3 and r["top1_class_id"] == r["top_k"][0]["class_id"] for r in rows
                   if r["status"] == "ok")
        assert storage.read_metadata(key)[META_INPUT_DIGEST] == shard_digest(entry, settings)
    keys = [storage.parse_s3(part_key(settings.output_prefix, settings.run_id, e.shard_id)).key for e in entries]
    before = [storage.s3_client().head_object(Bucket="unit-task", Key=k)["LastModified"] for k in keys]
    again = run_entries(entries, dataclasses.replace(settings, invocation="unit-ok-2"))  # a later invocation
    assert [(s.status, s.outcome) for s in again] == [("ok", "already present")] * 3
    assert [storage.s3_client().head_object(Bucket="unit-task", Key=k)["LastModified"] for k in keys] == before


def test_a_damaged_shard_fails_alone_at_once(s3, packed, model_uris):
    entries, _ = packed
    broken = list(entries)
    broken[1] = dataclasses.replace(entries[1], sha256="0" * 64)  # the object no longer matches the manifest
    statuses = run_entries(broken, _settings(model_uris, s3, "unit-damaged", attempts=4), attempt=0)
    assert [s.status for s in statuses] == ["ok", "failed", "ok"]
    assert "sha256" in statuses[1].error


def test_a_failure_another_try_may_fix_fails_the_task_until_the_last_try(s3, packed, model_uris):
    """An endpoint that does not answer (the Store's one attempt): the first try raises so that Spark retries the
    group; the last try records every shard as failed, naming the endpoint."""
    entries, _ = packed
    down = _settings(model_uris, s3, "unit-down", attempts=2, store=Store("http://127.0.0.1:9", max_attempts=1))
    with pytest.raises(storage.StorageError):
        run_entries(entries[:2], down, attempt=0)
    statuses = run_entries(entries[:2], down, attempt=1)
    assert [s.status for s in statuses] == ["failed", "failed"]
    assert all("127.0.0.1:9" in s.error for s in statuses)
