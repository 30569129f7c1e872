"""The shipped code in a cluster node's own environment: `.venv-node`, built by deploy/emr/bootstrap.sh
itself (setup.cfg's install_requires, no test extra) plus the cluster's pyspark 3.5.9.

1. every shipped module imports in a fresh node interpreter, from shardinfer.zip alone;
2. every executor-side entry point runs on a tiny input, each in a fresh node interpreter;
3. the documented path on the local YARN, driver and executors in the node environment:
   prepare, infer with --glue-database/--glue-table and --sse aws:kms over a damaged shard
   (exit 1, no partition), --only-failed once the shard is back (exit 0, partition registered),
   compact, and the report command;
4. the 2-executor trap and its fix (`make yarn-check`'s runs) over that manifest;
5. chaos on that YARN: 1,024 images inferred while executor Python workers and whole executor
   JVMs are SIGKILLed and S3 answers bursts of 503 SlowDown and connection resets, on a schedule
   from a seed (testkit/chaos.py); the output must equal a fault-free run of the same manifest
   (the documented path's completed run: one prepare and one reference serve both).
   ``SHARDINFER_CHAOS_SEEDS=1,2,3`` runs more seeds (default: 1).

`make test-systems` runs these (marker ``node``: not part of the Spark lines' runs of the suite).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import boto3
import pyarrow.parquet as pq
import pytest

from common import storage
from testkit import zoo_builder
from testkit.chaos import Chaos
from testkit.faultproxy import FaultProxy
from testkit.localdev import make_dist, upload_cifar_like
from testkit.nodeenv import build, run_entry_point, shipped_modules, write_inputs
from testkit.nodeenv.entry_points import STEPS
from tests.helpers import statuses

pytestmark = [pytest.mark.node, pytest.mark.spark]
BUCKET = "node-env"
IMAGES = 1024  # 16 shards of 64: the 224-pixel forward passes keep a chaos run going through its faults
CHAOS_SPAN_S = 15.0  # every fault of the schedule within 15 s of the first Python worker (the run lasts longer)
CHAOS_SEEDS = [int(x) for x in os.environ.get("SHARDINFER_CHAOS_SEEDS", "1").split(",")]


@pytest.fixture(scope="module")
def node():
    return build()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    make_dist(out)
    return out


def test_the_node_environment_holds_install_requires_and_nothing_of_the_test_extras(node):
    have = node.packages()
    assert {"mxnet", "numpy", "pyarrow", "boto3", "pillow", "matplotlib", "pyspark"} <= have
    assert not have & {"pandas", "moto", "pytest", "duckdb", "sqlglot", "scikit-learn", "scipy", "psutil", "onnx",
                        "onnxruntime"}, have


def test_every_shipped_module_imports_in_a_fresh_node_interpreter(node, dist, tmp_path):
    modules = shipped_modules(str(dist / "shardinfer.zip"))
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


@dataclass
class Yarn:
    """The local YARN (EMR's capacity-scheduler settings) and how to submit a step to it in the node environment."""

    cluster: object
    work: str
    node: object
    dist: pathlib.Path

    def step(self, name: str, script: str, args: list[str], s3_env: dict[str, str]) -> dict:
        """One spark-submit as the EMR step runs it (configurations.json's spark-defaults); its figures and log."""
        from testkit.yarn.check import emr_classification, submit

        r = submit(self.cluster, emr_classification("spark-defaults"), self.work, name, script, args, s3_env,
                   self.dist, node=self.node)
        with open(r["log"]) as f:
            r["text"] = f.read()
        return r


@pytest.fixture(scope="module")
def yarn(node, dist, s3, tmp_path_factory):
    if shutil.which("mvn") is None:
        pytest.skip("Maven (mvn) is needed to fetch Hadoop's test cluster")
    from testkit.yarn import YarnCluster
    from testkit.yarn.check import emr_classification

    work = str(tmp_path_factory.mktemp("yarn"))
    with YarnCluster(work, nodes=2, memory_mb=16384, vcores=5,
                     extra_conf=emr_classification("capacity-scheduler")) as cluster:
        yield Yarn(cluster, work, node, dist)


def _rows(prefix: str) -> list[dict]:
    bucket = storage.parse_s3(prefix).bucket
    out = []
    for o in storage.list_objects(prefix):
        out += pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{bucket}/{o.key}"))).to_pylist()
    return out


@pytest.fixture(scope="module")
def documented(yarn, s3) -> dict:
    """The documented path on the YARN, each step's figures: prepare (1,024 images, SSE-KMS), infer with
    Glue over a damaged shard, --only-failed once it is back, compact.  The completed run (run_id node) is
    also the fault-free output the chaos runs are held to: the same manifest, model and settings."""
    s3.create_bucket(BUCKET)
    upload_cifar_like(f"s3://{BUCKET}/images/", IMAGES, seed=23, endpoint_url=s3.endpoint_url)
    model = zoo_builder.write_model(f"s3://{BUCKET}/models/resnet-18/", endpoint_url=s3.endpoint_url)
    key = boto3.client("kms").create_key(Description="shardinfer node test")["KeyMetadata"]["KeyId"]
    sse = ["--sse", "aws:kms", "--sse-kms-key-id", key]
    out, shards = f"s3://{BUCKET}/predictions/", f"s3://{BUCKET}/shards/"
    infer = ["--manifest", shards + "manifest.parquet", "--sym-url", model["sym"], "--param-url", model["params"],
             "--label-url", model["labels"], "--output", out, *sse]
    glue = ["--glue-database", "node_db", "--glue-table", "predictions"]
    steps = {"prepare": yarn.step("prepare", "prepare/main.py", ["--input", f"s3://{BUCKET}/images/", "--output",
                                                                 shards, *sse], s3.env)}
    assert steps["prepare"]["rc"] == 0, steps["prepare"]["text"][-3000:]
    damaged = f"{shards}shards/shard-00002.rec"
    good = storage.read_bytes(damaged)
    storage.write_bytes(damaged, b"not a RecordIO shard")
    steps["infer"] = yarn.step("infer", "infer/main.py", [*infer, "--run-id", "node", *glue], s3.env)
    partitions_while_failed = boto3.client("glue").get_partitions(DatabaseName="node_db",
                                                                  TableName="predictions")["Partitions"]
    storage.write_bytes(damaged, good)
    steps["rerun"] = yarn.step("infer-only-failed", "infer/main.py", [*infer, "--run-id", "node", *glue,
                                                                     "--only-failed"], s3.env)
    steps["compact"] = yarn.step("compact", "infer/compact.py", ["--input", out, "--run-id", "node", "--output",
                                                                 f"s3://{BUCKET}/compacted/", *sse], s3.env)
    return {"steps": steps, "key": key, "sse": sse, "infer": infer, "out": out, "model": model,
            "partitions_while_failed": partitions_while_failed}


@pytest.mark.yarn
def test_the_documented_path_on_yarn_in_the_node_environment(yarn, s3, documented, tmp_path):
    steps, out, sse, key = documented["steps"], documented["out"], documented["sse"], documented["key"]
    first, rerun, compacted = steps["infer"], steps["rerun"], steps["compact"]
    assert first["rc"] == 1, first["text"][-3000:]
    assert "FAILED shards: 2 " in first["text"] and "not registered: the run is not complete" in first["text"]
    assert documented["partitions_while_failed"] == []
    assert rerun["rc"] == 0, rerun["text"][-3000:]
    assert "running 1 shards" in rerun["text"] and "partition run_id=node registered" in rerun["text"]
    assert compacted["rc"] == 0, compacted["text"][-3000:]

    rows = _rows(f"{out}run_id=node/")
    images = {o.key for o in storage.list_objects(f"s3://{BUCKET}/images/")}
    assert Counter(r["key"] for r in rows) == Counter(images) and {r["status"] for r in rows} == {"ok"}
    [partition] = boto3.client("glue").get_partitions(DatabaseName="node_db", TableName="predictions")["Partitions"]
    assert partition["Values"] == ["node"]
    assert len(_rows(f"s3://{BUCKET}/compacted/")) == IMAGES
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
    env["PYTHONPATH"] = str(yarn.dist / "shardinfer.zip")
    to = tmp_path / "report"
    r = subprocess.run([yarn.node.python, "-m", "infer.report", "--output", out, "--run-id", "node", "--to", str(to),
                        *sse], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (to / "index.html").is_file() and any(p.suffix == ".png" for p in to.iterdir())


@pytest.mark.yarn
def test_the_two_executor_trap_and_its_fix_on_yarn(yarn, s3, documented):
    """The 2-executor trap (dynamic allocation off, no executor count) and the fix (configurations.json's
    spark-defaults), from Spark's event logs, over the documented path's manifest (16 shards, one task
    each); the same runs as `make yarn-check` (testkit/yarn/check.py), here in the node environment."""
    from testkit.yarn.check import emr_classification, figures_of, problems, trap_and_fix

    assert documented["steps"]["prepare"]["rc"] == 0
    # executors and task slots are what is checked, not the model: its forward passes at 64x64 (a twelfth of 224's)
    runs = trap_and_fix(yarn.cluster, yarn.work, yarn.dist, s3.env, f"s3://{BUCKET}/shards/manifest.parquet",
                        documented["model"], f"s3://{BUCKET}/yarn-check/", node=yarn.node,
                        infer_extra=("--image-size", "64"))
    figures = figures_of(yarn.cluster, runs, IMAGES, yarn.cluster.nodes, yarn.cluster.vcores,
                         emr_classification("capacity-scheduler"))
    assert problems(figures) == []
    trap, fix, bad = runs
    assert (trap["executors"], trap["cores_per_executor"]) == (2, [1])
    assert "2 executors of 1 core" in trap["layout_warning"]
    # 2 nodes x 5 vcores x 16 GiB: by memory 6 executors of 4 cores would fit (24 tasks on 10 vcores);
    # counting vcores (configurations.json's capacity-scheduler), one per node: 8 cores
    assert fix["cores_per_executor"] == [4] and fix["total_cores"] == 8
    # tasks running at once on the executors (from the event log): never more than the slots
    assert trap["max_concurrent_tasks"] <= 2 < fix["max_concurrent_tasks"] <= 8
    assert trap["images"] == fix["images"] == IMAGES
    # cluster mode: the driver's one-line error is in its YARN container's stdout (one attempt only:
    # spark.yarn.maxAppAttempts 1), spark-submit exits 1 and YARN's diagnostics carry the driver's 2
    assert bad["rc"] == 1 and bad["driver_exit_status_reported"] == 2
    [(container, line)] = bad["driver_stdout_in_containers"].items()
    assert container.endswith("_01_000001") and line.startswith("infer: error: s3://") and "no such object" in line


@pytest.fixture(scope="module")
def calm(documented) -> dict:
    """The fault-free reference: the documented path's completed run (run_id node) of the same manifest."""
    assert documented["steps"]["rerun"]["rc"] == 0, documented["steps"]["rerun"]["text"][-3000:]
    rows = {x["key"]: x for x in _rows(f"{documented['out']}run_id=node/")}
    assert len(rows) == IMAGES
    return {"infer": documented["infer"], "out": documented["out"], "rows": rows,
            "images": {o.key for o in storage.list_objects(f"s3://{BUCKET}/images/")}}


def _report_rows(html: str) -> dict[int, int]:
    """``{shard: rows}`` from the report's shard table, and the total it states."""
    shards = {int(m.group(1)): int(m.group(2)) for m in
              re.finditer(r"<tr class='shard' data-shard='(\d+)'>.*?<td>(\d+)</td></tr>", html)}
    return shards


@pytest.mark.yarn
@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_chaos_on_yarn_gives_the_fault_free_output(yarn, s3, calm, seed, tmp_path):
    run_id = f"chaos-{seed}"
    with (FaultProxy(s3.endpoint_url, seed=seed) as proxy,
          Chaos(seed, yarn.cluster.proc.pid, proxy, span_s=CHAOS_SPAN_S) as chaos):
        r = yarn.step(f"chaos-{seed}", "infer/main.py", [*calm["infer"], "--run-id", run_id],
                      {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url})
    injected = chaos.counts()
    figures = {"seed": seed, "schedule": chaos.done, "faults": injected, "rc": r["rc"], "wall_s": r["wall_s"],
               "failed_task_attempts": r["failed_task_attempts"], "executors": r["executors"],
               "executors_removed": r["executors_removed"]}
    print("chaos:", json.dumps(figures))
    assert r["rc"] == 0, r["text"][-4000:]
    # every fault of the schedule happened, mid-run
    assert injected["kill-python-worker"] == 2 and injected["kill-executor"] == 1, figures
    assert injected.get("s3 503 (in bursts)", 0) > 0, figures
    assert injected.get("s3 reset (in bursts)", 0) + injected.get("s3 reset_after (in bursts)", 0) > 0, figures
    assert sum(r["failed_task_attempts"].values()) >= 2 and r["executors_removed"] >= 1, figures

    rows = _rows(f"{calm['out']}run_id={run_id}/")
    counts = Counter(x["key"] for x in rows)
    assert set(counts) == calm["images"] and max(counts.values()) == 1  # every key exactly once
    for x in rows:
        ref = calm["rows"][x["key"]]
        assert x["status"] == ref["status"] == "ok" and x["top1_class_id"] == ref["top1_class_id"], x["key"]
        assert [c["class_id"] for c in x["top_k"]] == [c["class_id"] for c in ref["top_k"]], x["key"]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(x["top_k"], ref["top_k"])) <= 1e-6, x["key"]
    # status files and the report say what the Parquet holds
    per_shard = Counter(x["shard_id"] for x in rows)
    latest = statuses(calm["out"], run_id)
    assert {sid: (s["status"], s["rows"]) for sid, s in latest.items()} == {sid: ("ok", n) for sid, n in per_shard.items()}
    html = storage.read_bytes(f"{calm['out']}_runs/{run_id}/report/index.html").decode()
    assert _report_rows(html) == dict(per_shard)
    assert f"images written: {IMAGES};" in html and "<h2>Failed shards (0)</h2>" in html
