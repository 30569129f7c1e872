"""An Iceberg predictions table as Athena's engine reads it: Trino 476's Iceberg connector over the Glue catalog
and S3 of the local server, running every statement of docs/iceberg-queries.sql on real infer output.

The path: infer --iceberg-table commits run A; run B (another model) fails on a damaged shard, commits what it
wrote, and its rerun with --only-failed commits the rest.  Trino queries, time-travels, merges the latest
prediction per key into a table of its own, compacts, expires snapshots; python -m infer.delete drops a run.
Every answer is compared with the same question answered in Python over pyarrow's reading of the files that
pyiceberg plans for the snapshot in question.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import timezone

import pyarrow.parquet as pq
import pytest

from common import storage
from tests.helpers import athena_queries, hand_packed, infer_args, read_manifest, upload_model

pytestmark = [pytest.mark.trino, pytest.mark.spark]
BUCKET = "icelake"
WAREHOUSE = f"s3://{BUCKET}/wh/"
DB, TABLE = "shardinfer_ice", "predictions"


def statements() -> dict[str, str]:
    return athena_queries("iceberg-queries.sql")


def fill(name: str, **values: str) -> str:
    """A documented statement with its placeholders ('RUN_ID', SNAPSHOT_ID, ...) replaced by values."""
    sql = statements()[name]
    for placeholder, value in values.items():
        sql = sql.replace(f"'{placeholder}'", f"'{value}'").replace(placeholder, value)
    return sql


def q(trino, sql: str) -> list[tuple]:
    return trino.query(sql, schema=DB, catalog="iceberg")


def table():
    from infer.iceberg_table import find_table

    return find_table(f"{DB}.{TABLE}", WAREHOUSE, storage.Store()).table


def rows_at(snapshot_id=None) -> list[dict]:
    """Every row of the table at a snapshot (default: the current one), read with pyarrow from the files
    pyiceberg plans for it."""
    t = table()
    return [r for task in t.scan(snapshot_id=snapshot_id).plan_files()
            for r in pq.read_table(io.BytesIO(storage.read_bytes(task.file.file_path))).to_pylist()]


def utc(t):
    return t.astimezone(timezone.utc)


@pytest.fixture(scope="module")
def ice_lake(s3, spark, model_uris, trino):
    from infer.main import main as infer

    s3.create_bucket(BUCKET)
    packed = hand_packed(BUCKET)
    flags = ["--iceberg-table", f"{DB}.{TABLE}"]
    assert infer(infer_args(packed["manifest"], model_uris, WAREHOUSE, "--run-id", "ia", *flags)) == 0
    model_b = upload_model(f"s3://{BUCKET}/model-b/", seed=1)
    shard = read_manifest(packed["manifest"]).entries[1].uri
    saved = storage.read_bytes(shard)
    storage.write_bytes(shard, b"damaged")
    args_b = infer_args(packed["manifest"], model_b, WAREHOUSE, "--run-id", "ib", *flags)
    try:
        assert infer(args_b) == 1
    finally:
        storage.write_bytes(shard, saved)
    assert infer(args_b + ["--only-failed"]) == 0
    snapshots = [s.snapshot_id for s in table().snapshots()]
    assert len(snapshots) == 3
    return {**packed, "snapshots": snapshots, "args_a": infer_args(packed["manifest"], model_uris, WAREHOUSE,
                                                                    "--run-id", "ia", *flags)}


COLUMNS = "key, run_id, shard_id, record, status, top1_class_id, top1_label, top1_prob, inferred_at"


def as_tuples(rows: list[dict]) -> Counter:
    return Counter((r["key"], r["run_id"], r["shard_id"], r["record"], r["status"], r["top1_class_id"], r["top1_label"],
                    r["top1_prob"], utc(r["inferred_at"])) for r in rows)


def test_trino_reads_every_row_as_written(ice_lake, trino):
    got = q(trino, f"SELECT {COLUMNS} FROM {TABLE}")
    assert Counter(tuple(r[:-1]) + (utc(r[-1]),) for r in got) == as_tuples(rows_at())
    assert len(got) == 2 * ice_lake["images"]
    # microseconds survive: Trino's timestamp(6) with time zone is what infer wrote
    (typ,) = q(trino, f"SELECT typeof(inferred_at) FROM {TABLE} LIMIT 1")[0]
    assert typ == "timestamp(6) with time zone"


def test_run_overview_label_counts_and_compare_runs(ice_lake, trino):
    rows = rows_at()
    overview = q(trino, fill("run_overview"))
    expected = []
    for run in ("ia", "ib"):
        mine = [r for r in rows if r["run_id"] == run]
        expected.append((run, len(mine), sum(r["status"] != "ok" for r in mine), min(r["model"] for r in mine),
                         max(utc(r["inferred_at"]) for r in mine)))
    assert [tuple(r[:4]) + (utc(r[4]),) for r in overview] == expected
    labels = Counter(r["top1_label"] for r in rows if r["run_id"] == "ia" and r["status"] == "ok")
    assert q(trino, fill("label_counts", RUN_ID="ia")) == sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))
    a = {r["key"]: r for r in rows if r["run_id"] == "ia" and r["status"] == "ok"}
    b = {r["key"]: r for r in rows if r["run_id"] == "ib" and r["status"] == "ok"}
    differ = sorted((k, a[k]["top1_label"], b[k]["top1_label"]) for k in a.keys() & b.keys()
                    if a[k]["top1_class_id"] != b[k]["top1_class_id"])
    assert [tuple(r) for r in q(trino, fill("compare_runs", RUN_A="ia", RUN_B="ib"))] == differ and differ


def test_each_invocation_is_a_snapshot_and_time_travel_reads_it(ice_lake, trino):
    s = ice_lake["snapshots"]
    first_b = [r for r in rows_at(s[1]) if r["run_id"] == "ib"]
    assert q(trino, fill("snapshots")) == [
        (s[0], "append", "ia", ice_lake["images"], 0),
        (s[1], "append", "ib", len(first_b), 1),
        (s[2], "append", "ib", ice_lake["images"] - len(first_b), 0)]
    for snap in s:
        expected = sorted(Counter(r["run_id"] for r in rows_at(snap)).items())
        assert q(trino, fill("version_as_of", SNAPSHOT_ID=str(snap))) == expected
    assert 0 < len(first_b) < ice_lake["images"]  # the failed shard's rows were not there yet


def test_latest_prediction_per_key_by_merge(ice_lake, trino):
    q(trino, fill("latest_table", LOCATION=f"s3://{BUCKET}/latest"))
    for run in ("ia", "ib"):
        q(trino, fill("merge_latest", RUN_ID=run))
    latest: dict = {}
    for r in rows_at():
        if r["status"] == "ok" and (r["key"] not in latest or r["inferred_at"] > latest[r["key"]]["inferred_at"]):
            latest[r["key"]] = r
    got = q(trino, "SELECT key, run_id, top1_label, top1_prob, inferred_at FROM latest_predictions")
    assert sorted(tuple(r[:4]) + (utc(r[4]),) for r in got) == sorted(
        (k, r["run_id"], r["top1_label"], r["top1_prob"], utc(r["inferred_at"])) for k, r in latest.items())
    assert {r[1] for r in got} == {"ib"}  # run B came later: every key's latest


def test_compact_rerun_delete_and_expire(ice_lake, trino, capsys):
    """Day two: compaction keeps the rows (and a rerun of the run adds nothing after it); python -m infer.delete
    drops run B in one snapshot; expiring snapshots deletes the files no snapshot needs any more."""
    from infer.delete import main as delete
    from infer.main import main as infer

    before = as_tuples(rows_at())

    def files(run: str) -> int:
        return q(trino, f'SELECT count(*) FROM "{TABLE}$files" WHERE partition.run_id = \'{run}\'')[0][0]

    assert files("ia") == 3
    q(trino, fill("optimize", RUN_ID="ia"))
    assert files("ia") == 1 and as_tuples(rows_at()) == before
    originals = [f"{WAREHOUSE}{DB}.db/{TABLE}/data/run_id=ia/part-{i:05d}.parquet" for i in range(3)]
    snapshots = len(table().snapshots())
    assert infer(ice_lake["args_a"]) == 0  # its shards are in the table (the ledger), whatever files hold them now
    assert "running 0 shards" in capsys.readouterr().out and len(table().snapshots()) == snapshots
    assert delete(["--output", WAREHOUSE, "--run-id", "ib", "--iceberg-table", f"{DB}.{TABLE}", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"deleting run_id=ib from the Iceberg table {DB}.{TABLE}: 3 files, {ice_lake['images']} rows" in out
    assert q(trino, f"SELECT run_id, count(*) FROM {TABLE} GROUP BY run_id") == [("ia", ice_lake["images"])]
    (op,) = q(trino, f'SELECT operation FROM "{TABLE}$snapshots" ORDER BY committed_at DESC LIMIT 1')[0]
    assert op == "delete"
    assert not list(storage.list_objects(f"{WAREHOUSE}_runs/ib/"))
    ib_files = [f"{WAREHOUSE}{DB}.db/{TABLE}/data/run_id=ib/part-{i:05d}.parquet" for i in range(3)]
    assert all(storage.exists(u) for u in originals + ib_files)  # time travel still reaches them
    q(trino, fill("expire_snapshots").replace("'7d'", "'0s'"))
    assert q(trino, f'SELECT count(*) FROM "{TABLE}$snapshots"') == [(1,)]
    assert as_tuples(rows_at()) == Counter({k: n for k, n in before.items() if k[1] == "ia"})
    # the files the expired snapshots dropped are deleted (run A's, compacted away); run B's were dropped by the
    # snapshot that is current, and go when a later commit lets it expire in turn
    assert not any(storage.exists(u) for u in originals) and all(storage.exists(u) for u in ib_files)


def test_every_documented_statement_is_run_here():
    """Every statement of docs/iceberg-queries.sql is filled in by a test above (read from this file's source)."""
    import re

    with open(__file__) as f:
        here = set(re.findall(r'fill\("([a-z_]+)"', f.read()))
    assert set(statements()) == here, set(statements()) ^ here
