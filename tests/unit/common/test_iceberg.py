"""common/iceberg.py and common/iceberg_io.py: the Iceberg table's schema and field ids, what a task reports of a
part file, the ledger, and pyiceberg's file IO over common.storage."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from common import iceberg, storage
from common.errors import UsageError
from common.output import ICEBERG_SCHEMA, PREDICTION_SCHEMA, ImageResult, predictions_table, table_to_parquet


def _part(run_id: str = "r1", shard_id: int = 3, n: int = 5) -> bytes:
    results = [ImageResult(f"img/{shard_id}/{i}.png", i, "ok", [i % 3, 1], [0.75, 0.25]) for i in range(n - 1)]
    results.append(ImageResult(f"img/{shard_id}/{n - 1}.png", n - 1, "cannot identify image"))
    table = predictions_table(results, ["a", "b", "c"], shard_id, "m@sha256:x", "mid",
                              datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=timezone.utc), iceberg_run_id=run_id)
    return table_to_parquet(table, "test")


def test_field_ids_are_the_ones_iceberg_gives_a_new_table():
    """Our ids, written into every Parquet file, equal what Iceberg assigns the same columns afresh
    (pyiceberg's assign_fresh_schema_ids over the schema without ids), nested fields included."""
    from pyiceberg.io.pyarrow import _ConvertToIcebergWithoutIDs, visit_pyarrow
    from pyiceberg.schema import assign_fresh_schema_ids

    fresh = assign_fresh_schema_ids(visit_pyarrow(ICEBERG_SCHEMA, _ConvertToIcebergWithoutIDs()))
    ours = iceberg.table_schema()
    assert fresh.as_struct() == ours.as_struct()
    assert [f.name for f in ours.fields] == PREDICTION_SCHEMA.names + ["run_id"]
    assert str(ours.find_field("inferred_at").field_type) == "timestamptz"
    assert str(ours.find_field("embedding").field_type) == "list<float>"
    assert ours.find_field("run_id").required and ours.find_field("key").required


def test_part_files_carry_run_id_microseconds_and_field_ids():
    data = _part()
    schema = pq.read_schema(io.BytesIO(data))
    assert schema.field("run_id").type == "string" and schema.field("inferred_at").type.unit == "us"
    assert schema.field("key").metadata[b"PARQUET:field_id"] == b"1"
    assert schema.field("run_id").metadata[b"PARQUET:field_id"] == b"13"
    back = pq.read_table(io.BytesIO(data))
    assert set(back.column("run_id").to_pylist()) == {"r1"}
    assert back.column("inferred_at")[0].as_py().microsecond == 456789  # not cut to milliseconds


def test_a_tasks_file_stats_are_what_add_files_reads_from_the_file(tmp_path):
    """FileStats from the bytes in memory == pyiceberg's own statistics of the file on disk (what add_files
    would build by reading its footer)."""
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )

    data = _part()
    path = tmp_path / "part-00003.parquet"
    path.write_bytes(data)
    schema = iceberg.table_schema()
    f = iceberg.FileTarget.of(schema, {}).describe(3, str(path), data)
    theirs = data_file_statistics_from_parquet_metadata(pq.read_metadata(str(path)), compute_statistics_plan(schema, {}),
                                                        parquet_path_to_id_mapping(schema)).to_serialized_dict()
    assert f.stats == theirs and f.size == path.stat().st_size and f.stats["record_count"] == 5
    df = iceberg.data_file(f, "r1", 0)
    assert df.record_count == 5 and df.partition[0] == "r1" and df.file_path == str(path)
    assert df.null_value_counts[schema.find_field("top1_label").field_id] == 1  # the undecodable image's row


def test_table_names_and_schema_differences_are_named():
    assert iceberg.parse_table_name("analytics.preds") == ("analytics", "preds")
    for bad in ("preds", "a.b.c", "Analytics.preds", "a.pre-ds", ".x"):
        with pytest.raises(UsageError, match="--iceberg-table"):
            iceberg.parse_table_name(bad)
    schema = iceberg.table_schema()
    assert iceberg.schema_difference(schema, iceberg.partition_spec(schema)) is None
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.schema import Schema

    assert "partitioned by" in iceberg.schema_difference(schema, PartitionSpec())
    fewer = Schema(*schema.fields[:-1])
    assert "run_id" in iceberg.schema_difference(fewer, iceberg.partition_spec(schema))


def test_ledger_round_trips_and_commit_properties_are_per_run():
    ranges = np.array([[0, 5], [7, 8], [100, 15_600_000]])
    assert np.array_equal(iceberg.read_ledger(iceberg.ledger_bytes(ranges)), ranges)
    assert iceberg.read_ledger(iceberg.ledger_bytes(np.zeros((0, 2)))).shape == (0, 2)
    props = {iceberg.commit_property("r1", 11): "s3://b/l11", iceberg.commit_property("r1", 12): "s3://b/l12",
             iceberg.commit_property("r1.x", 13): "s3://b/other", "write.format.default": "parquet"}
    assert iceberg.run_commits(props, "r1") == {11: "s3://b/l11", 12: "s3://b/l12"}
    assert iceberg.run_commits(props, "r1.x") == {13: "s3://b/other"}
    assert iceberg.ledger_uri("s3://b/out/", "r1", 11) == "s3://b/out/_runs/r1/iceberg/11.parquet"
    assert iceberg.default_location("s3://b/out/", "db", "t") == "s3://b/out/db.db/t"


def test_store_file_io_writes_with_one_put_and_reads_back(s3):
    from common.iceberg_io import StoreFileIO, properties

    s3.create_bucket("unit-ice")
    fio = StoreFileIO(properties(storage.Store(s3.endpoint_url, storage.Encryption("AES256"))))
    out = fio.new_output("s3://unit-ice/t/metadata/x.avro")
    assert not out.exists()
    with out.create() as f:
        f.write(b"abc")
        f.write(b"def")
    assert len(out) == 6 and out.exists()
    assert fio.new_input("s3://unit-ice/t/metadata/x.avro").open().read() == b"abcdef"
    head = storage.s3_client(s3.endpoint_url).head_object(Bucket="unit-ice", Key="t/metadata/x.avro")
    assert head["ServerSideEncryption"] == "AES256"
    with pytest.raises(FileExistsError):
        out.create()
    fio.delete("s3://unit-ice/t/metadata/x.avro")
    assert not fio.new_input("s3://unit-ice/t/metadata/x.avro").exists()
    with pytest.raises(FileNotFoundError):
        len(fio.new_input("s3://unit-ice/t/metadata/absent.avro"))
