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


# ----------------------------------------------------------------------------- the tests' own Python processes

_ZIP_PROBE = r"""
import importlib, os, sys, zipfile, zipimport
path = os.path.abspath(sys.argv[1])
def write(*names):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/__init__.py", "")
        for n in names:
            z.writestr(f"pkg/{n}.py", f"NAME = {n!r}")
write("one")
sys.path.insert(0, path)
import pkg.one
importers = [v for k, v in sys.path_importer_cache.items() if k.startswith(path)]
importlib.invalidate_caches()  # the first call in a process reads each archive again (it notes the file's stamp)
before = [imp._files for imp in importers]
importlib.invalidate_caches()
print("unchanged kept:", all(imp._files is f for imp, f in zip(importers, before)))
write("one", "two")  # the archive changes on disk: its directory is read again
importlib.invalidate_caches()
import pkg.two
print("changed read:", pkg.two.NAME == "two" and all(imp._files is not f for imp, f in zip(importers, before)))
"""


def test_the_tests_python_reads_a_zip_again_only_when_it_changed(tmp_path):
    # testkit/worker_site/sitecustomize.py, on PYTHONPATH for every process the tests start (tests/conftest.py)
    run = subprocess.run([sys.executable, "-c", _ZIP_PROBE, str(tmp_path / "a.zip")], capture_output=True, text=True,
                         check=True)
    assert run.stdout.split("\n")[:2] == ["unchanged kept: True", "changed read: True"], run.stdout + run.stderr


def _worker_zip_importers_kept(_) -> tuple[int, bool]:
    import importlib
    import zipimport

    importers = [v for v in sys.path_importer_cache.values() if isinstance(v, zipimport.zipimporter)]
    before = [imp._files for imp in importers]
    importlib.invalidate_caches()  # as PySpark's worker does before every task
    return len(importers), all(imp._files is f for imp, f in zip(importers, before))


@pytest.mark.spark
def test_spark_python_workers_keep_their_zip_directories_between_tasks(spark):
    # the session's workers have pyspark.zip (and spark-core's jar) on their path, as every Spark worker does
    for importers, kept in spark.parallelize(range(2), 2).map(_worker_zip_importers_kept).collect():
        assert importers > 0 and kept
