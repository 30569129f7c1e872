"""Faults that must be survived: S3 errors, damaged shards, a killed driver, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from common import storage
from testkit.faultproxy import FaultProxy
from testkit.localdev import run_spark_submit, spark_env, spark_submit_command, upload_cifar_like
from tests.helpers import (
    assert_exactly_once,
    infer_args,
    part_objects,
    part_versions,
    read_manifest,
    run_id_from,
    statuses,
)

# Every test here runs the jobs.  Our S3 retries, reruns and run ids are the same on either Spark line (`once`);
# the driver and worker kills are about Spark's own recovery, and run on both.
pytestmark = pytest.mark.spark


def _bucket_with_images(s3, bucket: str, count: int, seed: int) -> str:
    s3.create_bucket(bucket)
    upload_cifar_like(f"s3://{bucket}/in/", count, seed=seed, endpoint_url=s3.endpoint_url)
    return f"s3://{bucket}/"


@pytest.mark.once
def test_s3_faults_are_retried_and_output_is_exact(s3, spark, model_uris, capsys):
    """503 SlowDown, 500, resets before and after the request, and jitter on ~10 % of requests."""
    from infer.main import main as infer
    from prepare.main import main as prepare

    root = _bucket_with_images(s3, "faulty", 150, seed=31)
    with FaultProxy(s3.endpoint_url, fault_rate=0.1, jitter_s=0.02, seed=7) as proxy:
        via = ["--s3-endpoint-url", proxy.endpoint_url]
        assert prepare(["--input", f"{root}in/", "--output", f"{root}shards/", "--batch", "32", *via]) == 0
        assert infer(infer_args(f"{root}shards/manifest.parquet", model_uris, f"{root}pred/", *via)) == 0
    printed = capsys.readouterr().out
    for fault in ("503", "500", "reset", "reset_after"):
        assert proxy.counts[fault] > 0, proxy.counts
    manifest = read_manifest(f"{root}shards/manifest.parquet")
    assert manifest.num_images == 150 and len(manifest.entries) == 5
    assert_exactly_once(manifest, f"{root}pred/", run_id_from(printed))
    # a try whose PUT succeeded but whose reply was lost still counts its shard as written now
    assert "5/5 shards ok (5 written, 0 already done), 150 images written" in printed


@pytest.mark.once
def test_lost_reply_to_a_part_put_is_retried_and_counted_once(s3, spark, model_uris, eight_shards):
    """The part PUT reaches S3 but the reply is lost: the retry finds its own file (412), nothing is duplicated."""
    from infer.main import main

    out = f"{eight_shards['root']}lost-reply/"
    with FaultProxy(s3.endpoint_url, fault_rate=1.0, faults=("reset_after",), only=r"^PUT .*/part-00003\.parquet",
                    max_faults=1) as proxy:
        rc = main(infer_args(eight_shards["manifest"], model_uris, out, "--run-id", "lost",
                             "--s3-endpoint-url", proxy.endpoint_url))
    assert rc == 0 and proxy.counts["reset_after"] == 1
    assert statuses(out, "lost")[3]["outcome"] == "written"
    summary = json.loads(storage.read_bytes(f"{out}_runs/lost/summary.json"))
    assert summary["shards_written"] == 8 and summary["images_written"] == 64
    assert_exactly_once(read_manifest(eight_shards["manifest"]), out, "lost")


@pytest.fixture(scope="module")
def eight_shards(s3, spark):
    """64 images in 8 shards of 8."""
    from prepare.main import main

    root = _bucket_with_images(s3, "eight", 64, seed=33)
    assert main(["--input", f"{root}in/", "--output", f"{root}shards/", "--batch", "8"]) == 0
    return {"root": root, "manifest": f"{root}shards/manifest.parquet"}


@pytest.mark.once
def test_damaged_then_deleted_shard_and_only_failed_rerun(spark, eight_shards, model_uris, capsys):
    from infer.main import main

    root = eight_shards["root"]
    out = f"{root}damaged/"
    shard3, shard5 = f"{root}shards/shards/shard-00003.rec", f"{root}shards/shards/shard-00005.rec"
    saved3, saved5 = storage.read_bytes(shard3), storage.read_bytes(shard5)
    storage.write_bytes(shard3, os.urandom(len(saved3)))  # garbage of the same size
    storage.s3_client().delete_object(Bucket="eight", Key="shards/shards/shard-00005.rec")
    args = infer_args(eight_shards["manifest"], model_uris, out, "--run-id", "dmg")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "FAILED shards: 3,5 " in err and "--only-failed" in err
    st = statuses(out, "dmg")
    assert st[3]["status"] == "failed" and "shard 3" in st[3]["error"] and "shard-00003.rec" in st[3]["error"]
    assert st[5]["status"] == "failed" and "shard-00005.rec: no such object" in st[5]["error"]
    assert all(st[i]["status"] == "ok" for i in (0, 1, 2, 4, 6, 7))
    assert len(part_objects(out, "dmg")) == 6

    before = part_versions(out, "dmg")
    storage.write_bytes(shard3, saved3)
    storage.write_bytes(shard5, saved5)
    assert main(args + ["--only-failed"]) == 0
    after = part_versions(out, "dmg")
    assert {k: v for k, v in after.items() if k in before} == before, "a shard that was fine got rewritten"
    assert_exactly_once(read_manifest(eight_shards["manifest"]), out, "dmg")
    # and once everything is there, --only-failed finds nothing to do
    assert main(args + ["--only-failed"]) == 0
    assert "running 0 shards" in capsys.readouterr().out


@pytest.mark.once
def test_rerun_with_same_run_id_skips_done_work_and_conflicts_are_reported(spark, eight_shards, model_uris, capsys):
    from infer.main import main

    out = f"{eight_shards['root']}rerun/"
    args = infer_args(eight_shards["manifest"], model_uris, out, "--run-id", "again", "--shards", "0-3")
    assert main(args) == 0
    before = part_versions(out, "again")
    full = infer_args(eight_shards["manifest"], model_uris, out, "--run-id", "again")
    assert main(full) == 0
    printed = capsys.readouterr().out
    assert "4 written, 4 already done" in printed
    after = part_versions(out, "again")
    assert {k: after[k] for k in before} == before
    # a different --top-k under the same run id is refused before Spark starts...
    assert main(full + ["--top-k", "3"]) == 2
    assert "was made with --top-k 5" in capsys.readouterr().err
    # ...and a part file made from other input is a reported conflict, never overwritten
    key = f"{out}run_id=again/part-00002.parquet"
    data = storage.read_bytes(key)
    storage.write_bytes(key, data, metadata={"shardinfer-input-digest": "0" * 64})
    assert main(full + ["--shards", "2"]) == 1
    assert "already exists from different input" in capsys.readouterr().err
    assert storage.read_metadata(key)["shardinfer-input-digest"] == "0" * 64
    assert main(full + ["--shards", "2", "--force"]) == 0
    assert storage.read_metadata(key)["shardinfer-input-digest"] != "0" * 64


@pytest.mark.once
def test_run_id_of_another_manifest_is_refused(spark, eight_shards, model_uris, prepared, capsys):
    from infer.main import main

    out = f"{eight_shards['root']}rerun/"
    assert main(infer_args(prepared["manifest"], model_uris, out, "--run-id", "again", "--shards", "0")) == 2
    assert "--run-id again belongs to manifest" in capsys.readouterr().err


def _wait_for_parts(output: str, run_id: str, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(part_objects(output, run_id)) >= count:
            return
        assert proc.poll() is None, "job ended before the fault could be injected"
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} parts after {timeout}s")


def test_driver_killed_then_only_missing_finishes(s3, eight_shards, model_uris):
    out = f"{eight_shards['root']}killed/"
    args = infer_args(eight_shards["manifest"], model_uris, out, "--run-id", "k")
    proc = subprocess.Popen(spark_submit_command("infer/main.py", args, ["spark.master=local[2]"]),
                            env=spark_env(s3.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for_parts(out, "k", 4, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver JVM, its Python driver and workers
        proc.wait()
    # a part PUT the server had already received may still land after the kill: count once the listing is still
    done, previous = len(part_objects(out, "k")), -1
    while done != previous:
        time.sleep(0.5)
        done, previous = len(part_objects(out, "k")), done
    assert done < 8, "the job finished before it was killed"
    before = part_versions(out, "k")
    again = run_spark_submit("infer/main.py", args + ["--only-missing"], s3.env, ["spark.master=local[2]"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"running {8 - done} shards" in again.stdout
    after = part_versions(out, "k")
    assert {k: after[k] for k in before} == before
    assert_exactly_once(read_manifest(eight_shards["manifest"]), out, "k")


def test_worker_killed_mid_run_on_standalone_cluster(s3, eight_shards, model_uris, tmp_path):
    """Master + 2 workers on 127.0.0.1; one worker (and its executor) dies mid-run; the job completes."""
    from testkit.standalone import StandaloneCluster

    out = f"{eight_shards['root']}cluster/"
    args = infer_args(eight_shards["manifest"], model_uris, out, "--run-id", "c")
    with StandaloneCluster(str(tmp_path), workers=2, cores=1, memory="2g", env=s3.env) as cluster:
        cmd = spark_submit_command("infer/main.py", args, [f"spark.master={cluster.master_url}",
                                                           "spark.executor.memory=1g", "spark.cores.max=2"])
        log = open(tmp_path / "driver.log", "w")
        proc = subprocess.Popen(cmd, env=spark_env(s3.env), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_parts(out, "c", 2, proc)
            deadline = time.time() + 120
            while not cluster.python_workers(0):  # kill it while its executor runs a task
                assert time.time() < deadline and proc.poll() is None, "worker 0 never ran a task"
                time.sleep(0.1)
            cluster.kill_worker(0)
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        driver_log = (tmp_path / "driver.log").read_text()
        assert rc == 0, driver_log[-4000:]
    assert "8/8 shards ok" in driver_log
    assert all(s["status"] == "ok" for s in statuses(out, "c").values())
    assert_exactly_once(read_manifest(eight_shards["manifest"]), out, "c")
