"""infer when a shard or an image is bad: the failure stays where it belongs and is reported."""

from __future__ import annotations

import hashlib
import io

import pyarrow.parquet as pq
import pytest

from common import storage
from common.manifest import ShardEntry, write_manifest
from common.shard import pack_shard
from testkit.testdata import cifar_like_png
from tests.helpers import prepared, statuses


@pytest.fixture(scope="module")
def small(s3, spark):
    """10 images in shards of 4 (4, 4, 2) under a fresh bucket."""
    return {"bucket": "small", "manifest": prepared(s3, "small", 10, seed=9)}


def _infer(manifest: str, model_uris: dict, output: str, *extra: str) -> int:
    from infer.main import main

    return main(["--manifest", manifest, "--sym-url", model_uris["sym"], "--param-url", model_uris["params"],
                 "--label-url", model_uris["labels"], "--output", output, "--run-id", "r1", *extra])


def test_damaged_shard_fails_alone_and_exit_code_names_it(small, model_uris, capsys):
    shard1 = f"s3://{small['bucket']}/shards/shards/shard-00001.rec"
    original = storage.read_bytes(shard1)
    storage.write_bytes(shard1, b"garbage" * 10)
    try:
        rc = _infer(small["manifest"], model_uris, f"s3://{small['bucket']}/pred/")
    finally:
        storage.write_bytes(shard1, original)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "FAILED shards: 1 " in err and "shard-00001.rec" in err
    status = statuses(f"s3://{small['bucket']}/pred/", "r1")[1]
    assert status["status"] == "failed" and "shard 1" in status["error"] and "shard-00001.rec" in status["error"]
    parts = {o.key for o in storage.list_objects(f"s3://{small['bucket']}/pred/run_id=r1/")}
    assert parts == {"pred/run_id=r1/part-00000.parquet", "pred/run_id=r1/part-00002.parquet"}


@pytest.mark.once
def test_corrupt_image_fails_only_its_row(s3, spark, model_uris):
    bucket = "corrupt"
    s3.create_bucket(bucket)
    pngs = [cifar_like_png(i, seed=11) for i in range(5)]
    pngs[2] = pngs[2][: len(pngs[2]) // 2]  # truncated inside the shard
    data = pack_shard(pngs)
    uri = f"s3://{bucket}/shards/shard-00000.rec"
    storage.write_bytes(uri, data)
    keys = tuple(f"in/{i}.png" for i in range(5))
    write_manifest([ShardEntry(0, uri, 5, len(data), hashlib.sha256(data).hexdigest(), keys)], f"s3://{bucket}/",
                   f"s3://{bucket}/in/", 64)
    assert _infer(f"s3://{bucket}/manifest.parquet", model_uris, f"s3://{bucket}/pred/") == 0
    rows = pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{bucket}/pred/run_id=r1/part-00000.parquet"))).to_pylist()
    assert [r["key"] for r in rows] == list(keys)
    bad = rows[2]
    assert bad["status"].startswith("error: 'in/2.png': undecodable PNG")
    assert bad["top_k"] is None and bad["top1_class_id"] is None and bad["top1_prob"] is None
    for r in rows[:2] + rows[3:]:
        assert r["status"] == "ok" and len(r["top_k"]) == 5


@pytest.mark.once
def test_bad_arguments_fail_before_spark(small, model_uris, capsys):
    out = f"s3://{small['bucket']}/pred/"
    assert _infer(small["manifest"], model_uris, out, "--shards", "0,7") == 2
    assert "'7' is outside the manifest" in capsys.readouterr().err
    assert _infer(f"s3://{small['bucket']}/nope/manifest.parquet", model_uris, out) == 2
    assert "nope/manifest.parquet: no such object" in capsys.readouterr().err
    bad_model = {**model_uris, "params": model_uris["params"].replace("0000", "9999")}
    assert _infer(small["manifest"], bad_model, out) == 2
    assert "cannot read model params" in capsys.readouterr().err
    from infer.main import main

    assert main(["--manifest", small["manifest"], "--sym-url", "a", "--param-url", "b", "--label-url", "c",
                 "--output", out, "--run-id", "bad/id"]) == 2
    assert "run id 'bad/id' is not allowed" in capsys.readouterr().err
