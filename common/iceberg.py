"""The Iceberg output contract (``infer --iceberg-table DB.TABLE``): the table's schema and partitioning, where
its files go, what a task reports for each part file it wrote, and the commit ledger.  Pure functions and data
(pyiceberg's types, pyarrow's Parquet metadata); the catalog and the commit are infer/iceberg_table.py's.

The table (Iceberg format version 2) has the predictions' columns with ``run_id`` as a real column and its
identity partition, ``inferred_at`` as ``timestamptz`` (microseconds) and ``embedding`` as ``list<float>``
(:data:`common.output.ICEBERG_SCHEMA`, whose Parquet files carry the field ids).  Created by infer at
``<output>/<db>.db/<table>`` (the warehouse layout of Spark, pyiceberg and Glue), its part files are
``<location>/data/run_id=<id>/part-<shard_id:05d>.parquet`` and its metadata ``<location>/metadata/``;
infer's run records stay under ``<output>/_runs/``, outside the table's location, where Athena's ``VACUUM`` and
Trino's ``remove_orphan_files`` (which delete what the table does not reference) never reach them.

Exactly once: each commit of a run writes a ledger, ``<output>/_runs/<run_id>/iceberg/<snapshot_id>.parquet``
(the shard id ranges it adds), before committing, and the commit itself sets the table property
``shardinfer.commit.<run_id>.<snapshot_id>`` to the ledger's URI.  A table property lands with its snapshot
or not at all and outlives snapshot expiry and compaction, so the shards of a run already in the table are
the union of the ledgers its properties name: a shard is never added twice, whatever was killed when.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import storage
from common.errors import UsageError
from common.output import ICEBERG_SCHEMA, PARTITION_COLUMN, RUNS_DIR

FORMAT_VERSION = 2
# Iceberg numbers partition fields from 1000.
PARTITION_FIELD_ID = 1000
DATA_DIR = "data"
LEDGER_DIR = "iceberg"
COMMIT_PROPERTY = "shardinfer.commit."
# the snapshot summary of each commit
SUMMARY_RUN_ID = "shardinfer.run-id"
SUMMARY_INVOCATION = "shardinfer.invocation"
SUMMARY_SHARDS = "shardinfer.shards-added"
SUMMARY_SHARDS_FAILED = "shardinfer.shards-failed"
SUMMARY_MANIFEST_ID = "shardinfer.manifest-id"
_NAME_RE = re.compile(r"^[a-z0-9_]{1,255}$")
_LEDGER = pa.schema([pa.field("first_shard_id", pa.int64(), nullable=False),
                     pa.field("end_shard_id", pa.int64(), nullable=False)])


def parse_table_name(name: str) -> tuple[str, str]:
    """``DB.TABLE`` as (database, table): Glue's (and Athena's) names, lowercase letters, digits and ``_``.

    Raises:
        UsageError: naming ``name``.
    """
    parts = name.split(".")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
        raise UsageError(f"--iceberg-table {name!r}: expected DB.TABLE, each of lowercase letters, digits and '_' "
                         "(Glue's names)")
    return parts[0], parts[1]


def default_location(output: str, database: str, table: str) -> str:
    """Where infer creates the table: ``<output>/<database>.db/<table>``."""
    return storage.join(output, f"{database}.db", table)


def data_prefix(location: str) -> str:
    """The prefix of the table's part files (``<location>/data``): ``common.output.part_key`` goes under it."""
    return storage.join(location, DATA_DIR)


def table_schema():
    """The table's pyiceberg ``Schema``, from :data:`common.output.ICEBERG_SCHEMA` and its field ids."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema

    return pyarrow_to_schema(ICEBERG_SCHEMA)


def partition_spec(schema):
    """The identity partition on ``run_id``."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import IdentityTransform

    return PartitionSpec(PartitionField(source_id=schema.find_field(PARTITION_COLUMN).field_id,
                                        field_id=PARTITION_FIELD_ID, transform=IdentityTransform(),
                                        name=PARTITION_COLUMN))


def schema_difference(schema, spec) -> Optional[str]:
    """How an existing table's schema and partitioning differ from infer's (None: they agree)."""
    want, want_spec = table_schema(), partition_spec(table_schema())
    have = {f.field_id: f for f in schema.fields}
    for f in want.fields:
        got = have.pop(f.field_id, None)
        if got is None or got.name != f.name or got.field_type != f.field_type or got.required != f.required:
            return f"column {f.field_id} is {got if got else 'missing'}, not {f}"
    if have:
        return f"it has other columns: {', '.join(f.name for f in have.values())}"
    fields = [(p.source_id, str(p.transform)) for p in spec.fields]
    if fields != [(p.source_id, str(p.transform)) for p in want_spec.fields]:
        return f"it is partitioned by {spec}, not identity(run_id)"
    return None


@dataclass(frozen=True)
class FileStats:
    """What a task says of one part file it wrote, for the driver's manifest: plain values, picklable, about
    0.5 KB (the statistics pyiceberg's ``add_files`` would read from the file's footer)."""

    shard_id: int
    uri: str
    size: int
    stats: dict  # pyiceberg's DataFileStatistics.to_serialized_dict(): record count, sizes, counts, bounds


@dataclass(frozen=True)
class FileTarget:
    """What a task needs to describe its part files: the table's schema (JSON) and properties (its metrics
    settings), picklable strings."""

    schema_json: str
    properties: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, schema, properties: dict) -> "FileTarget":
        """From a pyiceberg schema and the table's properties."""
        return cls(schema.model_dump_json(), tuple(sorted(properties.items())))

    def describe(self, shard_id: int, uri: str, data: bytes) -> FileStats:
        """The statistics of the Parquet file ``data`` (its footer, in memory) at ``uri``."""
        from pyiceberg.io.pyarrow import (
            compute_statistics_plan,
            data_file_statistics_from_parquet_metadata,
            parquet_path_to_id_mapping,
        )
        from pyiceberg.schema import Schema

        schema = Schema.model_validate_json(self.schema_json)
        stats = data_file_statistics_from_parquet_metadata(
            pq.read_metadata(io.BytesIO(data)), compute_statistics_plan(schema, dict(self.properties)),
            parquet_path_to_id_mapping(schema))
        return FileStats(shard_id, uri, len(data), stats.to_serialized_dict())


def data_file(f: FileStats, run_id: str, spec_id: int):
    """The pyiceberg ``DataFile`` of a part file, from what its task reported: no request."""
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    return DataFile.from_args(content=DataFileContent.DATA, file_path=f.uri, file_format=FileFormat.PARQUET,
                              partition=Record(run_id), file_size_in_bytes=f.size, sort_order_id=None,
                              spec_id=spec_id, equality_ids=None, key_metadata=None, **f.stats)


def commit_property(run_id: str, snapshot_id: int) -> str:
    """The table property a commit of ``run_id`` sets (its value: the ledger's URI)."""
    return f"{COMMIT_PROPERTY}{run_id}.{snapshot_id}"


def run_commits(properties: dict, run_id: str) -> dict[int, str]:
    """The run's commits in the table: snapshot id -> ledger URI."""
    prefix = f"{COMMIT_PROPERTY}{run_id}."
    return {int(k[len(prefix):]): v for k, v in properties.items()
            if k.startswith(prefix) and k[len(prefix):].isdigit()}


def ledger_uri(output: str, run_id: str, snapshot_id: int) -> str:
    """``<output>/_runs/<run_id>/iceberg/<snapshot_id>.parquet``."""
    return storage.join(output, RUNS_DIR, run_id, LEDGER_DIR, f"{snapshot_id}.parquet")


def ledger_bytes(ranges: np.ndarray) -> bytes:
    """A ledger: the ``[first, end)`` shard id ranges a commit adds, as Parquet."""
    ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    buf = io.BytesIO()
    pq.write_table(pa.table([pa.array(ranges[:, 0]), pa.array(ranges[:, 1])], schema=_LEDGER), buf,
                   compression="zstd")
    return buf.getvalue()


def read_ledger(data: bytes) -> np.ndarray:
    """A ledger's ranges, ``(n, 2)`` int64."""
    t = pq.read_table(io.BytesIO(data))
    return np.stack([t.column(0).to_numpy(), t.column(1).to_numpy()], axis=1).astype(np.int64).reshape(-1, 2)
