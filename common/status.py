"""The status contract: one Parquet file of per-shard statuses per infer invocation.

    <output>/_runs/<run_id>/status/<YYYYmmddTHHMMSS>-<invocation>.parquet

written by the driver at the end of each invocation (outside the table location), one row
per shard that invocation ran: ok (written, or already present) or failed with the error,
row counts, stage timestamps and the executor (the run id is in the path, as for predictions).  A shard's *latest* status is the row from
the newest file that holds it (file names sort by start time).  ``--only-failed``, the run
report and compaction read these files: one LIST and one or two GETs per invocation, never
a request per shard.

Tasks hand their statuses to the driver as compact Arrow IPC bytes (:func:`pack`), so the
driver keeps ~30 bytes per shard while a run is in flight, not a Python dict.
"""

from __future__ import annotations

import io
import time
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from common import storage
from common.output import run_dir

STATUS_DIR = "status"
_TS = pa.timestamp("ms", tz="UTC")
TIMES = ("t_start", "t_fetched", "t_decoded", "t_forward_start", "t_forwarded", "t_end", "t_task_start", "t_task_end")
# shard_id, status and error first: the columns --only-failed reads are one contiguous byte range
STATUS_SCHEMA = pa.schema(
    [
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("rows", pa.int32(), nullable=False),
        pa.field("rows_error", pa.int32(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        *(pa.field(t, _TS) for t in TIMES),
        pa.field("model", pa.string()),
        pa.field("model_loaded", pa.bool_(), nullable=False),
        pa.field("model_load_s", pa.float32(), nullable=False),
        pa.field("host", pa.string()),
        pa.field("pid", pa.int32()),
        pa.field("attempt", pa.int32()),
        pa.field("task", pa.int32()),
        pa.field("traceback", pa.string()),
        pa.field("invocation", pa.string(), nullable=False),
    ]
)
FAILED_COLUMNS = ["shard_id", "status", "error"]
# Read a status file in one GET up to this size; above it, the footer and the wanted columns only.
_WHOLE_READ = 8 * 1024 * 1024


def status_dir(output_prefix: str, run_id: str) -> str:
    """``<output>/_runs/<run_id>/status``."""
    return storage.join(run_dir(output_prefix, run_id), STATUS_DIR)


def status_key(output_prefix: str, run_id: str, started: float, invocation: str) -> str:
    """Where one invocation's status file goes: names sort by the invocation's start."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    return storage.join(status_dir(output_prefix, run_id), f"{stamp}-{invocation}.parquet")


def _column(rows: Sequence[dict], field: pa.Field):
    name = field.name
    if name in TIMES:
        return pa.array([None if r.get(name) is None else int(r[name] * 1000) for r in rows], pa.int64()).cast(_TS)
    default = {"rows": 0, "rows_error": 0, "bytes": 0, "model_loaded": False, "model_load_s": 0.0}.get(name)
    return pa.array([r.get(name, default) for r in rows], field.type)


def table(rows: Sequence[dict]) -> pa.Table:
    """Status dicts (times as epoch seconds) as a table in :data:`STATUS_SCHEMA`."""
    return pa.Table.from_arrays([_column(rows, f) for f in STATUS_SCHEMA], schema=STATUS_SCHEMA)


def pack(rows: Sequence[dict]) -> bytes:
    """A task's statuses as compressed Arrow IPC bytes (what it returns to the driver)."""
    sink = io.BytesIO()
    t = table(rows)
    with ipc.new_stream(sink, t.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    return sink.getvalue()


def unpack(data: bytes) -> pa.Table:
    """The inverse of :func:`pack`."""
    return ipc.open_stream(io.BytesIO(data)).read_all()


def write(tables: Sequence[pa.Table], output_prefix: str, run_id: str, started: float, invocation: str,
          endpoint_url: Optional[str] = None) -> Optional[str]:
    """Write one invocation's statuses (sorted by shard id) as one Parquet file; returns its URI (None if empty)."""
    if not tables:
        return None
    t = pa.concat_tables(tables)
    t = t.take(pc.sort_indices(t, [("shard_id", "ascending")]))
    buf = io.BytesIO()
    # one row group up to 64 M shards: --only-failed reads its three columns in one range
    pq.write_table(t, buf, compression="zstd", row_group_size=1 << 26, coerce_timestamps="ms",
                   use_dictionary=["status", "outcome", "model", "host", "invocation"])
    uri = status_key(output_prefix, run_id, started, invocation)
    storage.write_bytes(uri, buf.getvalue(), endpoint_url, "application/vnd.apache.parquet")
    return uri


def _read_file(uri: str, size: int, columns: Optional[Sequence[str]], endpoint_url: Optional[str]) -> pa.Table:
    if size <= _WHOLE_READ:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint_url)), columns=columns)
    f = storage.RangedFile(uri, size, endpoint_url)
    f.fetch(size - 256 * 1024, size)
    pf = pq.ParquetFile(f)
    md, names = pf.metadata, pf.schema_arrow.names
    spans = []
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            if columns is None or names[c] in columns:
                col = md.row_group(g).column(c)
                first = min(x for x in (col.dictionary_page_offset, col.data_page_offset) if x is not None and x > 0)
                spans.append((first, first + col.total_compressed_size))
    f.fetch(min(s for s, _ in spans), max(e for _, e in spans))
    return pf.read(columns=columns)


def read_latest(output_prefix: str, run_id: str, endpoint_url: Optional[str] = None,
                columns: Optional[Sequence[str]] = None) -> pa.Table:
    """Every shard's latest status row of a run (by shard id); an empty table when it has none.

    One LIST of ``_runs/<run_id>/status/`` and one GET per invocation file (two for files over 8 MB).
    """
    prefix = status_dir(output_prefix, run_id) + "/"
    try:
        files = sorted((o for o in storage.list_objects(prefix, endpoint_url) if o.key.endswith(".parquet")),
                       key=lambda o: o.key.rsplit("/", 1)[-1])
    except storage.NotFound:
        files = []
    cols = None if columns is None else list(dict.fromkeys(["shard_id", *columns]))
    empty = STATUS_SCHEMA if cols is None else pa.schema([STATUS_SCHEMA.field(c) for c in cols])
    tables = [_read_file(storage.object_uri(prefix, o.key), o.size, cols, endpoint_url) for o in files]
    if not tables:
        return empty.empty_table()
    t = pa.concat_tables([x.cast(empty) for x in tables])
    order = np.concatenate([np.full(len(x), i) for i, x in enumerate(tables)])
    ids = t.column("shard_id").to_numpy()
    idx = np.lexsort((order, ids))  # by shard id, newest file last
    keep = idx[np.append(ids[idx][1:] != ids[idx][:-1], True)]
    return t.take(pa.array(keep))


def failed_ids(output_prefix: str, run_id: str, endpoint_url: Optional[str] = None) -> np.ndarray:
    """Shard ids whose latest status is failed (sorted)."""
    t = read_latest(output_prefix, run_id, endpoint_url, FAILED_COLUMNS)
    return t.filter(pc.not_equal(t.column("status"), "ok")).column("shard_id").to_numpy().astype(np.int64)


def records(t: pa.Table) -> list[dict]:
    """Rows as dicts with times as epoch seconds (None where absent): for the report and tests."""
    out = t.to_pylist()
    for r in out:
        for k in TIMES:
            if k in r and r[k] is not None:
                r[k] = r[k].timestamp()
    return out
