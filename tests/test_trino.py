"""Athena's engine for real: Trino 476 (Athena engine v3 is Trino) over the Glue catalog and S3 of the local
server, running every query of docs/athena-queries.sql on real infer output.

The path is the documented one: infer through spark-submit with ``--glue-database/--glue-table`` and
``--output-layer`` registers the table and the run; a second model's run fails on a damaged shard (its
failed shard is what the status table answers), is fixed and rerun with ``--only-failed``; prepare's
manifest and skipped tables, the status table and the partition-projection table are created in Glue by
``python -m infer.athena --glue-database``.  Trino only queries.  Every answer is compared with the same
question answered in Python over pyarrow's reading of the same Parquet files.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter, defaultdict

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from common import athena, glue, storage
from testkit.localdev import upload_cifar_like
from tests.helpers import athena_queries, hand_packed, infer_args, output_rows, read_manifest, submit, upload_model

pytestmark = [pytest.mark.trino, pytest.mark.spark]
BUCKET = "lake"
OUT = f"s3://{BUCKET}/pred/"
DB = "shardinfer_lake"


queries = athena_queries


def fill(sql: str, **values: str) -> str:
    """The documented placeholders ('RUN_ID', 'KEY', ...) replaced by values."""
    for placeholder, value in values.items():
        sql = sql.replace(f"'{placeholder}'", f"'{value}'")
    return sql


def status_rows(run_id: str) -> list[dict]:
    """Every status record of a run, read with pyarrow."""
    rows = []
    for o in storage.list_objects(f"{OUT}_runs/{run_id}/status/"):
        rows += pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/{o.key}"))).to_pylist()
    return rows


def failed_shards(rows: list[dict]) -> list[tuple]:
    """docs' failed_shards in Python: each shard's latest status; those not ok, with error, host, time."""
    latest = {}
    for r in rows:
        if r["shard_id"] not in latest or r["t_end"] > latest[r["shard_id"]]["t_end"]:
            latest[r["shard_id"]] = r
    return [(s, r["error"], r["host"], r["t_end"]) for s, r in sorted(latest.items()) if r["status"] != "ok"]


def naive(t):
    """A timestamp without its zone (Trino's timestamp(3) arrives naive, in UTC here)."""
    return t.replace(tzinfo=None) if t is not None and t.tzinfo else t


@pytest.fixture(scope="module")
def lake(s3, spark, model_uris, trino):
    """The documented path with the Glue catalog, and what Trino answered while a run had a failed shard."""
    from infer.athena import main as athena_main
    from infer.main import main as infer
    from prepare.main import main as prepare

    s3.create_bucket(BUCKET)
    packed = hand_packed(BUCKET)
    glue_flags = ["--glue-database", DB, "--glue-table", "predictions"]
    # run A: the README's spark-submit line, with the Glue table and the embedding column
    r = submit("infer/main.py", infer_args(packed["manifest"], model_uris, OUT, "--run-id", "ra", *glue_flags,
                                           "--output-layer", "flatten0_output"), s3.env)
    assert r.returncode == 0, r.stderr[-3000:]
    # run B: another model; its shard 1 is damaged, so the run fails and is not registered ...
    model_b = upload_model(f"s3://{BUCKET}/model-b/", seed=1)
    shard = read_manifest(packed["manifest"]).entries[1].uri
    saved = storage.read_bytes(shard)
    storage.write_bytes(shard, b"damaged")
    args_b = infer_args(packed["manifest"], model_b, OUT, "--run-id", "rb", *glue_flags)
    assert infer(args_b) == 1
    # prepare's tables: a folder with images, two text files and an undecodable PNG
    upload_cifar_like(f"s3://{BUCKET}/raw/", 9, seed=7)
    storage.write_bytes(f"s3://{BUCKET}/raw/notes.txt", b"not an image")
    storage.write_bytes(f"s3://{BUCKET}/raw/README.txt", b"not an image either")
    storage.write_bytes(f"s3://{BUCKET}/raw/broken.png", b"\x89PNG\r\n\x1a\n broken")
    assert prepare(["--input", f"s3://{BUCKET}/raw/", "--output", f"s3://{BUCKET}/raw-shards/", "--batch", "4"]) == 0
    # the other tables, created in Glue as their Athena DDL describes them
    assert athena_main(["--output", OUT, "--status", "--manifest-output", f"s3://{BUCKET}/raw-shards/",
                        "--glue-database", DB]) == 0
    assert athena_main(["--output", OUT, "--projection", "--table", "predictions_projected",
                        "--glue-database", DB]) == 0
    # ... what Trino says of the failed run now (from the status table), then the fix and the rerun
    while_failed = trino.query(fill(queries()["failed_shards"], RUN_ID="rb"), schema=DB)
    status_while_failed = status_rows("rb")
    storage.write_bytes(shard, saved)
    assert infer(args_b + ["--only-failed"]) == 0
    rows = [dict(r, run_id=run) for run in ("ra", "rb") for r in output_rows(OUT, run)]  # run_id: in the path
    assert len(rows) == 2 * packed["images"]
    return {**packed, "rows": rows, "while_failed": while_failed, "status_while_failed": status_while_failed}


def q(trino, name: str, **values: str) -> list[tuple]:
    """A documented query, filled in, run by Trino in the lake's database."""
    return trino.query(fill(queries()[name], **values), schema=DB)


def ok(rows: list[dict], run_id: str = None) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and (run_id is None or r["run_id"] == run_id)]


def test_glue_tables_are_what_the_printed_ddl_describes(lake):
    """Every table in Glue (predictions by infer, the rest by infer.athena) against its printed DDL, parsed."""
    client = boto3.client("glue")
    printed = {
        "predictions": athena.create_predictions_table(OUT),
        "predictions_projected": athena.create_predictions_table(OUT, "predictions_projected", projection=True),
        "shardinfer_status": athena.create_status_table(OUT),
        "manifest": athena.create_manifest_table(f"s3://{BUCKET}/raw-shards/"),
        "skipped": athena.create_manifest_table(f"s3://{BUCKET}/raw-shards/", "skipped", skipped=True),
    }
    assert sorted(t["Name"] for t in client.get_tables(DatabaseName=DB)["TableList"]) == sorted(printed)
    for name, ddl in printed.items():
        tree = sqlglot.parse_one(ddl, read="athena")
        props = tree.args["properties"].expressions
        table = client.get_table(DatabaseName=DB, Name=name)["Table"]
        sd = table["StorageDescriptor"]
        cols = [(c.name, re.sub(r"\s", "", c.args["kind"].sql(dialect="hive").lower())) for c in tree.this.expressions]
        assert [(c["Name"], c["Type"]) for c in sd["Columns"]] == cols, name
        part = [p for p in props if isinstance(p, exp.PartitionedByProperty)]
        keys = [(c.name, "string") for c in part[0].this.expressions] if part else []
        assert [(k["Name"], k["Type"]) for k in table.get("PartitionKeys", [])] == keys, name
        assert sd["Location"] == next(p for p in props if isinstance(p, exp.LocationProperty)).this.name
        fmt = next(p for p in props if isinstance(p, exp.FileFormatProperty)).this
        if isinstance(fmt, exp.InputOutputFormat):  # ROW FORMAT SERDE ... STORED AS INPUTFORMAT ... OUTPUTFORMAT
            assert (sd["InputFormat"], sd["OutputFormat"]) == (fmt.args["input_format"].name,
                                                                fmt.args["output_format"].name)
            serde = next(p for p in props if isinstance(p, exp.RowFormatSerdeProperty)).this.name
        else:  # STORED AS PARQUET
            assert fmt.name.upper() == "PARQUET" and sd["InputFormat"] == athena.PARQUET_INPUT
            serde = athena.PARQUET_SERDE
        assert sd["SerdeInfo"]["SerializationLibrary"] == serde
        tblprops = {p.this.name: p.args["value"].name for p in props if type(p) is exp.Property}
        assert tblprops.items() <= table["Parameters"].items(), name
    # and creating them again finds them as they are
    assert glue.ensure(athena.status_table(OUT, database=DB)) == "exists"


def test_trino_reads_the_table_and_each_registered_run(lake, trino):
    assert trino.query(f'SELECT run_id FROM "{DB}"."predictions$partitions" ORDER BY run_id') == [("ra",), ("rb",)]
    got = trino.query("SELECT run_id, key, shard_id, record, status, top1_class_id, top1_label, top1_prob "
                      "FROM predictions", schema=DB)
    want = [(r["run_id"], r["key"], r["shard_id"], r["record"], r["status"], r["top1_class_id"], r["top1_label"],
             r["top1_prob"]) for r in lake["rows"]]
    assert sorted(got, key=repr) == sorted(want, key=repr) and len(got) == 2 * lake["images"]
    # every file Trino read is under the run's partition folder
    paths = trino.query('SELECT DISTINCT "$path" FROM predictions', schema=DB)
    assert {re.sub(r"/part-\d{5}\.parquet$", "/", p) for (p,) in paths} == {f"{OUT}run_id=ra/", f"{OUT}run_id=rb/"}


def test_every_documented_query_is_run_here():
    assert set(queries()) == {"label_counts", "low_confidence", "error_rows", "compare_runs", "agreement",
                              "unnest_top_k", "run_overview", "failed_shards", "latest_per_key", "similar_images"}


def test_label_counts(lake, trino):
    want = Counter((r["run_id"], r["top1_label"]) for r in ok(lake["rows"]))
    got = q(trino, "label_counts")
    assert {(run, label): n for run, label, n in got} == want
    assert got == sorted(got, key=lambda r: (r[0], -r[2], r[1]))


def test_low_confidence(lake, trino):
    want = sorted(((r["top1_prob"], r["key"]), r["top1_label"]) for r in ok(lake["rows"], "ra") if r["top1_prob"] < 0.3)
    assert want, "the test model should be unsure of some images"
    assert q(trino, "low_confidence", RUN_ID="ra") == [(k, label, p) for (p, k), label in want]


def test_error_rows(lake, trino):
    want = sorted((r["run_id"], r["key"], r["shard_id"], r["record"], r["status"]) for r in lake["rows"]
                  if r["status"] != "ok")
    assert [w[1] for w in want] == [lake["bad_key"]] * 2
    assert q(trino, "error_rows") == want


def test_compare_runs_and_agreement(lake, trino):
    a = {r["key"]: r for r in ok(lake["rows"], "ra")}
    b = {r["key"]: r for r in ok(lake["rows"], "rb")}
    differ = sorted(k for k in a if k in b and a[k]["top1_class_id"] != b[k]["top1_class_id"])
    assert differ, "two different models should disagree somewhere"
    assert q(trino, "compare_runs", RUN_A="ra", RUN_B="rb") == [
        (k, a[k]["top1_label"], a[k]["top1_prob"], b[k]["top1_label"], b[k]["top1_prob"]) for k in differ]
    images, same, mean_change = q(trino, "agreement", RUN_A="ra", RUN_B="rb")[0]
    both = [k for k in a if k in b]
    assert (images, same) == (len(both), len(both) - len(differ))
    assert math.isclose(mean_change, np.mean([abs(a[k]["top1_prob"] - b[k]["top1_prob"]) for k in both]),
                        rel_tol=1e-12)


def test_unnest_top_k(lake, trino):
    want = [(r["key"], i + 1, t["class_id"], t["label"], t["prob"]) for r in sorted(ok(lake["rows"], "ra"),
                                                                                    key=lambda r: r["key"])
            for i, t in enumerate(r["top_k"])]
    assert len(want) == 5 * (lake["images"] - 1)
    assert q(trino, "unnest_top_k", RUN_ID="ra") == want


def test_run_overview(lake, trino):
    per = defaultdict(list)
    for r in lake["rows"]:
        per[(r["run_id"], r["model"], r["manifest_id"])].append(r)
    want = [(run, model, manifest, len(rs), sum(r["status"] != "ok" for r in rs),
             naive(min(r["inferred_at"] for r in rs)), naive(max(r["inferred_at"] for r in rs)))
            for (run, model, manifest), rs in sorted(per.items())]
    assert q(trino, "run_overview") == want and len(want) == 2


def test_failed_shards_while_a_run_failed_and_after_its_rerun(lake, trino):
    want = [(s, e, h, naive(t)) for s, e, h, t in failed_shards(lake["status_while_failed"])]
    assert [w[0] for w in want] == [1] and "content does not match the manifest" in want[0][1]
    assert lake["while_failed"] == want
    assert failed_shards(status_rows("rb")) == [] and q(trino, "failed_shards", RUN_ID="rb") == []
    # the status table keeps both invocations: shard 1 failed, then ok
    got = trino.query("SELECT shard_id, status FROM shardinfer_status WHERE run_id = 'rb' ORDER BY t_end, shard_id",
                      schema=DB)
    want_all = sorted(status_rows("rb"), key=lambda r: (r["t_end"], r["shard_id"]))
    assert got == [(r["shard_id"], r["status"]) for r in want_all]
    assert [s for s, st in got].count(1) == 2


def test_latest_per_key(lake, trino):
    latest: dict = {}
    for r in ok(lake["rows"]):
        if r["key"] not in latest or r["inferred_at"] > latest[r["key"]]["inferred_at"]:
            latest[r["key"]] = r
    want = [(k, r["run_id"], r["top1_label"], r["top1_prob"], naive(r["inferred_at"])) for k, r in sorted(latest.items())]
    got = q(trino, "latest_per_key")
    assert got == want and len(got) == lake["images"] - 1


def test_similar_images_by_cosine_of_embeddings(lake, trino):
    rows = {r["key"]: r for r in ok(lake["rows"], "ra")}
    key = sorted(rows)[7]
    e = {k: np.asarray(r["embedding"], dtype=np.float64) for k, r in rows.items()}
    assert len(e[key]) == 512  # ResNet-18's flatten0_output
    cos = {k: float(v @ e[key] / math.sqrt((v @ v) * (e[key] @ e[key]))) for k, v in e.items() if k != key}
    want = sorted(cos, key=lambda k: (-cos[k], k))[:10]
    got = q(trino, "similar_images", RUN_ID="ra", KEY=key)
    assert [g[0] for g in got] == want
    for k, label, c in got:  # the products x * y are REAL (float) in SQL, the sums double
        assert label == rows[k]["top1_label"] and math.isclose(c, cos[k], rel_tol=1e-6)


def test_projection_table_answers_a_run_without_registration(lake, trino):
    sql = "SELECT key, top1_class_id, top1_prob FROM {} WHERE run_id = 'rb' ORDER BY key"
    got = trino.query(sql.format("predictions_projected"), schema=DB)
    assert got == trino.query(sql.format("predictions"), schema=DB)
    assert got == sorted((r["key"], r["top1_class_id"], r["top1_prob"]) for r in lake["rows"] if r["run_id"] == "rb")
    # Athena's rule for an injected key: the query must name the run
    with pytest.raises(Exception, match="run_id"):
        trino.query("SELECT count(*) FROM predictions_projected", schema=DB)


def test_manifest_and_skipped_tables(lake, trino):
    manifest = read_manifest(f"s3://{BUCKET}/raw-shards/manifest.parquet")
    got = trino.query("SELECT shard_id, uri, num_records, num_bytes, sha256, keys FROM manifest ORDER BY shard_id",
                      schema=DB)
    assert got == [(e.shard_id, e.uri, e.num_records, e.num_bytes, e.sha256, list(e.keys)) for e in manifest.entries]
    skipped = pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/raw-shards/skipped.parquet"))).to_pylist()
    want = sorted((r["key"], r["reason"]) for r in skipped)
    assert [k for k, _ in want] == ["raw/README.txt", "raw/broken.png", "raw/notes.txt"]
    assert trino.query("SELECT key, reason FROM skipped ORDER BY key", schema=DB) == want


def test_after_compact_the_same_query_reads_the_compacted_files(lake, trino):
    from infer.compact import main as compact

    sql = fill(queries()["unnest_top_k"], RUN_ID="ra")
    before = trino.query(sql, schema=DB)
    target = f"s3://{BUCKET}/compacted/"
    assert compact(["--input", OUT, "--run-id", "ra", "--output", target, "--target-size", "128MiB",
                    "--glue-database", DB, "--glue-table", "predictions"]) == 0
    paths = trino.query("SELECT DISTINCT \"$path\" FROM predictions WHERE run_id = 'ra'", schema=DB)
    assert paths == [(f"{target}run_id=ra/part-00000.parquet",)]
    assert trino.query(sql, schema=DB) == before
