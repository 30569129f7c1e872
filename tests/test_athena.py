"""Athena: DDL parsed with sqlglot, example queries run on real output in DuckDB, file rules, compaction."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter

import boto3
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from common import athena, glue, storage
from common.manifest import ShardEntry, write_manifest
from common.output import PREDICTION_SCHEMA
from common.shard import pack_shard
from testkit.testdata import cifar_like_png
from tests.helpers import athena_queries, hand_packed, infer_args, output_rows, upload_model

pytestmark = pytest.mark.once  # SQL and DDL over the output files: the same on either Spark line

BUCKET = "athena"
OUT = f"s3://{BUCKET}/pred/"


@pytest.fixture(scope="module")
def two_runs(s3, spark, model_uris):
    """One manifest (64 + 64 + 21 images, one of them truncated) run with two different models."""
    from infer.main import main

    s3.create_bucket(BUCKET)
    packed = hand_packed(BUCKET)
    model_b = upload_model(f"s3://{BUCKET}/model-b/", seed=1)
    assert main(infer_args(f"s3://{BUCKET}/shards/manifest.parquet", model_uris, OUT, "--run-id", "ra")) == 0
    assert main(infer_args(f"s3://{BUCKET}/shards/manifest.parquet", model_b, OUT, "--run-id", "rb")) == 0
    return packed


def _parse(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="athena")


def _columns(create: exp.Create) -> dict[str, str]:
    return {c.name: c.args["kind"].sql(dialect="hive").lower() for c in create.this.expressions}


def test_create_table_parses_with_the_design_schema():
    tree = _parse(athena.create_predictions_table("s3://b/predictions/", "predictions", "analytics"))
    assert isinstance(tree, exp.Create) and tree.kind == "TABLE"
    assert tree.this.this.name == "predictions" and tree.this.this.db == "analytics"
    cols = _columns(tree)
    assert list(cols) == PREDICTION_SCHEMA.names
    assert cols["key"] == "string" and cols["shard_id"] == "int" and cols["top1_prob"] == "double"
    assert cols["inferred_at"] == "timestamp"
    assert re.sub(r"\s", "", cols["top_k"]) == "array<struct<class_id:int,label:string,prob:double>>"
    props = tree.args["properties"].expressions
    assert any(isinstance(p, exp.ExternalProperty) for p in props)
    part = next(p for p in props if isinstance(p, exp.PartitionedByProperty))
    assert [(c.name, c.args["kind"].sql(dialect="hive").lower()) for c in part.this.expressions] == [("run_id", "string")]
    assert next(p for p in props if isinstance(p, exp.FileFormatProperty)).this.name.upper() == "PARQUET"
    assert next(p for p in props if isinstance(p, exp.LocationProperty)).this.name == "s3://b/predictions/"


def test_projection_variant_parses():
    tree = _parse(athena.create_predictions_table("s3://b/predictions", projection=True))
    props = {p.this.name: p.args["value"].name for p in tree.args["properties"].expressions
             if type(p) is exp.Property}
    assert props["projection.enabled"] == "true" and props["projection.run_id.type"] == "injected"
    assert props["storage.location.template"] == "s3://b/predictions/run_id=${run_id}/"


def test_add_partition_parses():
    tree = _parse(athena.add_partition("s3://b/predictions/", "m1-resnet-18-abc", "predictions"))
    assert isinstance(tree, exp.Alter) and tree.this.name == "predictions"
    action = tree.args["actions"][0]
    assert isinstance(action, exp.AddPartition) and action.args["exists"]
    eq = action.this.expressions[0]
    assert (eq.this.name, eq.expression.name) == ("run_id", "m1-resnet-18-abc")
    assert action.args["location"].this.name == "s3://b/predictions/run_id=m1-resnet-18-abc/"


def test_manifest_tables_parse():
    for skipped in (False, True):
        tree = _parse(athena.create_manifest_table("s3://b/shards/x/", skipped=skipped))
        cols = _columns(tree)
        assert list(cols) == (["key", "reason"] if skipped else
                              ["shard_id", "uri", "num_records", "num_bytes", "sha256", "keys", "originals"])
        if not skipped:  # format 3's originals; a format-2 part has no such column, and Athena reads it as null
            assert cols["originals"].replace(" ", "") == (
                "array<struct<width:int,height:int,num_bytes:bigint,sha256:string>>"), cols["originals"]
        fmt = next(p for p in tree.args["properties"].expressions if isinstance(p, exp.FileFormatProperty))
        loc = next(p for p in tree.args["properties"].expressions if isinstance(p, exp.LocationProperty))
        if skipped:  # beside the shards: read through a symlink file naming exactly skipped.parquet
            assert fmt.this.args["input_format"].name == "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
            assert loc.this.name == "s3://b/shards/x/_athena/skipped/"
        else:  # formats 2 and 3: the part files have a folder of their own
            assert fmt.this.name.upper() == "PARQUET" and loc.this.name == "s3://b/shards/x/manifest/"


def test_status_table_parses_and_its_failed_shards_query_runs_on_real_status_files(s3, spark, model_uris):
    from infer.main import main

    tree = _parse(athena.create_status_table("s3://b/pred/"))
    from common.status import STATUS_SCHEMA

    assert list(_columns(tree)) == STATUS_SCHEMA.names
    props = {p.this.name: p.args["value"].name for p in tree.args["properties"].expressions if type(p) is exp.Property}
    assert props["storage.location.template"] == "s3://b/pred/_runs/${run_id}/status/"
    # a run of two shards where shard 1 is damaged; then a second invocation that fixes nothing
    bucket = "statusq"
    s3.create_bucket(bucket)
    entries = []
    for shard_id in range(2):
        data = pack_shard([cifar_like_png(i, seed=3) for i in range(3)])
        uri = f"s3://{bucket}/s/shards/shard-{shard_id:05d}.rec"
        storage.write_bytes(uri, data if shard_id == 0 else b"damaged")
        entries.append(ShardEntry(shard_id, uri, 3, len(data), hashlib.sha256(data).hexdigest(),
                                  tuple(f"in/{shard_id}-{i}.png" for i in range(3))))
    write_manifest(entries, f"s3://{bucket}/s/", f"s3://{bucket}/in/", 64)
    args = infer_args(f"s3://{bucket}/s/manifest.parquet", model_uris, f"s3://{bucket}/pred/", "--run-id", "q")
    assert main(args) == 1
    assert main(args + ["--only-failed"]) == 1
    files = [o.key for o in storage.list_objects(f"s3://{bucket}/pred/_runs/q/status/")]
    assert len(files) == 2
    table = pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{bucket}/{k}"))) for k in files])
    con = duckdb.connect()
    con.register("shardinfer_status", table.append_column("run_id", pa.array(["q"] * table.num_rows)))
    sql = _queries()["failed_shards"].replace("'RUN_ID'", "'q'")
    rows = con.sql(sqlglot.transpile(sql, read="athena", write="duckdb")[0]).fetchall()
    assert [(r[0], "content does not match the manifest" in r[1]) for r in rows] == [(1, True)]


def test_cli_prints_every_statement_and_each_parses(capsys):
    from infer.athena import main

    assert main(["--output", "s3://b/p/", "--run-id", "r1", "--manifest-output", "s3://b/s/"]) == 0
    statements = [s for s in capsys.readouterr().out.split(";") if s.strip()]
    trees = [_parse(s) for s in statements]
    assert [type(t).__name__ for t in trees] == ["Create", "Alter", "Create", "Create"]
    assert main(["--output", "s3://b/p/", "--status"]) == 0
    assert "'s3://b/p/_runs/${run_id}/status/'" in capsys.readouterr().out


def test_infer_leaves_athena_sql_for_a_complete_run(two_runs):
    sql = storage.read_bytes(f"{OUT}_runs/ra/athena.sql").decode()
    trees = [_parse(s) for s in sql.split(";") if s.strip() and not all(
        ln.startswith("--") for ln in s.strip().splitlines())]
    assert [type(t).__name__ for t in trees] == ["Create", "Alter", "Create"]
    assert "PARTITION (`run_id` = 'ra')" in sql


def test_a_run_with_failed_shards_gets_no_athena_sql(s3, spark, model_uris):
    from infer.main import main

    write_manifest([ShardEntry(0, f"s3://{BUCKET}/broken/none.rec", 1, 10, "0" * 64, ("x.png",))],
                   f"s3://{BUCKET}/broken/", "s3://x/", 64)
    assert main(infer_args(f"s3://{BUCKET}/broken/manifest.parquet", model_uris, OUT, "--run-id", "rbroken")) == 1
    assert not storage.exists(f"{OUT}_runs/rbroken/athena.sql")


def test_symlink_file_points_at_skipped_and_the_manifest_table_at_the_parts(prepared):
    text = storage.read_bytes(athena.symlink_location(prepared["output"], "skipped") + "symlink.txt").decode()
    assert text.strip() == prepared["skipped"]
    parts = [o.key for o in storage.list_objects(prepared["output"] + "manifest/")]
    assert parts and all(re.search(r"/manifest/part-\d{5}\.parquet$", k) for k in parts)
    assert f"LOCATION '{prepared['output']}manifest/'" in athena.create_manifest_table(prepared["output"])


def _walk_types(t: pa.DataType):
    yield t
    if pa.types.is_list(t):
        yield from _walk_types(t.value_type)
    if pa.types.is_struct(t):
        for f in t:
            yield from _walk_types(f.type)


def test_every_output_file_follows_athena_rules(two_runs):
    objects = list(storage.list_objects(OUT))
    table_files = [o for o in objects if not o.key.startswith("pred/_runs/")]
    assert table_files
    for o in table_files:
        assert re.fullmatch(r"pred/run_id=[A-Za-z0-9._-]+/part-\d{5}\.parquet", o.key), o.key
        assert o.size > 0
        data = storage.read_bytes(f"s3://{BUCKET}/{o.key}")
        f = pq.ParquetFile(io.BytesIO(data))
        schema = f.schema_arrow
        for field in schema:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", field.name)
            for t in _walk_types(field.type):
                assert not pa.types.is_unsigned_integer(t), (field.name, t)
        assert "run_id" not in schema.names  # only in the path
        ts = next(f.schema.column(i) for i in range(len(f.schema)) if f.schema.column(i).path == "inferred_at")
        assert ts.physical_type == "INT64"
        assert ts.logical_type.to_json() == '{"Type": "Timestamp", "isAdjustedToUTC": true, "timeUnit": "milliseconds", "is_from_converted_type": false, "force_set_converted_type": false}'
        meta = f.metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(rg).column(c).compression in ("ZSTD", "SNAPPY")


@pytest.fixture(scope="module")
def duck(s3, two_runs):
    """The output read as Athena would (Hive partitions, run_id a string, _ and . files skipped), in DuckDB."""
    fs = pafs.S3FileSystem(endpoint_override=s3.endpoint_url, scheme="http", region="us-east-1",
                           access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    dataset = ds.dataset(f"{BUCKET}/pred", filesystem=fs, format="parquet",
                         partitioning=ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive"))
    table = dataset.to_table()
    con = duckdb.connect()
    con.register("predictions", table)
    return con, table


_queries = athena_queries


def _run(con, name: str, **runs: str) -> list[tuple]:
    sql = _queries()[name]
    for placeholder, value in runs.items():
        sql = sql.replace(f"'{placeholder}'", f"'{value}'")
    return con.sql(sqlglot.transpile(sql, read="athena", write="duckdb")[0]).fetchall()


def test_example_queries_are_all_checked():
    # similar_images runs in Trino only (tests/test_trino.py): DuckDB has no zip_with
    assert set(_queries()) == {"label_counts", "low_confidence", "error_rows", "compare_runs", "agreement",
                               "unnest_top_k", "run_overview", "failed_shards", "latest_per_key", "similar_images"}
    for sql in _queries().values():
        _parse(sql)  # valid Athena syntax


def test_query_label_counts(duck, two_runs):
    con, table = duck
    rows = _run(con, "label_counts")
    per_run = Counter()
    for run_id, _, n in rows:
        per_run[run_id] += n
    ok = Counter(r["run_id"] for r in table.to_pylist() if r["status"] == "ok")
    assert per_run == ok == {"ra": two_runs["images"] - 1, "rb": two_runs["images"] - 1}


def test_query_low_confidence(duck):
    con, table = duck
    rows = _run(con, "low_confidence", RUN_ID="ra")
    expected = sorted((r["top1_prob"], r["key"]) for r in table.to_pylist()
                      if r["run_id"] == "ra" and r["status"] == "ok" and r["top1_prob"] < 0.3)
    assert [(p, k) for k, _, p in rows] == expected and expected


def test_query_error_rows(duck, two_runs):
    con, _ = duck
    rows = _run(con, "error_rows")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("ra", two_runs["bad_key"], 2, 5), ("rb", two_runs["bad_key"], 2, 5)]
    assert all("undecodable PNG" in r[4] for r in rows)


def test_query_compare_runs_and_agreement(duck, two_runs):
    con, table = duck
    by_run = {run: {r["key"]: r for r in table.to_pylist() if r["run_id"] == run and r["status"] == "ok"}
              for run in ("ra", "rb")}
    differ = sorted(k for k in by_run["ra"] if by_run["ra"][k]["top1_class_id"] != by_run["rb"][k]["top1_class_id"])
    assert differ, "two different models should disagree somewhere"
    assert [r[0] for r in _run(con, "compare_runs", RUN_A="ra", RUN_B="rb")] == differ
    images, same, _ = _run(con, "agreement", RUN_A="ra", RUN_B="rb")[0]
    assert images == two_runs["images"] - 1 and same == images - len(differ)


def test_query_unnest_top_k(duck, two_runs):
    con, table = duck
    rows = _run(con, "unnest_top_k", RUN_ID="ra")
    assert len(rows) == 5 * (two_runs["images"] - 1)
    src = {r["key"]: r["top_k"] for r in table.to_pylist() if r["run_id"] == "ra"}
    for key, rank, class_id, label, prob in rows:
        assert src[key][rank - 1] == {"class_id": class_id, "label": label, "prob": prob}


def test_query_run_overview(duck, two_runs):
    con, _ = duck
    rows = _run(con, "run_overview")
    assert [(r[0], r[3], r[4]) for r in rows] == [("ra", two_runs["images"], 1), ("rb", two_runs["images"], 1)]
    assert rows[0][1] != rows[1][1]  # two models


def test_query_latest_per_key(duck, two_runs):
    con, table = duck
    rows = _run(con, "latest_per_key")
    latest: dict = {}  # the same, computed with pyarrow's rows in Python
    for r in table.to_pylist():
        if r["status"] == "ok" and (r["key"] not in latest or r["inferred_at"] > latest[r["key"]]["inferred_at"]):
            latest[r["key"]] = r
    assert [r[0] for r in rows] == sorted(latest) and len(rows) == two_runs["images"] - 1  # one undecodable
    for key, run_id, label, prob, _ in rows:
        assert (run_id, label, prob) == (latest[key]["run_id"], latest[key]["top1_label"], latest[key]["top1_prob"])
    assert {r[1] for r in rows} == {"rb"}  # the later run


def _rows_multiset(rows: list[dict]) -> Counter:
    return Counter(tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows)


def test_compaction_same_rows_fewer_files_and_rerun_replaces(spark, two_runs, capsys):
    from infer.compact import main

    before = output_rows(OUT, "ra")
    target = f"s3://{BUCKET}/compacted/"
    sizes = [o.size for o in storage.list_objects(f"{OUT}run_id=ra/")]
    assert main(["--input", OUT, "--run-id", "ra", "--output", target, "--target-size", str(max(sizes))]) == 0
    printed = capsys.readouterr().out
    first = sorted(o.key for o in storage.list_objects(f"{target}run_id=ra/"))
    assert len(first) >= 2
    assert _rows_multiset(output_rows(target, "ra")) == _rows_multiset(before)
    ddl = printed.split("Athena statements for the compacted table:", 1)[1]
    trees = [_parse(s) for s in ddl.split(";") if s.strip()]
    assert next(p for p in trees[0].args["properties"].expressions
                if isinstance(p, exp.LocationProperty)).this.name == target
    # a rerun with a bigger target replaces the files: fewer, and none left over
    assert main(["--input", OUT, "--run-id", "ra", "--output", target, "--target-size", "128MiB"]) == 0
    assert [o.key for o in storage.list_objects(f"{target}run_id=ra/")] == ["compacted/run_id=ra/part-00000.parquet"]
    assert _rows_multiset(output_rows(target, "ra")) == _rows_multiset(before)
    assert pq.read_schema(io.BytesIO(storage.read_bytes(f"{target}run_id=ra/part-00000.parquet"))).equals(
        PREDICTION_SCHEMA, check_metadata=False)


def test_compaction_refuses_an_unfinished_run(spark, two_runs, capsys):
    from infer.compact import main

    assert main(["--input", OUT, "--run-id", "rbroken", "--output", f"s3://{BUCKET}/c2/"]) == 2
    assert "run rbroken is not finished" in capsys.readouterr().err
    assert main(["--input", OUT, "--run-id", "ra", "--output", OUT]) == 2
    assert "--output must differ from --input" in capsys.readouterr().err
    # the old spelling is refused with the command to type instead, before anything is read or written
    assert main(["--output", OUT, "--run-id", "ra", "--target", f"s3://{BUCKET}/c3/"]) == 2
    err = capsys.readouterr().err
    assert "--target is now --output" in err and f"--input {OUT} --run-id ra --output s3://{BUCKET}/c3/" in err
    assert not list(storage.list_objects(f"s3://{BUCKET}/c3/"))


def test_unsigned_types_have_no_athena_column_type():
    with pytest.raises(ValueError, match="uint32 has no Athena equivalent"):
        athena.hive_type(pa.uint32())


def test_infer_athena_creates_the_tables_in_glue_once_and_refuses_another_shape(s3, capsys):
    from infer.athena import main

    out, prep = "s3://gluetables/pred/", "s3://gluetables/shards/"
    args = ["--output", out, "--status", "--manifest-output", prep, "--glue-database", "tables_db"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"athena: Glue table tables_db.predictions ({out}): database and table created",
                     f"athena: Glue table tables_db.shardinfer_status ({out}_runs/): table created",
                     f"athena: Glue table tables_db.manifest ({prep}manifest/): table created",
                     f"athena: Glue table tables_db.skipped ({prep}_athena/skipped/): table created"]
    assert main(args) == 0  # again: nothing changes
    assert capsys.readouterr().out.count(": exists") == 4
    for t in (athena.predictions_table(out, database="tables_db"), athena.status_table(out, database="tables_db"),
              athena.manifest_table(prep, database="tables_db"),
              athena.manifest_table(prep, "skipped", "tables_db", skipped=True)):
        got = boto3.client("glue").get_table(DatabaseName="tables_db", Name=t.name)["Table"]
        want = glue.table_input(t)
        assert {k: got[k] for k in ("Name", "TableType", "PartitionKeys", "Parameters")} == {
            k: want[k] for k in ("Name", "TableType", "PartitionKeys", "Parameters")}
        sd = got["StorageDescriptor"]
        assert (sd["Columns"], sd["Location"], sd["InputFormat"], sd["OutputFormat"],
                sd["SerdeInfo"]["SerializationLibrary"]) == (
            want["StorageDescriptor"]["Columns"], t.location, t.input_format, t.output_format, athena.PARQUET_SERDE)
    # the projection variant under the same name would read differently: refused, the table left as it was
    assert main(["--output", out, "--projection", "--glue-database", "tables_db"]) == 2
    err = capsys.readouterr().err
    assert "Glue table tables_db.predictions exists with another shape: its properties differ: " in err
    assert "projection.enabled=None (not 'true')" in err and "use another --table or --glue-database" in err
    assert main(["--output", out, "--run-id", "r1", "--glue-database", "tables_db"]) == 2
    assert "runs are registered by infer --glue-database/--glue-table" in capsys.readouterr().err
    assert main(["--output", out, "--database", "a", "--glue-database", "b"]) == 2
    assert "--database and --glue-database name the same database" in capsys.readouterr().err
