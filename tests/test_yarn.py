"""The two jobs on a real YARN: Hadoop's MiniYARNCluster on 127.0.0.1 (testkit/yarn), with
EMR's settings from deploy/emr/configurations.json.  Reproduces the 2-executor trap (dynamic
allocation off, no executor count) and shows the fix, from Spark's event logs; the same as
`make yarn-check`.  Needs Java and Maven (the Hadoop jars come from Maven Central once)."""

from __future__ import annotations

import shutil

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.yarn]


@pytest.mark.skipif(shutil.which("mvn") is None, reason="Maven (mvn) is needed to fetch Hadoop's test cluster")
def test_prepare_and_infer_on_yarn_trap_and_fix(tmp_path):
    from testkit.yarn.check import problems, run

    # executors and task slots are what is checked, not the model: its forward passes at 64x64 (a twelfth of 224's)
    figures = run(str(tmp_path), images=1024, infer_extra=("--image-size", "64"))
    assert problems(figures) == []
    runs = {r["name"]: r for r in figures["runs"]}
    trap, fix = runs["infer-trap"], runs["infer-emr-configurations"]
    assert (trap["executors"], trap["cores_per_executor"]) == (2, [1])
    assert "2 executors of 1 core" in trap["layout_warning"]
    # 2 nodes x 5 vcores x 16 GiB: by memory 6 executors of 4 cores would fit (24 tasks on 10 vcores);
    # counting vcores (configurations.json's capacity-scheduler), one per node: 8 cores
    assert fix["cores_per_executor"] == [4] and fix["total_cores"] == 8
    # tasks running at once on the executors (from the event log): never more than the slots
    assert trap["max_concurrent_tasks"] <= 2 < fix["max_concurrent_tasks"] <= 8
    assert trap["images"] == fix["images"] == 1024 and runs["prepare"]["rc"] == 0
    # cluster mode: the driver's one-line error is in its YARN container's stdout (one attempt only:
    # spark.yarn.maxAppAttempts 1), spark-submit exits 1 and YARN's diagnostics carry the driver's 2
    bad = runs["infer-cluster-mode-bad-input"]
    assert bad["rc"] == 1 and bad["driver_exit_status_reported"] == 2
    [(container, line)] = bad["driver_stdout_in_containers"].items()
    assert container.endswith("_01_000001") and line.startswith("infer: error: s3://") and "no such object" in line
