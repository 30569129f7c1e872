"""The printed rerun command reruns where the run ran: master, deploy mode, py-files, properties file and
the explicit --conf settings of the running application."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from common import storage
from common.spark import read_properties
from testkit.localdev import ROOT, spark_env, venv_bin
from tests.helpers import assert_exactly_once, infer_args, prepared, read_manifest, submit

# its Spark 4 run is in the once line (make test-once), to even out the two Spark 4 lines; on Spark 3.5 as usual
BUCKET = "rerun"


@pytest.fixture(scope="module")
def four_shards(s3, spark):
    return prepared(s3, BUCKET, 16, seed=71)


def _fail_then_rerun(manifest: str, model_uris: dict, out: str, env: dict, conf: list[str]) -> list[str]:
    """A run with shard 2 damaged, then its printed rerun command (after repair): returns that command."""
    shard = read_manifest(manifest).entries[2].uri
    saved = storage.read_bytes(shard)
    storage.write_bytes(shard, b"damaged")
    try:
        p = submit("infer/main.py", infer_args(manifest, model_uris, out, "--run-id", "r"), env, *conf)
    finally:
        storage.write_bytes(shard, saved)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    command = json.loads(storage.read_bytes(f"{out}_runs/r/summary.json"))["rerun_failed"]
    assert command in p.stdout + p.stderr  # the same command is printed
    argv = shlex.split(command)
    q = subprocess.run([venv_bin("spark-submit"), *argv[1:]], env=spark_env(env), capture_output=True, text=True,
                       timeout=600, cwd="/")  # from anywhere: the paths in it are absolute
    assert q.returncode == 0, q.stdout[-2000:] + q.stderr[-3000:]
    assert_exactly_once(read_manifest(manifest), out, "r")
    return argv


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_rerun_command_keeps_the_master_properties_file_and_explicit_conf(s3, four_shards, model_uris, tmp_path):
    """On a standalone cluster (one test for both kinds of master: the command carries spark.master as read
    from the running application, local[N] or spark://)."""
    from testkit.standalone import StandaloneCluster

    with StandaloneCluster(str(tmp_path), workers=1, cores=1, memory="2g", env=s3.env) as cluster:
        argv = _fail_then_rerun(four_shards, model_uris, f"s3://{BUCKET}/standalone/", s3.env,
                                [f"spark.master={cluster.master_url}", "spark.executor.memory=1g",
                                 "spark.cores.max=1", "spark.task.maxFailures=2"])
    assert _option(argv, "--master") == cluster.master_url
    assert _option(argv, "--properties-file") == f"{ROOT}/spark-defaults.conf"
    confs = [argv[i + 1] for i, a in enumerate(argv) if a == "--conf"]
    # what differs from the properties file travels as --conf; what it already says does not
    assert {"spark.executor.memory=1g", "spark.cores.max=1", "spark.task.maxFailures=2"} <= set(confs)
    assert not any(c.startswith(("spark.python.worker.reuse", "spark.driver.port", "spark.app.")) for c in confs)
    assert argv[-1] == "--only-failed" and _option(argv, "--run-id") == "r"


def test_properties_file_parsing():
    props = read_properties(f"{ROOT}/spark-defaults.conf")
    assert props["spark.python.worker.reuse"] == "true" and props["spark.eventLog.dir"] == "file:///tmp/spark-events"
    assert read_properties("/nonexistent/spark-defaults.conf") == {}
