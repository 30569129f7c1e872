"""infer/iceberg_table.py against the local server's Glue (which refuses a stale VersionId, as AWS does) and S3:
the table created or refused, commits from task-reported statistics, the ledger, and concurrent commits."""

from __future__ import annotations

import io
import threading
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from common import iceberg, storage
from common.errors import GlueError, UsageError
from common.output import ImageResult, part_key, predictions_table, table_to_parquet
from infer import iceberg_table
from testkit import glue_versions

BUCKET = "unit-commit"


@pytest.fixture(scope="module")
def store(s3):
    s3.create_bucket(BUCKET)
    return storage.Store(s3.endpoint_url)


def _target(store, name: str) -> iceberg_table.Target:
    target = iceberg_table.find_table(f"unit_db.{name}", f"s3://{BUCKET}/wh/", store)
    iceberg_table.ensure_table(target, store)
    return target


def _write_parts(target, run_id: str, shards, rows: int = 4) -> list[iceberg.FileStats]:
    """Part files of ``run_id`` on S3 as a task writes them, and what the task reports of each."""
    files = []
    describe = iceberg.FileTarget.of(target.table.schema(), target.table.properties)
    for sid in shards:
        results = [ImageResult(f"in/{sid}/{i}.png", i, "ok", [i, 0], [0.6, 0.4]) for i in range(rows)]
        data = table_to_parquet(predictions_table(results, [f"l{i}" for i in range(rows)], sid, "m", "mid",
                                                  datetime.now(timezone.utc), iceberg_run_id=run_id), "t")
        uri = part_key(target.files_prefix, run_id, sid)
        storage.write_bytes(uri, data, target.table.io.store)
        files.append(describe.describe(sid, uri, data))
    return files


def _committer(target, store, run_id: str, num_shards: int = 16) -> iceberg_table.Committer:
    seen = iceberg_table.committed_mask(target.table, f"s3://{BUCKET}/wh/", run_id, num_shards, store)
    return iceberg_table.Committer(target, f"s3://{BUCKET}/wh/", run_id, "inv", "mid", num_shards, store, seen)


def _rows(table) -> list[tuple]:
    """(run_id, key) of every row the table's current snapshot holds, read with pyarrow from its files."""
    table.refresh()
    out = []
    for task in table.scan().plan_files():
        t = pq.read_table(io.BytesIO(storage.read_bytes(task.file.file_path, table.io.store)))
        out += list(zip(t.column("run_id").to_pylist(), t.column("key").to_pylist()))
    return sorted(out)


def test_a_commit_adds_each_reported_file_once_in_rolled_manifests(store, monkeypatch):
    monkeypatch.setattr(iceberg_table, "MANIFEST_FILES", 3)
    target = _target(store, "rolled")
    assert target.location == f"s3://{BUCKET}/wh/unit_db.db/rolled"
    files = _write_parts(target, "r1", range(8))
    c = _committer(target, store, "r1")
    c.add(files[:5])
    c.add(files[5:] + files[:2])  # a file reported twice (two waves) is added once
    snapshot = c.commit(failed=1)
    assert c.files == 8 and c.skipped == 2 and len(c.manifests) == 3
    table = target.table
    table.refresh()
    assert table.current_snapshot().snapshot_id == snapshot
    summary = table.current_snapshot().summary
    assert summary["added-data-files"] == "8" and summary["added-records"] == "32"
    assert summary[iceberg.SUMMARY_RUN_ID] == "r1" and summary[iceberg.SUMMARY_SHARDS_FAILED] == "1"
    assert _rows(table) == sorted(("r1", f"in/{s}/{i}.png") for s in range(8) for i in range(4))
    # the ledger the property names holds the shards committed
    (ledger,) = iceberg.run_commits(table.properties, "r1").values()
    assert np.array_equal(iceberg.read_ledger(storage.read_bytes(ledger, store)), [[0, 8]])
    mask = iceberg_table.committed_mask(table, f"s3://{BUCKET}/wh/", "r1", 16, store)
    assert mask[:8].all() and not mask[8:].any()
    # the next invocation of the run adds only what is not in yet
    c2 = _committer(target, store, "r1")
    c2.add(files + _write_parts(target, "r1", [9]))
    c2.commit()
    assert c2.files == 1 and c2.skipped == 8
    assert len(_rows(table)) == 36 and len(table.snapshots()) == 2
    assert _committer(target, store, "r1").commit() is None  # nothing to add: no snapshot


def test_another_invocation_of_the_same_run_committing_meanwhile_is_refused_not_duplicated(store):
    target = _target(store, "samerun")
    files = _write_parts(target, "r", range(4))
    first, second = _committer(target, store, "r"), _committer(target, store, "r")  # both planned before either commits
    first.add(files)
    second.add(files)
    first.commit()
    with pytest.raises(GlueError, match="another infer of run r committed"):
        second.commit()
    assert _rows(target.table) == sorted(("r", f"in/{s}/{i}.png") for s in range(4) for i in range(4))


def test_commits_racing_on_glue_both_land(store):
    """Two runs' commits read the same table version and reach UpdateTable together: Glue (here moto, made to
    check VersionId as AWS does) refuses one, pyiceberg reloads and commits it again on top of the other."""
    target = _target(store, "race")
    committers = {}
    for run_id in ("a", "b"):
        files = _write_parts(target, run_id, range(3))
        committers[run_id] = _committer(iceberg_table.find_table("unit_db.race", "", store), store, run_id)
        committers[run_id].add(files)
    barrier = threading.Barrier(2, timeout=60)
    arrivals = []

    def both_at_once(database: str, table: str) -> None:
        arrivals.append(table)
        if len(arrivals) <= 2:
            barrier.wait()

    refused_before = glue_versions.REFUSED[0]
    glue_versions.on_update(before=both_at_once)
    try:
        errors = []

        def commit(c):
            try:
                c.commit()
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=commit, args=(c,)) for c in committers.values()]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
    finally:
        glue_versions.on_update()
    assert not errors, errors
    assert glue_versions.REFUSED[0] - refused_before == 1 and len(arrivals) == 3  # one refused, committed again
    table = iceberg_table.find_table("unit_db.race", "", store).table
    assert _rows(table) == sorted((r, f"in/{s}/{i}.png") for r in "ab" for s in range(3) for i in range(4))
    assert len(table.snapshots()) == 2 and set(iceberg.run_commits(table.properties, "a")) and \
        set(iceberg.run_commits(table.properties, "b"))


def test_a_table_of_another_shape_is_refused_with_the_difference(store):
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    cat = iceberg_table.catalog(store)
    cat.create_table(("unit_db", "other"), schema=Schema(NestedField(1, "key", StringType(), required=True)),
                     location=f"s3://{BUCKET}/wh/other")
    with pytest.raises(UsageError, match="unit_db.other: the table exists with another schema: column 2 is missing"):
        iceberg_table.find_table("unit_db.other", f"s3://{BUCKET}/wh/", store)


def test_a_deleted_run_leaves_in_one_snapshot_and_can_be_committed_again(store):
    target = _target(store, "deleted")
    keep, gone = _write_parts(target, "keep", range(2)), _write_parts(target, "gone", range(3))
    for run_id, files in (("keep", keep), ("gone", gone)):
        c = _committer(target, store, run_id)
        c.add(files)
        c.commit()
    table = target.table
    before = table.current_snapshot().snapshot_id
    held = iceberg_table.run_in_table(table, "gone")
    assert (held.files, held.rows, len(held.commits)) == (3, 12, 1)
    deleted = iceberg_table.delete_run(table, "gone")
    table.refresh()
    assert table.current_snapshot().snapshot_id == deleted and table.current_snapshot().summary.operation.value == "delete"
    assert table.current_snapshot().summary["deleted-data-files"] == "3"
    assert _rows(table) == sorted(("keep", f"in/{s}/{i}.png") for s in range(2) for i in range(4))
    assert iceberg.run_commits(table.properties, "gone") == {} and iceberg.run_commits(table.properties, "keep")
    assert len([r for r in table.scan(snapshot_id=before).plan_files()]) == 5  # the run is still there, back then
    for f in gone:  # its files stay, for time travel
        assert storage.exists(f.uri, store)
    # nothing of the run in the table now: the same files can be committed again
    again = _committer(target, store, "gone")
    assert not again.seen.any()
    again.add(gone)
    again.commit()
    assert len(_rows(table)) == 8 + 12
    assert iceberg_table.delete_run(iceberg_table.find_table("unit_db.deleted", "", store).table, "nothing") is None


def test_the_glue_calls_are_the_ones_the_iam_policy_grants_for_iceberg(s3, monkeypatch):
    """Every AWS call of find, create, commit and delete, recorded as botocore makes it: the Glue ones are what
    deploy/iam-policy.json grants for --iceberg-table (tests/test_deploy.py's ICEBERG_GLUE)."""
    import botocore.client

    from tests.test_deploy import ICEBERG_GLUE

    calls = set()
    plain = botocore.client.BaseClient._make_api_call

    def recording(self, operation, params):
        calls.add(f"{self.meta.service_model.signing_name}:{operation}")
        return plain(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    store = storage.Store(s3.endpoint_url)
    s3.create_bucket("unit-iam")
    target = iceberg_table.find_table("unit_iam_db.t", "s3://unit-iam/wh/", store)
    iceberg_table.ensure_table(target, store)
    c = iceberg_table.Committer(target, "s3://unit-iam/wh/", "r", "inv", "mid", 4, store,
                                iceberg_table.committed_mask(target.table, "s3://unit-iam/wh/", "r", 4, store))
    c.add(_write_parts(target, "r", range(2)))
    c.commit()
    iceberg_table.delete_run(iceberg_table.find_table("unit_iam_db.t", "", store).table, "r")
    assert {c for c in calls if c.startswith("glue:")} == ICEBERG_GLUE
    assert {c for c in calls if c.startswith("s3:")} <= {"s3:GetObject", "s3:PutObject", "s3:HeadObject",
                                                         "s3:DeleteObject", "s3:CreateBucket"}
