"""The shipped code in a cluster node's own environment: `.venv-node`, built by deploy/emr/bootstrap.sh
itself (setup.cfg's install_requires, no test extra) plus the cluster's pyspark 3.5.9.

1. every shipped module imports in a fresh node interpreter, from shardinfer.zip alone;
2. every executor-side entry point runs on a tiny input, each in a fresh node interpreter;
3. the documented path on the local YARN, driver and executors in the node environment:
   prepare, infer with --glue-database/--glue-table and --sse aws:kms over a damaged shard
   (exit 1, no partition), --only-failed once the shard is back (exit 0, partition registered),
   compact, and the report command.

`make test-node` runs these (marker ``node``: not part of the two Spark-line runs of the suite).
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import boto3
import pyarrow.parquet as pq
import pytest

from common import storage
from scripts.dist import build as build_dist
from testkit import zoo_builder
from testkit.localdev import upload_cifar_like
from testkit.nodeenv import build, run_entry_point, shipped_modules, write_inputs
from testkit.nodeenv.entry_points import STEPS

pytestmark = [pytest.mark.node, pytest.mark.spark]
BUCKET = "node-env"
IMAGES = 256  # 4 shards of 64


@pytest.fixture(scope="module")
def node():
    return build()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    build_dist(out)
    return out


def test_the_node_environment_holds_install_requires_and_nothing_of_the_test_extras(node):
    have = node.packages()
    assert {"mxnet", "numpy", "pyarrow", "boto3", "pillow", "matplotlib", "pyspark"} <= have
    assert not have & {"pandas", "moto", "pytest", "duckdb", "sqlglot", "scikit-learn", "scipy", "psutil"}, have


def test_every_shipped_module_imports_in_a_fresh_node_interpreter(node, dist, tmp_path):
    modules = shipped_modules()
    assert {"common.manifest", "prepare.tasks", "infer.task", "infer.compact", "infer.report"} <= set(modules)
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(modules, pool.map(lambda m: run_entry_point(node, str(dist / "shardinfer.zip"), str(tmp_path),
                                                                     f"import:{m}"), modules)))
    failed = {m: r.stderr.strip().splitlines()[-1:] for m, r in runs.items() if r.returncode != 0}
    assert failed == {}


def test_executor_entry_points_run_alone_in_fresh_node_interpreters(node, dist, tmp_path):
    """Each Spark task's function in a process of its own: no earlier import can hide a missing one
    (prepare_write_part is where `pa.compute` without its import broke prepare on the node)."""
    write_inputs(str(tmp_path), images=10)
    for step in STEPS:
        r = run_entry_point(node, str(dist / "shardinfer.zip"), str(tmp_path), step)
        assert r.returncode == 0, f"{step}:\n{r.stderr[-3000:]}"
        assert r.stdout.strip().endswith(f"{step}: ok")


@pytest.mark.yarn
@pytest.mark.skipif(shutil.which("mvn") is None, reason="Maven (mvn) is needed to fetch Hadoop's test cluster")
def test_the_documented_path_on_yarn_in_the_node_environment(node, dist, s3, tmp_path):
    from testkit.yarn import YarnCluster
    from testkit.yarn.check import emr_classification, submit

    s3.create_bucket(BUCKET)
    upload_cifar_like(f"s3://{BUCKET}/images/", IMAGES, seed=23, endpoint_url=s3.endpoint_url)
    model = zoo_builder.write_model(f"s3://{BUCKET}/models/resnet-18/", endpoint_url=s3.endpoint_url)
    key = boto3.client("kms").create_key(Description="shardinfer node test")["KeyMetadata"]["KeyId"]
    sse = ["--sse", "aws:kms", "--sse-kms-key-id", key]
    out, shards = f"s3://{BUCKET}/predictions/", f"s3://{BUCKET}/shards/"
    infer = ["--manifest", shards + "manifest.parquet", "--sym-url", model["sym"], "--param-url", model["params"],
             "--label-url", model["labels"], "--output", out, "--run-id", "node", "--glue-database", "node_db",
             "--glue-table", "predictions", *sse]
    glue = boto3.client("glue")
    props = emr_classification("spark-defaults")
    work = str(tmp_path)
    with YarnCluster(work, nodes=2, memory_mb=16384, vcores=5,
                     extra_conf=emr_classification("capacity-scheduler")) as cluster:
        def step(name: str, script: str, args: list[str]) -> dict:
            r = submit(cluster, props, work, name, script, args, s3.env, dist, node=node)
            with open(r["log"]) as f:
                r["text"] = f.read()
            return r

        prepared = step("prepare", "prepare/main.py", ["--input", f"s3://{BUCKET}/images/", "--output", shards, *sse])
        assert prepared["rc"] == 0, prepared["text"][-3000:]
        damaged = f"{shards}shards/shard-00002.rec"
        good = storage.read_bytes(damaged)
        storage.write_bytes(damaged, b"not a RecordIO shard")
        first = step("infer", "infer/main.py", infer)
        assert first["rc"] == 1, first["text"][-3000:]
        assert "FAILED shards: 2 " in first["text"] and "not registered: the run is not complete" in first["text"]
        assert glue.get_partitions(DatabaseName="node_db", TableName="predictions")["Partitions"] == []
        storage.write_bytes(damaged, good)
        rerun = step("infer-only-failed", "infer/main.py", [*infer, "--only-failed"])
        assert rerun["rc"] == 0, rerun["text"][-3000:]
        assert "running 1 shards" in rerun["text"] and "partition run_id=node registered" in rerun["text"]
        compacted = step("compact", "infer/compact.py", ["--input", out, "--run-id", "node", "--output",
                                                          f"s3://{BUCKET}/compacted/", *sse])
        assert compacted["rc"] == 0, compacted["text"][-3000:]

    rows = []
    for o in storage.list_objects(f"{out}run_id=node/"):
        rows += pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/{o.key}"))).to_pylist()
    images = {o.key for o in storage.list_objects(f"s3://{BUCKET}/images/")}
    assert Counter(r["key"] for r in rows) == Counter(images) and {r["status"] for r in rows} == {"ok"}
    [partition] = glue.get_partitions(DatabaseName="node_db", TableName="predictions")["Partitions"]
    assert partition["Values"] == ["node"]
    compacted_rows = sum(pq.read_metadata(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/{o.key}"))).num_rows
                         for o in storage.list_objects(f"s3://{BUCKET}/compacted/"))
    assert compacted_rows == IMAGES
    client = storage.s3_client()
    written = [o.key for prefix in ("shards/", "predictions/", "compacted/")
               for o in storage.list_objects(f"s3://{BUCKET}/{prefix}")]
    assert len(written) > 3 * 4
    for k in written:
        if k == "shards/shards/shard-00002.rec":
            continue  # put back by the test itself
        h = client.head_object(Bucket=BUCKET, Key=k)
        assert (h.get("ServerSideEncryption"), h.get("SSEKMSKeyId")) == ("aws:kms", key), k

    # the report command, as a user runs it on the node: the node's Python with the shipped zip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_HOME")}
    env["PYTHONPATH"] = str(dist / "shardinfer.zip")
    to = tmp_path / "report"
    r = subprocess.run([node.python, "-m", "infer.report", "--output", out, "--run-id", "node", "--to", str(to),
                        *sse], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (to / "index.html").is_file() and any(p.suffix == ".png" for p in to.iterdir())
