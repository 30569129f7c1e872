"""The AWS data stack: the Glue Data Catalog table and partitions, server-side encryption on every object
written, a bucket policy that refuses unencrypted writes, and a demo whose predictions outlive its server."""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import sys

import boto3
import pyarrow.parquet as pq
import pytest

from common import glue, storage
from testkit.localdev import ROOT, spark_env, upload_cifar_like
from tests.helpers import infer_args, prepared, read_manifest

# the Glue catalog and S3 encryption, called through boto3: the same on either Spark line
pytestmark = [pytest.mark.once, pytest.mark.aws]

BUCKET = "stack"


@pytest.fixture(scope="module")
def stack(s3, spark):
    return {"manifest": prepared(s3, BUCKET, 10, seed=21)}


def _partitions(db: str, table: str) -> list[dict]:
    return boto3.client("glue").get_partitions(DatabaseName=db, TableName=table)["Partitions"]


def test_glue_table_and_partition_are_created_once(stack, model_uris, capsys):
    from infer.main import main

    out = f"s3://{BUCKET}/pred/"
    args = infer_args(stack["manifest"], model_uris, out, "--run-id", "g1", "--glue-database", "analytics",
                      "--glue-table", "predictions")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Glue table analytics.predictions: database and table created" in text
    assert "partition run_id=g1 registered" in text
    table = boto3.client("glue").get_table(DatabaseName="analytics", Name="predictions")["Table"]
    sd = table["StorageDescriptor"]
    assert sd["Columns"] == glue.columns() and sd["Location"] == out
    assert sd["SerdeInfo"]["SerializationLibrary"] == glue.PARQUET_SERDE
    assert table["PartitionKeys"] == [{"Name": "run_id", "Type": "string"}]
    assert [(p["Values"], p["StorageDescriptor"]["Location"]) for p in _partitions("analytics", "predictions")] == [
        (["g1"], f"{out}run_id=g1/")]
    # the same run again: nothing changes, one partition
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Glue table analytics.predictions: exists" in text and "partition run_id=g1 already registered" in text
    assert len(_partitions("analytics", "predictions")) == 1
    # compaction points the partition at the compacted files
    from infer.compact import main as compact

    assert compact(["--input", out, "--run-id", "g1", "--output", f"s3://{BUCKET}/compacted/",
                    "--glue-database", "analytics", "--glue-table", "predictions"]) == 0
    assert [p["StorageDescriptor"]["Location"] for p in _partitions("analytics", "predictions")] == [
        f"s3://{BUCKET}/compacted/run_id=g1/"]


def test_delete_a_run_dry_run_first_then_files_record_and_partition_go(stack, model_uris, capsys):
    from infer.delete import main as delete
    from infer.main import main

    out = f"s3://{BUCKET}/del/"

    def keys(prefix):
        return sorted(o.key for o in storage.list_objects(f"{out}{prefix}"))

    args = infer_args(stack["manifest"], model_uris, out, "--glue-database", "analytics", "--glue-table", "deltable")
    for run_id in ("keep", "gone"):
        assert main(args + ["--run-id", run_id]) == 0
    before = {p: keys(p) for p in ("run_id=keep/", "_runs/keep/", "run_id=gone/", "_runs/gone/")}
    assert all(before.values())
    base = ["--output", out, "--run-id", "gone", "--glue-database", "analytics", "--glue-table", "deltable"]
    capsys.readouterr()
    assert delete(base) == 0  # a dry run: lists, deletes nothing
    text = capsys.readouterr().out
    assert f"would delete {len(before['run_id=gone/'])} objects under {out}run_id=gone/" in text
    assert f"would delete {len(before['_runs/gone/'])} objects under {out}_runs/gone/" in text
    assert f"would delete the partition run_id=gone of analytics.deltable (at {out}run_id=gone/)" in text
    assert "dry run: nothing deleted" in text
    assert {p: keys(p) for p in before} == before
    assert delete(base + ["--yes"]) == 0
    assert keys("run_id=gone/") == keys("_runs/gone/") == []
    assert keys("run_id=keep/") == before["run_id=keep/"] and keys("_runs/keep/") == before["_runs/keep/"]
    assert [p["Values"] for p in _partitions("analytics", "deltable")] == [["keep"]]
    assert delete(base + ["--yes"]) == 0 and "nothing to delete" in capsys.readouterr().out
    # redo: the same infer command runs the work again, and registers the partition again
    assert main(args + ["--run-id", "gone"]) == 0
    assert keys("run_id=gone/") == before["run_id=gone/"]
    assert sorted(p["Values"][0] for p in _partitions("analytics", "deltable")) == ["gone", "keep"]
    assert delete(["--output", out]) == 2 and "--run-id are both required" in capsys.readouterr().err


def test_a_partial_run_registers_nothing(stack, model_uris, capsys):
    from infer.main import main

    shard = read_manifest(stack["manifest"]).entries[1].uri
    saved = storage.read_bytes(shard)
    storage.write_bytes(shard, b"damaged")
    try:
        assert main(infer_args(stack["manifest"], model_uris, f"s3://{BUCKET}/pred/", "--run-id", "g2",
                               "--glue-database", "analytics", "--glue-table", "predictions")) == 1
    finally:
        storage.write_bytes(shard, saved)
    assert "partition run_id=g2 not registered: the run is not complete" in capsys.readouterr().out
    assert ["g2"] not in [p["Values"] for p in _partitions("analytics", "predictions")]


def test_a_table_of_another_shape_is_refused_before_any_work(stack, model_uris, capsys):
    from infer.main import main

    client = boto3.client("glue")
    client.create_database(DatabaseInput={"Name": "legacy"})
    client.create_table(DatabaseName="legacy", TableInput={
        "Name": "predictions", "PartitionKeys": [{"Name": "run_id", "Type": "string"}],
        "StorageDescriptor": {"Columns": [{"Name": "key", "Type": "string"}, {"Name": "score", "Type": "double"}],
                              "Location": f"s3://{BUCKET}/legacy/"}})
    assert main(infer_args(stack["manifest"], model_uris, f"s3://{BUCKET}/legacy/", "--run-id", "l1",
                           "--glue-database", "legacy", "--glue-table", "predictions")) == 2
    err = capsys.readouterr().err
    assert "Glue table legacy.predictions exists with another shape: columns differ" in err
    assert "top_k array<struct<class_id:int,label:string,prob:double>>" in err and "score double" in err
    assert list(storage.list_objects(f"s3://{BUCKET}/legacy/")) == []  # nothing written
    assert client.get_table(DatabaseName="legacy", Name="predictions")["Table"]["StorageDescriptor"]["Columns"][1][
        "Name"] == "score"  # never overwritten


def _heads(prefix: str) -> dict[str, dict]:
    client = storage.s3_client()
    p = storage.parse_s3(prefix)
    return {o.key: client.head_object(Bucket=p.bucket, Key=o.key) for o in storage.list_objects(prefix)}


def test_every_object_written_carries_the_kms_encryption(s3, spark, model_uris):
    from infer.compact import main as compact
    from infer.main import main as infer
    from prepare.main import main as prepare

    key = boto3.client("kms").create_key(Description="shardinfer test")["KeyMetadata"]["KeyId"]
    sse = ["--sse", "aws:kms", "--sse-kms-key-id", key]
    s3.create_bucket("sealed")
    upload_cifar_like("s3://sealed/in/", 10, seed=22, endpoint_url=s3.endpoint_url)
    storage.write_bytes("s3://sealed/in/readme.txt", b"not an image")
    assert prepare(["--input", "s3://sealed/in/", "--output", "s3://sealed/shards/", "--batch", "4", *sse]) == 0
    args = infer_args("s3://sealed/shards/manifest.parquet", model_uris, "s3://sealed/pred/", "--run-id", "k",
                      "--precision", "bf16", "--min-agreement", "0", "--calibration-images", "4", *sse)
    assert infer(args) == 0
    assert compact(["--input", "s3://sealed/pred/", "--run-id", "k", "--output", "s3://sealed/compacted/", *sse]) == 0
    heads = {**_heads("s3://sealed/shards/"), **_heads("s3://sealed/pred/"), **_heads("s3://sealed/compacted/")}
    kinds = {"shards/shards/", "shards/manifest/", "shards/manifest.parquet", "shards/skipped.parquet",
             "shards/_athena/", "pred/run_id=k/", "pred/_runs/k/run.json", "pred/_runs/k/status/",
             "pred/_runs/k/summary.json", "pred/_runs/k/report/", "pred/_runs/k/model/", "pred/_runs/k/athena.sql",
             "compacted/run_id=k/"}
    for kind in kinds:  # every kind of object each step writes is there ...
        assert any(k.startswith(kind) for k in heads), kind
    for k, h in heads.items():  # ... and every object carries the encryption and the key
        assert (h.get("ServerSideEncryption"), h.get("SSEKMSKeyId")) == ("aws:kms", key), k


def test_aes256_and_bad_sse_flags(s3, spark, model_uris, capsys):
    from prepare.main import main

    s3.create_bucket("aes")
    upload_cifar_like("s3://aes/in/", 4, seed=23, endpoint_url=s3.endpoint_url)
    assert main(["--input", "s3://aes/in/", "--output", "s3://aes/shards/", "--sse", "AES256"]) == 0
    assert {h.get("ServerSideEncryption") for h in _heads("s3://aes/shards/").values()} == {"AES256"}
    assert main(["--input", "s3://aes/in/", "--output", "s3://aes/x/", "--sse-kms-key-id", "k"]) == 2
    assert "--sse-kms-key-id needs --sse aws:kms" in capsys.readouterr().err


@pytest.mark.spark
def test_a_bucket_policy_refusing_unencrypted_writes_gives_one_clear_line(s3, model_uris):
    """moto enforces a bucket policy's Deny but ignores its Condition: every PUT to this bucket is refused,
    so only the half 'no --sse, a clear error' can be shown here."""
    s3.create_bucket("strict-in")
    s3.create_bucket("strict")
    upload_cifar_like("s3://strict-in/in/", 4, seed=24, endpoint_url=s3.endpoint_url)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyUnencryptedPuts", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::strict/*", "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}}]}
    storage.s3_client().put_bucket_policy(Bucket="strict", Policy=json.dumps(policy))
    from tests.helpers import submit

    p = submit("prepare/main.py", ["--input", "s3://strict-in/in/", "--output", "s3://strict/shards/"], s3.env)
    assert p.returncode == 1, p.stderr[-3000:]
    # spark-submit passes the Python driver's own lines on stdout; Spark's logs are on stderr
    errors = [ln for ln in p.stdout.splitlines() if ln.startswith("prepare: error:")]
    assert len(errors) == 1, p.stdout[-2000:]
    assert "s3://strict/shards/shards/shard-0000" in errors[0] and "write denied (S3 " in errors[0]
    assert errors[0].endswith("pass --sse AES256 or --sse aws:kms")


@pytest.mark.spark
def test_the_demo_leaves_predictions_you_can_query(tmp_path):
    env = spark_env({"AWS_ENDPOINT_URL": ""})
    env.pop("AWS_ENDPOINT_URL")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--images", "40", "--logdir",
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    files = glob.glob(str(tmp_path / "predictions" / "run_id=*" / "part-*.parquet"))
    assert files and sum(pq.read_metadata(f).num_rows for f in files) == 40
    line = next(ln.strip() for ln in p.stdout.splitlines() if "import duckdb" in ln)
    q = subprocess.run(line.replace(".venv/bin/python", sys.executable), shell=True, capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert q.returncode == 0 and "top1_label" in q.stdout, q.stderr
    table = pq.read_table(io.BytesIO(open(files[0], "rb").read()))
    assert table.num_rows > 0 and "top1_label" in table.column_names
