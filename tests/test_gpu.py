"""--device gpu as far as it runs here (no GPU, CPU MXNet): each task binds the GPU address Spark
assigned it, Spark's GPU scheduling is required before anything starts, and a node whose MXNet has
no CUDA fails its shards with a line that names the GPU and the fix.  What was not run: a CUDA
build of MXNet on a real GPU (README, "GPU")."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from types import SimpleNamespace

import pytest

from common.devices import device_context, task_device
from common.errors import ModelError
from testkit.localdev import ROOT
from tests.helpers import infer_args, statuses, submit

pytestmark = pytest.mark.spark
DISCOVER = os.path.join(ROOT, "deploy", "emr", "discover-gpus.sh")


def test_a_task_binds_the_gpu_spark_assigned_it():
    gpu = {"gpu": SimpleNamespace(name="gpu", addresses=["3"])}
    assert task_device("gpu", gpu) == "gpu:3"
    assert task_device("cpu", gpu) == "cpu" and task_device("cpu", None) == "cpu"
    for none in (None, {}, {"gpu": SimpleNamespace(name="gpu", addresses=[])}):
        with pytest.raises(ModelError, match="Spark assigned this task no GPU: set spark.executor.resource.gpu.amount"):
            task_device("gpu", none)


def test_cpu_mxnet_names_the_gpu_and_the_cuda_build():
    with pytest.raises(ModelError, match=r"given GPU 3, but this MXNet build sees no GPU .*mxnet-cu112==1\.9\.1"):
        device_context("gpu:3")
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        device_context("tpu")


def test_device_gpu_without_spark_gpu_scheduling_is_refused_before_any_write(s3, prepared, model_uris, capsys):
    from common import storage
    from infer.main import main

    out = "s3://hostile/gpu-unscheduled/"
    assert main(infer_args(prepared["manifest"], model_uris, out, "--device", "gpu")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device gpu needs Spark's GPU scheduling: spark.executor.resource.gpu.amount, " \
        "spark.task.resource.gpu.amount not set" in err[0], err
    assert list(storage.list_objects(out)) == []
    assert main(infer_args(prepared["manifest"], model_uris, out, "--device", "gpu", "--precision", "int8")) == 2
    assert "bf16 and int8 are converted for the CPU" in capsys.readouterr().err


@pytest.fixture()
def fake_nvidia_smi(tmp_path) -> str:
    """A PATH whose nvidia-smi lists GPUs 3 and 7 (the way the real one answers the discovery script's query)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1 $2" = "--query-gpu=index --format=csv,noheader" ] || exit 9\nprintf "3\\n7\\n"\n')
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_the_shipped_discovery_script_lists_the_nodes_gpus(fake_nvidia_smi):
    r = subprocess.run([DISCOVER], env={**os.environ, "PATH": fake_nvidia_smi}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"name": "gpu", "addresses": ["3", "7"]}
    # no nvidia-smi: the script fails (Spark then refuses to start the executor), never claims a GPU
    r = subprocess.run(["/bin/bash", DISCOVER], env={**os.environ, "PATH": "/nonexistent"}, capture_output=True, text=True)
    assert r.returncode != 0 and not r.stdout


def test_tasks_get_the_addresses_of_a_discovery_script_on_a_standalone_cluster(s3, prepared, model_uris, tmp_path,
                                                                               fake_nvidia_smi):
    """The shipped discovery script, over a fake nvidia-smi, gives the worker GPUs "3" and "7"; two tasks run at
    once on its executor.
    Every shard's error names the GPU its task was given: 3 or 7, never the 0 that every task bound before."""
    from testkit.standalone import StandaloneCluster

    out = "s3://hostile/gpu-standalone/"
    with StandaloneCluster(str(tmp_path), workers=1, cores=2, memory="3g", env={**s3.env, "PATH": fake_nvidia_smi},
                           worker_conf={"spark.worker.resource.gpu.amount": "2",
                                        "spark.worker.resource.gpu.discoveryScript": DISCOVER}) as cluster:
        p = submit("infer/main.py", infer_args(prepared["manifest"], model_uris, out, "--device", "gpu", "--run-id",
                                               "gpu", "--shards-per-task", "1"), s3.env,
                   f"spark.master={cluster.master_url}", "spark.executor.memory=1g", "spark.executor.cores=2",
                   "spark.executor.resource.gpu.amount=2", "spark.task.resource.gpu.amount=1")
    assert p.returncode == 1, p.stderr[-3000:]
    errors = {sid: s["error"] for sid, s in statuses(out, "gpu").items()}
    assert errors and all(s is not None for s in errors.values())
    given = {e.split("given GPU ", 1)[1].split(",", 1)[0] for e in errors.values()}
    assert given == {"3", "7"}, errors  # two task slots at once, each holding one of the executor's GPUs
    assert all("this MXNet build sees no GPU" in e for e in errors.values()), errors
