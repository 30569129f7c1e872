"""Athena DDL for the predictions table and the manifest, generated from the Arrow schemas.

The column list comes from :data:`common.output.PREDICTION_SCHEMA` and
:data:`common.manifest.MANIFEST_SCHEMA`, so the DDL cannot drift from the files.  Statements
follow Athena engine v3 (Hive DDL); the tests parse them with sqlglot's Athena dialect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

from common import storage
from common.manifest import MANIFEST_SCHEMA, PARTS_DIR, SKIPPED_SCHEMA
from common.output import PARTITION_COLUMN, PREDICTION_SCHEMA, partition_dir

# Where prepare leaves the one-line symlink files that let Athena read exactly one Parquet
# file (manifest.parquet / skipped.parquet) although the shards sit beside it.
SYMLINK_DIR = "_athena"
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


_SIMPLE_TYPES = {pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double", pa.float32(): "float",
                 pa.bool_(): "boolean", pa.string(): "string"}


def hive_type(t: pa.DataType) -> str:
    """The Athena (Hive DDL) type of an Arrow type.

    Raises:
        ValueError: a type Athena cannot read from Parquet the way we write it (e.g. unsigned).
    """
    if t in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t]
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.type)}" for f in t) + ">"
    raise ValueError(f"Arrow type {t} has no Athena equivalent in shardinfer's output")


def _ident(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a lowercase snake_case Athena name")
    return f"`{name}`"


def _table(table: str, database: Optional[str]) -> str:
    return f"{_ident(database)}.{_ident(table)}" if database else _ident(table)


def _columns(schema: pa.Schema) -> str:
    return ",\n".join(f"  {_ident(f.name)} {hive_type(f.type)}" for f in schema)



PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
SYMLINK_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"


@dataclass(frozen=True)
class Table:
    """One external table over shardinfer's files: what its Athena DDL and its Glue ``TableInput``
    (:func:`common.glue.table_input`) are both made from, so the two cannot describe different tables."""

    name: str
    database: Optional[str]
    schema: pa.Schema
    location: str  # a folder URI ending in "/"
    partition_keys: tuple[str, ...] = ()  # string-typed partition columns
    symlink: bool = False  # read through a symlink file (SymlinkTextInputFormat) naming Parquet files
    properties: tuple[tuple[str, str], ...] = ()  # TBLPROPERTIES (Glue: the table's Parameters)

    @property
    def input_format(self) -> str:
        """The Hive input format (Glue's StorageDescriptor.InputFormat)."""
        return SYMLINK_INPUT if self.symlink else PARQUET_INPUT

    @property
    def output_format(self) -> str:
        """The Hive output format (Glue's StorageDescriptor.OutputFormat)."""
        return SYMLINK_OUTPUT if self.symlink else PARQUET_OUTPUT

    def ddl(self) -> str:
        """``CREATE EXTERNAL TABLE IF NOT EXISTS …`` (Athena engine v3)."""
        text = f"CREATE EXTERNAL TABLE IF NOT EXISTS {_table(self.name, self.database)} (\n{_columns(self.schema)}\n)\n"
        if self.partition_keys:
            text += f"PARTITIONED BY ({', '.join(_ident(k) + ' string' for k in self.partition_keys)})\n"
        text += (f"ROW FORMAT SERDE '{PARQUET_SERDE}'\nSTORED AS INPUTFORMAT '{SYMLINK_INPUT}'\n"
                 f"OUTPUTFORMAT '{SYMLINK_OUTPUT}'\n" if self.symlink else "STORED AS PARQUET\n") + f"LOCATION '{self.location}'"
        if self.properties:
            text += "\nTBLPROPERTIES (\n  " + ",\n  ".join(f"'{k}' = '{v}'" for k, v in self.properties) + "\n)"
        return text


def _projection(template: str) -> tuple[tuple[str, str], ...]:
    return (("projection.enabled", "true"), (f"projection.{PARTITION_COLUMN}.type", "injected"),
            ("storage.location.template", template))


def predictions_table(location: str, table: str = "predictions", database: Optional[str] = None,
                      projection: bool = False) -> Table:
    """The predictions under ``location`` (partitioned by ``run_id``).

    With ``projection=True`` the partitions need no registration: ``projection.run_id.type =
    injected`` takes the run id from each query's ``WHERE run_id = '…'``.
    """
    location = storage.as_folder(location)
    props: tuple[tuple[str, str], ...] = (("parquet.compression", "ZSTD"),)
    if projection:
        props += _projection(f"{location}{PARTITION_COLUMN}=${{{PARTITION_COLUMN}}}/")
    return Table(table, database, PREDICTION_SCHEMA, location, (PARTITION_COLUMN,), properties=props)


def create_predictions_table(location: str, table: str = "predictions", database: Optional[str] = None,
                             projection: bool = False) -> str:
    """``CREATE EXTERNAL TABLE`` for :func:`predictions_table`."""
    return predictions_table(location, table, database, projection).ddl()


def add_partition(location: str, run_id: str, table: str = "predictions", database: Optional[str] = None) -> str:
    """``ALTER TABLE … ADD IF NOT EXISTS PARTITION`` registering one finished run."""
    return (f"ALTER TABLE {_table(table, database)} ADD IF NOT EXISTS\n"
            f"PARTITION ({_ident(PARTITION_COLUMN)} = '{run_id}') LOCATION '{partition_dir(location, run_id)}'")


def status_table(location: str, table: str = "shardinfer_status", database: Optional[str] = None) -> Table:
    """Every run's status files under ``<location>/_runs/`` (common/status.py), partitioned by ``run_id``
    through an injected projection: each query names its run (``WHERE run_id = '…'``) and nothing needs
    registering."""
    from common.status import STATUS_SCHEMA

    location = storage.as_folder(location)
    return Table(table, database, STATUS_SCHEMA, f"{location}_runs/", (PARTITION_COLUMN,),
                 properties=_projection(f"{location}_runs/${{{PARTITION_COLUMN}}}/status/"))


def create_status_table(location: str, table: str = "shardinfer_status", database: Optional[str] = None) -> str:
    """``CREATE EXTERNAL TABLE`` for :func:`status_table`."""
    return status_table(location, table, database).ddl()


def symlink_location(prepare_output: str, name: str) -> str:
    """``<output>/_athena/<name>/``: the folder holding ``symlink.txt`` for ``manifest`` or ``skipped``."""
    return storage.join(prepare_output, SYMLINK_DIR, name) + "/"


def manifest_table(prepare_output: str, table: str = "manifest", database: Optional[str] = None,
                   skipped: bool = False) -> Table:
    """One prepare output's shard rows (format 2 and 3: the ``manifest/`` folder of part files, directly)
    or its ``skipped.parquet``.

    ``skipped.parquet`` sits beside the shards and the index, so that table reads through a
    symlink file (Athena's ``SymlinkTextInputFormat``) that names exactly the one Parquet file.
    """
    if skipped:
        return Table(table, database, SKIPPED_SCHEMA, symlink_location(prepare_output, "skipped"), symlink=True)
    return Table(table, database, MANIFEST_SCHEMA, storage.join(prepare_output, PARTS_DIR) + "/")


def create_manifest_table(prepare_output: str, table: str = "manifest", database: Optional[str] = None,
                          skipped: bool = False) -> str:
    """``CREATE EXTERNAL TABLE`` for :func:`manifest_table`."""
    return manifest_table(prepare_output, table, database, skipped).ddl()


def run_statements(location: str, run_id: str, table: str = "predictions", database: Optional[str] = None) -> str:
    """The text of ``_runs/<run_id>/athena.sql``: create, register this run, and the projection variant."""
    return (
        f"-- shardinfer: Athena statements for run {run_id}. Run them one at a time.\n"
        f"-- 1. The table (once per output location).\n"
        f"{create_predictions_table(location, table, database)};\n\n"
        f"-- 2. Register this run as a partition.\n"
        f"{add_partition(location, run_id, table, database)};\n\n"
        f"-- Alternative to 1+2: partition projection, no registration per run, but every query must\n"
        f"-- then filter on run_id (WHERE run_id = '{run_id}').\n"
        f"{create_predictions_table(location, table + '_projected', database, projection=True)};\n"
    )
