"""The predictions table in the AWS Glue Data Catalog (what Athena queries), kept by infer and compact.

``ensure_table`` creates the database and the table when absent (location ``--output``, Parquet,
columns from :data:`common.output.PREDICTION_SCHEMA`, partition key ``run_id``), and refuses a
table that exists with other columns or partition keys, naming the difference.
``register_partition`` adds a run's partition once the run is complete; doing it again changes
nothing.  ``move_partition`` points a run's partition at compacted files.

Credentials and endpoint come from boto3's chain (``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_GLUE``); the local S3 server of the tests (moto) speaks the Glue API too.
"""

from __future__ import annotations

from typing import Optional

from common import storage
from common.athena import hive_type
from common.output import PARTITION_COLUMN, PREDICTION_SCHEMA, partition_dir

PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"


class GlueError(ValueError):
    """A catalog problem the user must resolve (the message names database, table and difference)."""


def _client():
    import boto3

    return boto3.client("glue")


def catalog(action):
    """Run ``action()``, turning an AWS error into a :class:`GlueError` that names what failed."""
    import botocore.exceptions

    try:
        return action()
    except botocore.exceptions.ClientError as e:
        err = e.response.get("Error", {})
        raise GlueError(f"Glue Data Catalog: {e.operation_name} failed: {err.get('Code')}: {err.get('Message')}") from e
    except botocore.exceptions.BotoCoreError as e:
        raise GlueError(f"Glue Data Catalog: {e}") from e



def columns() -> list[dict]:
    """The table's columns, as Glue wants them."""
    return [{"Name": f.name, "Type": hive_type(f.type)} for f in PREDICTION_SCHEMA]


def _storage(location: str) -> dict:
    return {"Columns": columns(), "Location": storage.as_folder(location), "InputFormat": PARQUET_INPUT,
            "OutputFormat": PARQUET_OUTPUT, "Compressed": True,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}}}


def _norm(cols: list[dict]) -> list[tuple[str, str]]:
    return [(c["Name"].lower(), c["Type"].lower().replace(" ", "")) for c in cols]


def ensure_table(database: str, table: str, location: str) -> str:
    """Create ``database`` and ``table`` when absent; check an existing table.

    Returns:
        ``"created"``, ``"database and table created"`` or ``"exists"``.

    Raises:
        GlueError: the table exists with other columns, partition keys or location.
    """
    glue = _client()
    made = []
    try:
        glue.get_database(Name=database)
    except glue.exceptions.EntityNotFoundException:
        glue.create_database(DatabaseInput={"Name": database, "Description": "shardinfer predictions"})
        made.append("database")
    try:
        existing = glue.get_table(DatabaseName=database, Name=table)["Table"]
    except glue.exceptions.EntityNotFoundException:
        glue.create_table(DatabaseName=database, TableInput={
            "Name": table, "TableType": "EXTERNAL_TABLE", "StorageDescriptor": _storage(location),
            "PartitionKeys": [{"Name": PARTITION_COLUMN, "Type": "string"}],
            "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet", "parquet.compression": "ZSTD"}})
        made.append("table")
        return " and ".join(made) + " created"
    problems = []
    have, want = _norm(existing.get("StorageDescriptor", {}).get("Columns", [])), _norm(columns())
    if have != want:
        missing = [f"{n} {t}" for n, t in want if (n, t) not in have]
        extra = [f"{n} {t}" for n, t in have if (n, t) not in want]
        problems.append(f"columns differ (missing or other type: {', '.join(missing) or 'none'}; not in shardinfer's "
                        f"schema: {', '.join(extra) or 'none'}{'; order differs' if not missing and not extra else ''})")
    keys = _norm(existing.get("PartitionKeys", []))
    if keys != [(PARTITION_COLUMN, "string")]:
        problems.append(f"partition keys are {keys or 'none'}, not [('{PARTITION_COLUMN}', 'string')]")
    loc = existing.get("StorageDescriptor", {}).get("Location", "")
    if storage.as_folder(loc) != storage.as_folder(location):
        problems.append(f"its location is {loc}, not --output {storage.as_folder(location)}")
    if problems:
        raise GlueError(f"Glue table {database}.{table} exists with another shape: {'; '.join(problems)}; "
                        "use another --glue-table (shardinfer never overwrites a table)")
    return "exists"


def register_partition(database: str, table: str, location: str, run_id: str) -> str:
    """Add the partition ``run_id`` at ``<location>/run_id=<id>/``; nothing when it is already there.

    Returns:
        ``"registered"`` or ``"already registered"``.
    """
    glue = _client()
    part_loc = partition_dir(location, run_id)
    try:
        current = glue.get_partition(DatabaseName=database, TableName=table, PartitionValues=[run_id])["Partition"]
        if current.get("StorageDescriptor", {}).get("Location") == part_loc:
            return "already registered"
        glue.update_partition(DatabaseName=database, TableName=table, PartitionValueList=[run_id],
                              PartitionInput={"Values": [run_id], "StorageDescriptor": _storage(part_loc)})
        return "registered (location updated)"
    except glue.exceptions.EntityNotFoundException:
        glue.create_partition(DatabaseName=database, TableName=table,
                              PartitionInput={"Values": [run_id], "StorageDescriptor": _storage(part_loc)})
        return "registered"


def move_partition(database: str, table: str, run_id: str, new_location: str) -> Optional[str]:
    """Point the partition ``run_id`` at ``new_location`` (compacted files); None when it is not registered."""
    glue = _client()
    try:
        glue.get_partition(DatabaseName=database, TableName=table, PartitionValues=[run_id])
    except glue.exceptions.EntityNotFoundException:
        return None
    glue.update_partition(DatabaseName=database, TableName=table, PartitionValueList=[run_id],
                          PartitionInput={"Values": [run_id], "StorageDescriptor": _storage(new_location)})
    return storage.as_folder(new_location)


def partition_location(database: str, table: str, run_id: str) -> Optional[str]:
    """Where the partition ``run_id`` points, or None when it is not registered."""
    glue = _client()
    try:
        part = glue.get_partition(DatabaseName=database, TableName=table, PartitionValues=[run_id])["Partition"]
    except glue.exceptions.EntityNotFoundException:
        return None
    return part.get("StorageDescriptor", {}).get("Location", "")


def delete_partition(database: str, table: str, run_id: str) -> bool:
    """Remove the partition ``run_id`` (the table stays); False when it was not there."""
    glue = _client()
    try:
        glue.delete_partition(DatabaseName=database, TableName=table, PartitionValues=[run_id])
    except glue.exceptions.EntityNotFoundException:
        return False
    return True
