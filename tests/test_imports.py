"""What each command pays to start: the commands that never run a model import no MXNet, and the
modules the jobs import on the driver before Spark starts import no Spark."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _loaded(modules: str, then: str = "") -> set[str]:
    code = (f"import sys, {modules}\n{then}\n"
            "print(' '.join(m for m in ('mxnet', 'pyspark', 'onnx', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("modules, absent", [
    ("infer.athena, infer.report, infer.plan, infer.compact, infer.runrecord, infer.delete, infer.settings",
     {"mxnet", "onnx"}),
    ("common.cli, common.progress, common.manifest, common.storage, common.output, common.status, common.settings",
     {"mxnet", "pyspark", "PIL"}),
    ("common.model_files, common.model_graph, common.devices", {"mxnet", "pyspark"}),
    # prepare packs shards and runs no model; infer's driver imports MXNet only to check the model
    ("prepare.main, prepare.tasks, infer.main, infer.task, common.shard", {"mxnet"}),
])
def test_light_commands_do_not_import_mxnet(modules, absent):
    assert not _loaded(modules) & absent


def test_the_workers_warm_up_imports_mxnet():
    # the check above can fail: infer's first stage has each Python worker import what its tasks run (MXNet)
    # in the background, as here, while the driver checks the model and writes the run record
    assert "mxnet" in _loaded("common.spark, threading", "common.spark.import_in_background('infer.task', 'mxnet')\n"
                              "[t.join() for t in threading.enumerate() if t.name.startswith('shardinfer-import')]")
