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
from common.athena import PARQUET_SERDE, Table, hive_type, predictions_table
from common.errors import GlueError  # noqa: F401 - raised here, defined with the other user errors
from common.output import PREDICTION_SCHEMA, partition_dir


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



def columns(table: Optional[Table] = None) -> list[dict]:
    """A table's columns (default: the predictions table's), as Glue wants them."""
    schema = table.schema if table is not None else PREDICTION_SCHEMA
    return [{"Name": f.name, "Type": hive_type(f.type)} for f in schema]


def _storage(location: str, table: Optional[Table] = None) -> dict:
    table = table or predictions_table(location)
    return {"Columns": columns(table), "Location": storage.as_folder(location), "InputFormat": table.input_format,
            "OutputFormat": table.output_format, "Compressed": not table.symlink,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}}}


def table_input(table: Table) -> dict:
    """Glue's ``TableInput`` for ``table``: the table its Athena DDL (``table.ddl()``) creates."""
    params = {"EXTERNAL": "TRUE", "classification": "parquet", **dict(table.properties)}
    return {"Name": table.name, "TableType": "EXTERNAL_TABLE", "StorageDescriptor": _storage(table.location, table),
            "PartitionKeys": [{"Name": k, "Type": "string"} for k in table.partition_keys], "Parameters": params}


def _norm(cols: list[dict]) -> list[tuple[str, str]]:
    return [(c["Name"].lower(), c["Type"].lower().replace(" ", "")) for c in cols]


def ensure_table(database: str, table: str, location: str) -> str:
    """Create ``database`` and the predictions table ``table`` at ``location`` when absent; check an existing one.

    Returns and raises as :func:`ensure`.
    """
    return ensure(predictions_table(location, table, database), "use another --glue-table")


def check_table(database: str, table: str, location: str) -> bool:
    """Whether the predictions table ``table`` exists (with the right shape); reads only.

    Raises:
        GlueError: it exists with another shape (see :func:`ensure`).
    """
    return check(predictions_table(location, table, database), "use another --glue-table")


def check(table: Table, hint: str = "use another table name") -> bool:
    """Whether ``table`` exists in the catalog as shardinfer would create it; reads only.

    Raises:
        GlueError: the table exists with other columns, partition keys or location, or other properties that
            decide what is read (partition projection); the message ends with ``hint``.
    """
    database, name = table.database, table.name
    glue = _client()
    try:
        existing = glue.get_table(DatabaseName=database, Name=name)["Table"]
    except glue.exceptions.EntityNotFoundException:
        return False
    problems = []
    have, want = _norm(existing.get("StorageDescriptor", {}).get("Columns", [])), _norm(columns(table))
    if have != want:
        missing = [f"{n} {t}" for n, t in want if (n, t) not in have]
        extra = [f"{n} {t}" for n, t in have if (n, t) not in want]
        problems.append(f"columns differ (missing or other type: {', '.join(missing) or 'none'}; not in shardinfer's "
                        f"schema: {', '.join(extra) or 'none'}{'; order differs' if not missing and not extra else ''})")
    keys, want_keys = _norm(existing.get("PartitionKeys", [])), [(k, "string") for k in table.partition_keys]
    if keys != want_keys:
        problems.append(f"partition keys are {keys or 'none'}, not {want_keys or 'none'}")
    loc = existing.get("StorageDescriptor", {}).get("Location", "")
    if storage.as_folder(loc) != table.location:
        problems.append(f"its location is {loc}, not {table.location}")
    params = existing.get("Parameters", {})
    other = [f"{k}={params.get(k)!r} (not {v!r})" for k, v in table.properties
             if k.startswith(("projection.", "storage.location.")) and params.get(k) != v]
    if other:
        problems.append("its properties differ: " + ", ".join(other))
    if problems:
        raise GlueError(f"Glue table {database}.{name} exists with another shape: {'; '.join(problems)}; "
                        f"{hint} (shardinfer never overwrites a table)")
    return True


def ensure(table: Table, hint: str = "use another table name") -> str:
    """Create ``table.database`` and ``table`` when absent; check an existing table (:func:`check`).

    Returns:
        ``"table created"``, ``"database and table created"`` or ``"exists"``.

    Raises:
        GlueError: as :func:`check`.
    """
    glue = _client()
    made = []
    try:
        glue.get_database(Name=table.database)
    except glue.exceptions.EntityNotFoundException:
        glue.create_database(DatabaseInput={"Name": table.database, "Description": "shardinfer predictions"})
        made.append("database")
    if check(table, hint):
        return "exists"
    glue.create_table(DatabaseName=table.database, TableInput=table_input(table))
    made.append("table")
    return " and ".join(made) + " created"


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
