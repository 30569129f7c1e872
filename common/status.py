"""The status contract: one Parquet file of per-shard statuses per infer invocation.

    <output>/_runs/<run_id>/status/<YYYYmmddTHHMMSS>-<invocation>.parquet

written by the driver at the end of each invocation (outside the table location), one row
per shard that invocation ran: ok (written, or already present) or failed with the error,
row counts, stage timestamps and the executor (the run id is in the path, as for predictions).  A shard's *latest* status is the row from
the newest file that holds it (file names sort by start time).  ``--only-failed``, the run
report and compaction read these files: one LIST and one or two GETs per invocation, never
a request per shard.

Tasks hand their statuses to the driver in a compact form (:func:`pack`: ~50 bytes per shard),
and the driver streams them into the file as each batch of tasks ends (:class:`Writer`), so it
never holds every shard's status at once.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import ranged, storage
from common.output import PARQUET_CONTENT_TYPE, run_dir

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


@dataclass
class ShardStatus:
    """One shard's outcome in one task, as the task builds it stage by stage (times: epoch seconds)."""

    shard_id: int
    uri: str
    status: str = "failed"  # "ok" or "failed"
    outcome: str = "failed"  # "written", "already present" or "failed"
    error: Optional[str] = None
    traceback: Optional[str] = None
    part: Optional[str] = None  # the part file's URI
    rows: int = 0
    rows_error: int = 0
    bytes: int = 0
    t_start: Optional[float] = None
    t_fetched: Optional[float] = None
    t_decoded: Optional[float] = None
    t_forward_start: Optional[float] = None
    t_forwarded: Optional[float] = None
    t_end: Optional[float] = None
    t_task_start: Optional[float] = None
    t_task_end: Optional[float] = None
    model: Optional[str] = None
    model_loaded: bool = False
    model_load_s: float = 0.0
    host: Optional[str] = None
    pid: Optional[int] = None
    attempt: Optional[int] = None
    task: Optional[int] = None
    invocation: str = ""
    # --iceberg-table: the part file's statistics (common.iceberg.FileStats) for the driver's commit; travels
    # beside the packed statuses, never into the status file
    iceberg: Optional[object] = None

    def done(self, outcome: str, part: str, rows: int, rows_error: int = 0, nbytes: int = 0) -> "ShardStatus":
        """Mark it ok: ``outcome`` "written" or "already present"."""
        self.status, self.outcome, self.part = "ok", outcome, part
        self.rows, self.rows_error, self.bytes, self.t_end = rows, rows_error, nbytes, time.time()
        return self


def status_dir(output_prefix: str, run_id: str) -> str:
    """``<output>/_runs/<run_id>/status``."""
    return storage.join(run_dir(output_prefix, run_id), STATUS_DIR)


def status_key(output_prefix: str, run_id: str, started: float, invocation: str) -> str:
    """Where one invocation's status file goes: names sort by the invocation's start."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    return storage.join(status_dir(output_prefix, run_id), f"{stamp}-{invocation}.parquet")


# What a task sends back per shard: fixed-width numbers (times as float32 seconds after the
# task's start); strings that are the same for the whole task travel once per task, and an
# error text only for a failed shard.  ~50 bytes per shard plus ~150 per task.
_PACKED = np.dtype([("shard_id", "<i4"), ("code", "i1"), ("rows", "<i4"), ("rows_error", "<i4"), ("bytes", "<i8"),
                    *((t, "<f4") for t in TIMES[:6]), ("model_loaded", "?"), ("model_load_s", "<f4")])
_OUTCOMES = ("written", "already present", "failed")


def pack(rows: Sequence[ShardStatus]) -> bytes:
    """A task's statuses in the compact form it returns to the driver (see :func:`unpack`)."""
    if not rows:
        return pickle.dumps(((), b"", {}), protocol=5)
    first = rows[0]
    t0 = min(r.t_task_start or r.t_start or 0.0 for r in rows)
    arr = np.zeros(len(rows), dtype=_PACKED)
    for i, r in enumerate(rows):
        times = (getattr(r, t) for t in TIMES[:6])
        arr[i] = (r.shard_id, _OUTCOMES.index(r.outcome), r.rows, r.rows_error, r.bytes,
                  *(np.nan if t is None else t - t0 for t in times), r.model_loaded, r.model_load_s)
    task = (first.host, first.pid, first.attempt, first.task, first.invocation, t0,
            max(r.t_task_end or 0.0 for r in rows), first.model)
    errors = {r.shard_id: (r.error, r.traceback) for r in rows if r.status != "ok"}
    return pickle.dumps((task, arr.tobytes(), errors), protocol=5)


def unpack(data: bytes) -> pa.Table:
    """A task's packed statuses as a table in :data:`STATUS_SCHEMA`."""
    task, raw, errors = pickle.loads(data)
    arr = np.frombuffer(raw, dtype=_PACKED)
    if not len(arr):
        return STATUS_SCHEMA.empty_table()
    host, pid, attempt, group, invocation, t0, t_end, model = task
    n = len(arr)
    code = arr["code"]
    ids = arr["shard_id"].tolist()

    def times(name):
        v = arr[name].astype(np.float64)
        ms = np.where(np.isnan(v), 0, np.round((t0 + np.nan_to_num(v)) * 1000)).astype(np.int64)
        return pa.array(ms, mask=np.isnan(v)).cast(_TS)

    cols = {
        "shard_id": pa.array(arr["shard_id"]),
        "status": pa.array(np.where(code == 2, "failed", "ok").tolist()),
        "error": pa.array([errors.get(i, (None, None))[0] for i in ids], pa.string()),
        "outcome": pa.array([_OUTCOMES[c] for c in code.tolist()]),
        "rows": pa.array(arr["rows"]), "rows_error": pa.array(arr["rows_error"]), "bytes": pa.array(arr["bytes"]),
        **{t: times(t) for t in TIMES[:6]},
        "t_task_start": pa.array(np.full(n, int(t0 * 1000))).cast(_TS),
        "t_task_end": pa.array(np.full(n, int(t_end * 1000))).cast(_TS),
        "model": pa.array([model] * n, pa.string()),
        "model_loaded": pa.array(arr["model_loaded"]), "model_load_s": pa.array(arr["model_load_s"]),
        "host": pa.array([host] * n, pa.string()), "pid": pa.array([pid] * n, pa.int32()),
        "attempt": pa.array([attempt] * n, pa.int32()), "task": pa.array([group] * n, pa.int32()),
        "traceback": pa.array([errors.get(i, (None, None))[1] for i in ids], pa.string()),
        "invocation": pa.array([invocation] * n, pa.string()),
    }
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in STATUS_SCHEMA], schema=STATUS_SCHEMA)


class Writer:
    """One invocation's status file, written as results arrive (one row group per batch of tasks)
    to a local file and published with one upload at :meth:`close`; keeps the summary counts,
    so the driver never holds every shard's status at once."""

    MAX_ERRORS = 1000

    def __init__(self, output_prefix: str, run_id: str, started: float, invocation: str,
                 endpoint_url: storage.Endpoint = None, encryption: Optional[storage.Encryption] = None) -> None:
        self.uri = status_key(output_prefix, run_id, started, invocation)
        self.endpoint_url, self.encryption = endpoint_url, encryption
        self._tmp = tempfile.NamedTemporaryFile(suffix=".parquet", delete=False)
        self._tmp.close()
        self._writer = pq.ParquetWriter(self._tmp.name, STATUS_SCHEMA, compression="zstd",
                                        use_dictionary=["status", "outcome", "model", "host", "invocation"])
        self.shards = self.written = self.already = self.images = self.image_errors = self.model_loads = 0
        self.failed: list[int] = []
        self.failed_count = 0
        self.errors: dict[int, str] = {}

    def add(self, packed: Sequence[bytes]) -> None:
        """Append the statuses of some tasks (in shard order)."""
        tables = [unpack(b) for b in packed]
        if not tables:
            return
        t = pa.concat_tables(tables)
        self._writer.write_table(t, row_group_size=1 << 26)
        outcome = t.column("outcome").to_numpy(zero_copy_only=False)
        written = outcome == "written"
        self.shards += t.num_rows
        self.written += int(written.sum())
        self.already += int((outcome == "already present").sum())
        self.images += int(t.column("rows").to_numpy()[written].sum())
        self.image_errors += int(t.column("rows_error").to_numpy()[written].sum())
        self.model_loads += int(t.column("model_loaded").to_numpy(zero_copy_only=False).sum())
        bad = np.flatnonzero(outcome == "failed")
        self.failed_count += len(bad)
        if len(bad) and len(self.failed) < self.MAX_ERRORS:
            ids, errs = t.column("shard_id").to_numpy(), t.column("error").to_pylist()
            for i in bad[: self.MAX_ERRORS - len(self.failed)]:
                self.failed.append(int(ids[i]))
                self.errors[int(ids[i])] = errs[i] or ""

    def close(self) -> Optional[str]:
        """Publish the file (one object); returns its URI, or None when no shard ran."""
        self._writer.close()
        try:
            if self.shards == 0:
                return None
            storage.upload_file(self._tmp.name, self.uri, self.endpoint_url, PARQUET_CONTENT_TYPE,
                                encryption=self.encryption)
            return self.uri
        finally:
            os.unlink(self._tmp.name)


def _read_file(uri: str, size: int, columns: Optional[Sequence[str]], endpoint_url: storage.Endpoint,
               whole_read: int = _WHOLE_READ) -> pa.Table:
    if size <= whole_read:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint_url)), columns=columns)
    # the footer: ~3 KB per row group (one per Spark job of 20,000 tasks)
    return ranged.RangedParquet(uri, size, endpoint_url).read(columns=columns)


def read_latest(output_prefix: str, run_id: str, endpoint_url: storage.Endpoint = None,
                columns: Optional[Sequence[str]] = None, whole_read: int = _WHOLE_READ) -> pa.Table:
    """Every shard's latest status row of a run (by shard id); an empty table when it has none.

    One LIST of ``_runs/<run_id>/status/`` and one GET per invocation file; a file over ``whole_read``
    bytes (8 MB: ~500,000 shards) costs a GET of its tail (the footer) and one of the wanted columns.
    """
    prefix = status_dir(output_prefix, run_id) + "/"
    try:
        files = sorted((o for o in storage.list_objects(prefix, endpoint_url) if o.key.endswith(".parquet")),
                       key=lambda o: o.key.rsplit("/", 1)[-1])
    except storage.NotFound:
        files = []
    cols = None if columns is None else list(dict.fromkeys(["shard_id", *columns]))
    empty = STATUS_SCHEMA if cols is None else pa.schema([STATUS_SCHEMA.field(c) for c in cols])
    tables = [_read_file(storage.object_uri(prefix, o.key), o.size, cols, endpoint_url, whole_read) for o in files]
    if not tables:
        return empty.empty_table()
    t = pa.concat_tables([x.cast(empty) for x in tables])
    order = np.concatenate([np.full(len(x), i) for i, x in enumerate(tables)])
    ids = t.column("shard_id").to_numpy()
    idx = np.lexsort((order, ids))  # by shard id, newest file last
    keep = idx[np.append(ids[idx][1:] != ids[idx][:-1], True)]
    return t.take(pa.array(keep))


def failed_ids(output_prefix: str, run_id: str, endpoint_url: storage.Endpoint = None) -> np.ndarray:
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
