"""infer --iceberg-table: a run committed to an Iceberg table in the local Glue, every shard's rows in it exactly
once whatever was retried, failed or killed, and two runs committing at once.

What the table holds is read independently of our code: pyiceberg plans the current (or an earlier) snapshot's
files, pyarrow reads them.  The Glue of the local server refuses a stale VersionId, as AWS does
(testkit/glue_versions.py), and lets a test hold a commit to kill the driver at a known point.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest

from common import iceberg, storage
from testkit import glue_versions
from testkit.faultproxy import FaultProxy
from testkit.localdev import spark_env, spark_submit_command, upload_cifar_like
from tests.helpers import infer_args, read_manifest, statuses, submit

# Our commit protocol does not depend on Spark's version: run once, on the Spark 3.5 line (EMR 7's Spark; marker
# `once_on_spark35`), to spread the load.
pytestmark = [pytest.mark.spark, pytest.mark.once, pytest.mark.once_on_spark35]

ROOT = "s3://ice/"
WAREHOUSE = f"{ROOT}wh/"


@pytest.fixture(scope="module")
def ice(s3, spark):
    """64 images in 8 shards of 8, packed by prepare."""
    from prepare.main import main

    s3.create_bucket("ice")
    upload_cifar_like(f"{ROOT}in/", 64, seed=61, endpoint_url=s3.endpoint_url)
    assert main(["--input", f"{ROOT}in/", "--output", f"{ROOT}shards/", "--batch", "8"]) == 0
    return read_manifest(f"{ROOT}shards/manifest.parquet")


def table(name: str):
    from infer.iceberg_table import find_table

    return find_table(f"ice_db.{name}", WAREHOUSE, storage.Store()).table


def files_of(t, snapshot_id=None) -> list[str]:
    """The data files of the table's current snapshot (or ``snapshot_id``), as pyiceberg plans a scan."""
    return sorted(task.file.file_path for task in t.scan(snapshot_id=snapshot_id).plan_files())


def rows_of(t, snapshot_id=None) -> list[dict]:
    return [r for f in files_of(t, snapshot_id) for r in pq.read_table(io.BytesIO(storage.read_bytes(f))).to_pylist()]


def assert_once(manifest, t, run_id: str, shards=None, snapshot_id=None) -> None:
    """Each key of ``shards`` (default: every shard) of the manifest in exactly one row of ``run_id``, in record
    order, and nothing else of the run."""
    entries = [e for e in manifest.entries if shards is None or e.shard_id in shards]
    rows = [r for r in rows_of(t, snapshot_id) if r["run_id"] == run_id]
    counts = Counter(r["key"] for r in rows)
    assert set(counts) == {k for e in entries for k in e.keys} and max(counts.values()) == 1
    for e in entries:
        assert sorted((r["record"], r["key"]) for r in rows if r["shard_id"] == e.shard_id) == list(enumerate(e.keys))


def test_a_run_is_one_snapshot_and_a_rerun_adds_nothing(s3, ice, model_uris, capsys):
    from infer.main import main

    args = infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", "one", "--iceberg-table", "ice_db.one")
    with FaultProxy(s3.endpoint_url) as proxy:  # no faults: it counts the requests
        assert main(args + ["--s3-endpoint-url", proxy.endpoint_url]) == 0
    out = capsys.readouterr().out
    assert "Iceberg table ice_db.one at s3://ice/wh/ice_db.db/one: created" in out
    assert "adds 8 files (64 rows) of run_id=one" in out
    t = table("one")
    (snap,) = t.snapshots()
    s = snap.summary
    assert (s["added-data-files"], s["added-records"], s["total-records"]) == ("8", "64", "64")
    assert (s[iceberg.SUMMARY_RUN_ID], s[iceberg.SUMMARY_SHARDS], s[iceberg.SUMMARY_MANIFEST_ID]) == \
        ("one", "8", ice.manifest_id)
    assert files_of(t) == [f"{WAREHOUSE}ice_db.db/one/data/run_id=one/part-{i:05d}.parquet" for i in range(8)]
    assert_once(ice, t, "one")
    # no part file was read back, by the driver or a task: the statistics came from the bytes in memory
    reads = {r: n for r, n in proxy.requests.items() if r.startswith("GET") and "/data/run_id" in r}
    assert reads == {}, reads
    # the same command again: every shard is in the table, nothing runs, no new snapshot
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8 of the selected shards are in the table already" in out and "running 0 shards" in out
    assert len(table("one").snapshots()) == 1


def test_failed_shards_commit_what_was_written_and_only_failed_adds_the_rest(ice, model_uris, capsys):
    from infer.main import main

    shard3 = f"{ROOT}shards/shards/shard-00003.rec"
    saved = storage.read_bytes(shard3)
    storage.write_bytes(shard3, os.urandom(len(saved)))  # garbage of the same size: shard 3 fails
    args = infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", "dmg", "--iceberg-table", "ice_db.dmg")
    try:
        assert main(args) == 1
    finally:
        storage.write_bytes(shard3, saved)
    captured = capsys.readouterr()
    assert "adds 7 files (56 rows) of run_id=dmg; 1 failed shards are not in it" in captured.out
    assert "FAILED shards: 3 " in captured.err
    t = table("dmg")
    (first,) = t.snapshots()
    assert first.summary[iceberg.SUMMARY_SHARDS_FAILED] == "1"
    assert_once(ice, t, "dmg", shards={0, 1, 2, 4, 5, 6, 7})
    assert main(args + ["--only-failed"]) == 0
    assert "adds 1 files (8 rows)" in capsys.readouterr().out
    t = table("dmg")
    assert len(t.snapshots()) == 2
    assert_once(ice, t, "dmg")
    assert_once(ice, t, "dmg", shards={0, 1, 2, 4, 5, 6, 7}, snapshot_id=first.snapshot_id)  # time travel
    assert main(args + ["--only-missing"]) == 0
    assert "running 0 shards" in capsys.readouterr().out and len(table("dmg").snapshots()) == 2


def test_a_retried_task_commits_each_shard_once(s3, ice, model_uris):
    """The first try of the group 0-3 cannot read shard 2; Spark retries the group, which finds 0, 1 and 3 written
    by the first try (this invocation's files: read back once each for their statistics) and writes 2."""
    with FaultProxy(s3.endpoint_url, fault_rate=1.0, faults=("expired",), only=r"^GET /ice/shards/shards/shard-00002",
                    max_faults=1) as proxy:
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
        p = submit("infer/main.py", infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", "retried", "--shards", "0-3",
                                               "--shards-per-task", "4", "--iceberg-table", "ice_db.retried"),
                   env, "spark.master=local[1,2]")
    assert p.returncode == 0, p.stderr[-4000:]
    assert proxy.counts["expired"] == 1
    assert {i: (s["outcome"], s["attempt"]) for i, s in statuses(WAREHOUSE, "retried").items()} == {
        i: ("written", 1) for i in range(4)}
    for i in (0, 1, 3):
        assert proxy.requests[f"GET /ice/wh/ice_db.db/retried/data/run_id%3Dretried/part-{i:05d}.parquet"] == 1
    t = table("retried")
    assert len(t.snapshots()) == 1
    assert_once(ice, t, "retried", shards={0, 1, 2, 3})


def _killed_at_commit(s3, ice, model_uris, run_id: str, after: bool) -> None:
    """spark-submit infer, and kill its process group while Glue holds its commit: before the update is applied
    (then refused), or after it landed but before the reply reaches the driver."""
    reached, release = threading.Event(), threading.Event()

    def hold(database: str, name: str) -> None:
        if name == run_id:
            reached.set()
            release.wait(120)
            if not after:
                raise glue_versions.refusal("the driver was killed")

    glue_versions.on_update(**({"after": hold} if after else {"before": hold}))
    args = infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", run_id, "--iceberg-table", f"ice_db.{run_id}")
    proc = subprocess.Popen(spark_submit_command("infer/main.py", args, ["spark.master=local[2]"]),
                            env=spark_env(s3.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert reached.wait(600), "the driver never committed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver JVM, its Python driver and workers
        proc.wait()
        release.set()
        glue_versions.on_update()


@pytest.mark.parametrize("after", [False, True], ids=["before-commit", "after-commit"])
def test_a_driver_killed_at_its_commit_leaves_each_shard_once_after_the_next_run(s3, ice, model_uris, capsys, after):
    from infer.main import main

    run_id = "killedafter" if after else "killedbefore"
    _killed_at_commit(s3, ice, model_uris, run_id, after)
    t = table(run_id)
    assert len(t.snapshots()) == (1 if after else 0)
    # every part file was written before the commit: the next invocation commits them (before) or finds them in
    assert main(infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", run_id, "--iceberg-table", f"ice_db.{run_id}")) == 0
    out = capsys.readouterr().out
    if after:
        assert "8 of the selected shards are in the table already" in out and "running 0 shards" in out
    else:
        assert "8/8 shards ok (0 written, 8 already done)" in out and "adds 8 files (64 rows)" in out
    t = table(run_id)
    assert len(t.snapshots()) == 1
    assert_once(ice, t, run_id)


def test_two_runs_committing_at_once_both_land(s3, ice, model_uris):
    """Two infer runs (run ids a and b) reach Glue's UpdateTable together: one is refused for its stale VersionId,
    pyiceberg reloads the table and commits it again on top of the other."""
    arrivals = []
    barrier = threading.Barrier(2, timeout=600)

    def together(database: str, name: str) -> None:
        if name == "shared":
            arrivals.append(name)
            if len(arrivals) <= 2:
                barrier.wait()

    refused = glue_versions.REFUSED[0]
    glue_versions.on_update(before=together)
    procs = []
    try:
        for run_id in ("a", "b"):
            args = infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", run_id, "--shards", "0-3", "--iceberg-table",
                              "ice_db.shared")
            procs.append(subprocess.Popen(spark_submit_command("infer/main.py", args, ["spark.master=local[1]"]),
                                          env=spark_env(s3.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        results = [p.communicate(timeout=900) for p in procs]
    finally:
        glue_versions.on_update()
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    assert glue_versions.REFUSED[0] - refused == 1 and len(arrivals) == 3
    t = table("shared")
    assert len(t.snapshots()) == 2
    for run_id in ("a", "b"):
        assert_once(ice, t, run_id, shards={0, 1, 2, 3})


def test_a_refused_commit_is_exit_1_and_the_same_command_commits(ice, model_uris, capsys):
    """Glue refuses the commit (any failure after the files are written): exit 1 with what was written and how
    to finish; the same command then commits every file, once.  A dry run before writes nothing, not even the
    table."""
    from infer.main import main

    args = infer_args(ice.uri, model_uris, WAREHOUSE, "--run-id", "refused", "--iceberg-table", "ice_db.refused")
    assert main(args + ["--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and table("refused") is None
    refusals = []

    def refuse_once(database: str, name: str) -> None:
        if name == "refused" and not refusals:
            refusals.append(name)
            raise glue_versions.refusal("Glue is down")

    glue_versions.on_update(before=refuse_once)
    try:
        assert main(args) == 1
    finally:
        glue_versions.on_update()
    err = capsys.readouterr().err
    assert "Glue is down" in err and "written before the failure" in err and "Iceberg table ice_db.refused" in err
    assert len(table("refused").snapshots()) == 0
    assert main(args) == 0
    assert "adds 8 files (64 rows)" in capsys.readouterr().out
    assert_once(ice, table("refused"), "refused")


def test_a_table_of_another_shape_is_refused_before_anything_is_written(ice, model_uris, capsys):
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    from infer.iceberg_table import catalog
    from infer.main import main

    cat = catalog(storage.Store())
    if ("ice_db",) not in cat.list_namespaces():  # run alone, no earlier test made it
        cat.create_namespace("ice_db")
    cat.create_table(("ice_db", "theirs"), schema=Schema(NestedField(1, "key", StringType(), True)),
                     location=f"{ROOT}theirs")
    out = f"{ROOT}refused-shape/"
    assert main(infer_args(ice.uri, model_uris, out, "--iceberg-table", "ice_db.theirs")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["infer: error: --iceberg-table ice_db.theirs: the table exists with another schema: column 2 is "
                   "missing, not 2: shard_id: required int; use another table"], err
    assert list(storage.list_objects(out)) == []
