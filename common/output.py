"""The predictions contract: Parquet schema, object keys, run ids and the run-record layout.

Athena rules kept here: lowercase snake_case names, no unsigned integers, ``inferred_at`` as
INT64 milliseconds UTC, Zstd compression, ``run_id`` only in the Hive-style path.  An Iceberg table's
files (``--iceberg-table``, common/iceberg.py) differ in three ways, all from :data:`ICEBERG_SCHEMA`: ``run_id``
is a column, ``inferred_at`` is in microseconds (Iceberg's timestamps; Trino refuses milliseconds), and every
column carries its Iceberg field id.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import storage
from common.errors import UsageError

TOP_K_TYPE = pa.list_(
    pa.struct([pa.field("class_id", pa.int32()), pa.field("label", pa.string()), pa.field("prob", pa.float64())])
)
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("record", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("top_k", TOP_K_TYPE),
        pa.field("top1_class_id", pa.int32()),
        pa.field("top1_label", pa.string()),
        pa.field("top1_prob", pa.float64()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("model", pa.string(), nullable=False),
        pa.field("manifest_id", pa.string(), nullable=False),
        pa.field("inferred_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


def with_field_ids(schema: pa.Schema) -> pa.Schema:
    """``schema`` with an Iceberg field id on every field (``PARQUET:field_id``, which pyarrow writes into the
    Parquet schema): the top-level fields 1..n, then each nested type's fields in order, as Iceberg numbers a
    new table's columns (pyiceberg's ``assign_fresh_schema_ids``), so the ids agree with the table's."""
    counter = iter(range(1, 1 << 31))

    def tag(field: pa.Field, field_id: int) -> pa.Field:
        return field.with_type(numbered(field.type)).with_metadata({b"PARQUET:field_id": str(field_id).encode()})

    def numbered(t: pa.DataType) -> pa.DataType:
        if pa.types.is_struct(t):
            ids = [next(counter) for _ in range(t.num_fields)]
            return pa.struct([tag(t.field(i), ids[i]) for i in range(t.num_fields)])
        if pa.types.is_list(t):
            return pa.list_(tag(t.value_field, next(counter)))
        return t

    return pa.schema(list(numbered(pa.struct(list(schema)))))


# The files of an Iceberg table: the same columns, inferred_at in microseconds, run_id a column, field ids.
ICEBERG_SCHEMA = with_field_ids(pa.schema(
    [pa.field("inferred_at", pa.timestamp("us", tz="UTC"), nullable=False) if f.name == "inferred_at" else f
     for f in PREDICTION_SCHEMA] + [pa.field("run_id", pa.string(), nullable=False)]))
STATUS_OK = "ok"
RUNS_DIR = "_runs"
# The table's one partition key, present only in the Hive-style path <output>/run_id=<id>/.
PARTITION_COLUMN = "run_id"
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_PART_FILE_RE = re.compile(r"part-(\d+)\.parquet$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# S3 user metadata on every part file (x-amz-meta-*): what produced it, so a retry can tell
# "same work already done" from "different work under the same key".
META_INPUT_DIGEST = "shardinfer-input-digest"
META_ROWS = "shardinfer-rows"
META_ROWS_ERROR = "shardinfer-rows-error"
META_INVOCATION = "shardinfer-invocation"


class ConflictError(RuntimeError):
    """A part file exists that was made from different input (another model, shard or --top-k)."""


def input_digest(shard_sha256: str, params_sha256: str, top_k: int, extra: str = "") -> str:
    """What determines a shard's predictions (besides the clock): shard bytes, model params, k, and
    ``extra`` settings such as a reduced precision (empty for the fp32 defaults, so older runs still match)."""
    text = f"{shard_sha256}:{params_sha256}:{top_k}" + (f":{extra}" if extra else "")
    return hashlib.sha256(text.encode()).hexdigest()


class OutputCheckError(RuntimeError):
    """Serialised predictions that did not read back as written: nothing is uploaded."""


@dataclass(frozen=True)
class ImageResult:
    """One image's outcome: ``class_ids``/``probs`` best first, or None when ``status`` is an error."""

    key: str
    record: int
    status: str
    class_ids: Optional[Sequence[int]] = None
    probs: Optional[Sequence[float]] = None


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe partition value, else raise UsageError naming it."""
    if not _RUN_ID_RE.match(run_id):
        raise UsageError(
            f"run id {run_id!r} is not allowed: use 1-128 characters from A-Z a-z 0-9 . _ - "
            "(no ':' or '/'), starting with a letter or digit"
        )
    return run_id


def default_run_id(manifest_id: str, model_name: str, params_sha256: str, precision: str = "fp32",
                   variant: str = "") -> str:
    """``<manifest_id>-<model>-<params digest>[-bf16|-int8][-v<8 hex>]``: the same inputs give the same run (so
    reruns fill in); ``variant`` (non-default preprocessing, an output layer) adds a digest of itself."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-.") or "model"
    suffix = "" if precision == "fp32" else f"-{precision}"
    if variant:
        suffix += "-v" + hashlib.sha256(variant.encode()).hexdigest()[:8]
    return check_run_id(f"{manifest_id}-{model}-{params_sha256[:8]}{suffix}")


def partition_dir(output_prefix: str, run_id: str) -> str:
    """``<output>/run_id=<run_id>/`` (with the slash): the run's partition of the predictions table."""
    return storage.join(output_prefix, f"{PARTITION_COLUMN}={run_id}") + "/"


def part_key(output_prefix: str, run_id: str, shard_id: int) -> str:
    """``<output>/run_id=<run_id>/part-<shard_id:05d>.parquet``: fixed by the input, so a retry overwrites.
    (compact numbers its files the same way, by bin instead of shard.)"""
    return f"{partition_dir(output_prefix, run_id)}part-{shard_id:05d}.parquet"


def part_file_id(key: str) -> Optional[int]:
    """The number in a ``…/part-NNNNN.parquet`` key (the inverse of :func:`part_key`); None for other keys."""
    m = _PART_FILE_RE.search(key)
    return int(m.group(1)) if m else None


def run_dir(output_prefix: str, run_id: str) -> str:
    """``<output>/_runs/<run_id>``: status and summaries, outside the table location."""
    return storage.join(output_prefix, RUNS_DIR, run_id)


def run_record_key(output_prefix: str, run_id: str) -> str:
    """``_runs/<run_id>/run.json``: which manifest and model the run belongs to."""
    return storage.join(run_dir(output_prefix, run_id), "run.json")


def embedding_column(results: Sequence[ImageResult], embeddings: Optional[np.ndarray]) -> pa.Array:
    """``embedding``: row *i* of ``embeddings`` (flattened, float32) for an ok image, null otherwise."""
    n = len(results)
    if embeddings is None:
        return pa.nulls(n, pa.list_(pa.float32()))
    ok = np.array([r.status == STATUS_OK for r in results], dtype=bool)
    width = embeddings.shape[1] if embeddings.ndim == 2 else 0
    offsets = pa.array(np.concatenate(([0], np.cumsum(np.where(ok, width, 0)))).astype(np.int32))
    values = pa.array(np.ascontiguousarray(embeddings[ok], dtype=np.float32).ravel())
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~ok))


def predictions_table(results: Sequence[ImageResult], labels: Sequence[str], shard_id: int, model: str,
                      manifest_id: str, inferred_at: datetime, embeddings: Optional[np.ndarray] = None,
                      iceberg_run_id: Optional[str] = None) -> pa.Table:
    """Build one shard's rows in the output schema (``embeddings``: the output layer's rows, or None); with
    ``iceberg_run_id``, in :data:`ICEBERG_SCHEMA`, that run id in every row."""
    top_k: list[Optional[list[dict]]] = []
    c1: list[Optional[int]] = []
    l1: list[Optional[str]] = []
    p1: list[Optional[float]] = []
    for r in results:
        if r.class_ids is None or r.probs is None:
            top_k.append(None)
            c1.append(None)
            l1.append(None)
            p1.append(None)
            continue
        ids, probs = [int(c) for c in r.class_ids], [float(p) for p in r.probs]
        top_k.append([{"class_id": c, "label": labels[c], "prob": p} for c, p in zip(ids, probs)])
        c1.append(ids[0])
        l1.append(labels[ids[0]])
        p1.append(probs[0])
    n = len(results)
    schema = PREDICTION_SCHEMA if iceberg_run_id is None else ICEBERG_SCHEMA
    extra = {} if iceberg_run_id is None else {PARTITION_COLUMN: [iceberg_run_id] * n}
    return pa.Table.from_pydict(
        {
            "key": [r.key for r in results],
            "shard_id": [shard_id] * n,
            "record": [r.record for r in results],
            "status": [r.status for r in results],
            "top_k": top_k,
            "top1_class_id": c1,
            "top1_label": l1,
            "top1_prob": p1,
            "embedding": embedding_column(results, embeddings),
            "model": [model] * n,
            "manifest_id": [manifest_id] * n,
            "inferred_at": pa.array([inferred_at] * n, type=schema.field("inferred_at").type),
            **extra,
        },
        schema=schema,
    )


def table_to_parquet(table: pa.Table, where: str) -> bytes:
    """Serialise in memory and read back: the bytes are uploaded only if they hold every row.

    Raises:
        OutputCheckError: the read-back schema or row count differs (names ``where``).
    """
    buf = io.BytesIO()
    unit = table.schema.field("inferred_at").type.unit  # ms, or us in an Iceberg table
    pq.write_table(table, buf, compression="zstd", coerce_timestamps=unit, allow_truncated_timestamps=False,
                   use_dictionary=["model", "manifest_id", "status", "top1_label"])
    data = buf.getvalue()
    back = pq.read_table(io.BytesIO(data))
    if back.num_rows != table.num_rows or not back.schema.equals(table.schema, check_metadata=False):
        raise OutputCheckError(f"{where}: Parquet read-back mismatch ({back.num_rows} of {table.num_rows} rows)")
    if not np.array_equal(back.column("record").to_numpy(), table.column("record").to_numpy()):
        raise OutputCheckError(f"{where}: Parquet read-back mismatch in column 'record'")
    return data
