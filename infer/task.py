"""infer's Spark task: a group of consecutive selected shards in, one Parquet object per shard out, and a
compact status per shard back to the driver.

For each shard, five named stages::

    check (HEAD: already done?) -> fetch (one GET, sha256 checked, records unpacked) -> decode (+ preprocess)
    -> predict (forward in batches of the bound size, top-k) -> write (Parquet in memory, read back, one PUT)

A task runs its shards in order as a small pipeline on three threads: while the model runs on
shard *i* (the task's own thread), a prefetch thread fetches and decodes shard *i + 1* and a
writer thread uploads shard *i − 1*'s Parquet and status.  At most one shard is prepared
ahead, so memory stays bounded (two input batches per task).  Everything that was per shard
stays per shard: its own object, status, conditional PUT and input digest; a permanent
error is recorded for that shard alone while the task goes on.

The Spark task (:func:`run_group`, a thin adapter) gets its group index; the broadcast
:class:`infer.plan.Plan` turns it into shard ids, the task reads those shards' rows from their manifest part
itself (two ranged GETs) and hands them to :func:`run_entries`, which needs no Spark.
Everything else the task needs travels in :class:`InferSettings` (strings and numbers); the
model is built once per executor Python process by :func:`common.model.get_predictor`.
Statuses go back to the driver as compressed Arrow IPC (common/status.py), which writes
them as one file per invocation.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Optional, Sequence

import numpy as np

from common import status as status_file
from common import storage
from common.devices import task_device
from common.errors import ModelError
from common.iceberg import FileStats, FileTarget
from common.images import DEFAULT_PREPROCESSING, Preprocessing, decode_into
from common.manifest import ShardEntry, read_shards
from common.model import get_predictor, top_k
from common.model_files import ModelSpec
from common.output import (
    META_INPUT_DIGEST,
    META_INVOCATION,
    META_ROWS,
    META_ROWS_ERROR,
    PARQUET_CONTENT_TYPE,
    STATUS_OK,
    ConflictError,
    ImageResult,
    input_digest,
    part_key,
    predictions_table,
    table_to_parquet,
)
from common.shard import ShardError, ShardFormatError, check_shard
from common.status import ShardStatus


@dataclass(frozen=True)
class InferSettings:
    """What every infer task needs; picklable (see tests/unit/common/test_formats.py)."""

    model: ModelSpec
    output_prefix: str
    run_id: str
    manifest_id: str
    top_k: int = 5
    # Spark's tries per task: the task records "failed" only on its last try and raises before.
    attempts: int = 1
    # endpoint, --sse (every part file carries it) and retries of every request the task makes
    store: storage.Store = storage.Store()
    # Overwrite part files even when they exist with a different input digest.
    force: bool = False
    # Unique per infer invocation: a try that finds its own invocation's file knows an earlier
    # try of the same task wrote it (reply lost) and counts it as written, not as done before.
    invocation: str = ""
    # What else determines the predictions besides shard, params and k (e.g. the precision):
    # part of each part file's input digest, so other settings never pass for the same work.
    digest_extra: str = ""
    # --image-size, --resize, --mean, --std
    prep: Preprocessing = DEFAULT_PREPROCESSING
    # --iceberg-table: rows carry run_id, and each part file's statistics go back with its status
    iceberg: Optional[FileTarget] = None




# Failures that another try cannot fix: recorded at once instead of retried by Spark.
PERMANENT = (ShardError, ShardFormatError, ConflictError, ModelError)


def shard_digest(entry: ShardEntry, settings: InferSettings) -> str:
    """The input digest a shard's part file carries (x-amz-meta-shardinfer-input-digest)."""
    return input_digest(entry.sha256, settings.model.params_sha256 or "", settings.top_k, settings.digest_extra)


def _existing(key: str, digest: str, settings: InferSettings) -> Optional[dict]:
    """The part file's metadata if ``key`` holds this very work, None if absent; ConflictError otherwise."""
    meta = storage.read_metadata(key, settings.store)
    if meta is None:
        return None
    if meta.get(META_INPUT_DIGEST) == digest:
        return meta
    raise ConflictError(
        f"{key} already exists from different input (digest {meta.get(META_INPUT_DIGEST, 'none')[:12]}, "
        f"this run: {digest[:12]}); not overwritten: use another --run-id, or --force to replace it"
    )


def _already_done(status: ShardStatus, key: str, meta: dict, settings: InferSettings) -> ShardStatus:
    """Status for a shard whose part file is there: written by this invocation (an earlier try whose
    reply was lost) or by an earlier one.  For an Iceberg table the file is not in the table yet (the driver
    selects no committed shard): its statistics come from the file itself (one GET)."""
    if not (settings.invocation and meta.get(META_INVOCATION) == settings.invocation):
        status.done("already present", key, 0)
    else:
        status.done("written", key, int(meta.get(META_ROWS, 0)), int(meta.get(META_ROWS_ERROR, 0)))
    if settings.iceberg is not None:
        status.iceberg = settings.iceberg.describe(status.shard_id, key, storage.read_bytes(key, settings.store))
    return status


def predict_batch(batch: np.ndarray, predictor, k: int) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Top-k ids and probabilities (``(n, 0)`` when k is 0) and the output layer's values (None without one)
    for every row of ``batch``, in forward passes of the bound size."""
    n = batch.shape[0]
    ids, probs, emb = [np.zeros((0, k), dtype=np.int64)], [np.zeros((0, k), dtype=np.float32)], []
    for start in range(0, n, predictor.batch_size):
        p, e = predictor.run(batch[start : start + predictor.batch_size])
        if k and p is not None:
            i, pk = top_k(p, k)
            ids.append(i)
            probs.append(pk)
        if e is not None:
            emb.append(e)
    if not k:
        ids, probs = [np.zeros((n, 0), dtype=np.int64)], [np.zeros((n, 0), dtype=np.float32)]
    return np.concatenate(ids), np.concatenate(probs), (np.concatenate(emb) if emb else None)


def image_results(keys: Sequence[str], errors: dict[int, str], ids: np.ndarray, probs: np.ndarray) -> list[ImageResult]:
    """One :class:`ImageResult` per record: the prediction, or the image's error and none."""
    classify = ids.shape[1] > 0
    return [ImageResult(key, rec, errors[rec]) if rec in errors
            else ImageResult(key, rec, STATUS_OK, ids[rec].tolist() if classify else None,
                             probs[rec].tolist() if classify else None)
            for rec, key in enumerate(keys)]


@dataclass
class _Prepared:
    """A shard after the prefetch stage: decoded input, or already done, or an error to handle."""

    entry: ShardEntry
    status: ShardStatus
    key: str
    digest: str
    batch: Optional[np.ndarray] = None
    errors: dict = field(default_factory=dict)
    done: Optional[ShardStatus] = None
    error: Optional[BaseException] = None
    embeddings: Optional[np.ndarray] = None


class _Buffers:
    """Two reusable input arrays per task: the one the model reads and the one being decoded."""

    def __init__(self, size: int) -> None:
        self._arrays: list[np.ndarray] = []
        self._next = 0
        self.size = size

    def take(self, rows: int) -> np.ndarray:
        h, w = self.size
        if len(self._arrays) < 2:
            self._arrays.append(np.zeros((0, 3, h, w), dtype=np.float32))
        i = self._next
        self._next = (i + 1) % 2
        if self._arrays[i].shape[0] < rows:
            self._arrays[i] = np.empty((rows, 3, h, w), dtype=np.float32)
        return self._arrays[i][:rows]


def check(prep: _Prepared, settings: InferSettings) -> Optional[ShardStatus]:
    """Stage 1 (prefetch thread): the shard's status when its part file holds this very work already (a retry, a
    speculative copy or a rerun: one HEAD), else None.  Raises ConflictError for a file of other input."""
    if settings.force:
        return None
    meta = _existing(prep.key, prep.digest, settings)
    return None if meta is None else _already_done(prep.status, prep.key, meta, settings)


def fetch(entry: ShardEntry, settings: InferSettings) -> list[bytes]:
    """Stage 2 (prefetch thread): the shard's images, one GET, its size, sha256 and records checked against the
    manifest (common.shard.check_shard)."""
    return check_shard(entry, storage.read_bytes(entry.uri, settings.store))


def decode(prep: _Prepared, payloads: list[bytes], settings: InferSettings, buffers: _Buffers) -> None:
    """Stage 3 (prefetch thread): every image decoded and preprocessed into the model's input batch; an image that
    does not decode is an error of its row alone."""
    prep.batch = buffers.take(len(payloads))
    prep.errors = decode_into(payloads, prep.entry.keys, prep.batch, settings.prep)


def predict(prep: _Prepared, settings: InferSettings) -> list[ImageResult]:
    """Stage 4 (the task's own thread): the forward passes, top-k and the output layer."""
    predictor, loaded = get_predictor(settings.model)
    s = prep.status
    s.model_loaded, s.model_load_s = loaded, round(predictor.load_seconds, 3) if loaded else 0.0
    s.model, s.t_forward_start = predictor.model_id, time.time()
    ids, probs, prep.embeddings = predict_batch(prep.batch, predictor, settings.top_k)
    s.t_forwarded = time.time()
    prep.batch = None  # the buffer is the prefetch stage's again
    return image_results(prep.entry.keys, prep.errors, ids, probs)


def write(prep: _Prepared, results: list[ImageResult], settings: InferSettings) -> ShardStatus:
    """Stage 5 (writer thread): Parquet in memory, checked, then one (conditional) PUT."""
    status, key, digest = prep.status, prep.key, prep.digest
    predictor, _ = get_predictor(settings.model)
    table = predictions_table(results, predictor.labels, prep.entry.shard_id, predictor.model_id, settings.manifest_id,
                              datetime.now(timezone.utc), prep.embeddings,
                              iceberg_run_id=settings.run_id if settings.iceberg is not None else None)
    data = table_to_parquet(table, key)
    rows_error = sum(r.status != STATUS_OK for r in results)
    meta = {META_INPUT_DIGEST: digest, META_ROWS: str(len(results)), META_ROWS_ERROR: str(rows_error),
            META_INVOCATION: settings.invocation}
    if settings.force:
        storage.write_bytes(key, data, settings.store, PARQUET_CONTENT_TYPE, metadata=meta,
                            encryption=settings.store.encryption)
    elif not storage.put_if_absent(key, data, meta, settings.store, PARQUET_CONTENT_TYPE,
                                   encryption=settings.store.encryption):
        # another copy of this task (or an earlier try whose reply was lost) got there first
        existing = _existing(key, digest, settings)
        if existing is None:  # refused (409: a concurrent write in flight) yet absent: let Spark retry
            raise storage.StorageError(f"{key}: conditional PUT refused but no object is there yet")
        return _already_done(status, key, existing, settings)
    if settings.iceberg is not None:  # from the bytes just uploaded: the file is never read back
        status.iceberg = settings.iceberg.describe(prep.entry.shard_id, key, data)
    return status.done("written", key, len(results), rows_error, len(data))


def _prepare(entry: ShardEntry, settings: InferSettings, buffers: _Buffers) -> _Prepared:
    """The prefetch thread's work for one shard: check, fetch, decode; an error is kept for the task thread."""
    prep = _Prepared(entry, ShardStatus(entry.shard_id, entry.uri, t_start=time.time()),
                     part_key(settings.output_prefix, settings.run_id, entry.shard_id), shard_digest(entry, settings))
    try:
        prep.done = check(prep, settings)
        if prep.done is None:
            payloads = fetch(entry, settings)
            prep.status.t_fetched = time.time()
            decode(prep, payloads, settings, buffers)
            prep.status.t_decoded = time.time()
    except Exception as e:  # noqa: BLE001 - handed to the task thread, which applies the retry policy
        prep.error = e
    return prep


def failed_status(entry: ShardEntry, e: BaseException) -> ShardStatus:
    """The status of a shard that failed for good: the error's first line, and its traceback."""
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, PERMANENT + (storage.StorageError,)):
        message = f"{type(e).__name__}: {message}"
    return ShardStatus(entry.shard_id, entry.uri, error=message, t_end=time.time(),
                       traceback="".join(traceback.format_exception(type(e), e, e.__traceback__, limit=8)))


class _Group:
    """The bookkeeping of one task: retry policy, status records, progress."""

    def __init__(self, settings: InferSettings, attempt: int, counter, task: int = 0) -> None:
        self.settings, self.attempt, self.counter = settings, attempt, counter
        self.task = task
        self.t_task = time.time()
        self.statuses: list[ShardStatus] = []
        self.retry: Optional[BaseException] = None  # the first error another try may fix

    def failed(self, entry: ShardEntry, e: BaseException) -> Optional[ShardStatus]:
        """A failure is recorded on the last try or when permanent; otherwise the group is retried later."""
        if self.attempt + 1 < self.settings.attempts and not isinstance(e, PERMANENT):
            self.retry = self.retry or e
            return None
        return failed_status(entry, e)

    def record(self, status: ShardStatus) -> ShardStatus:
        """Stamp and keep one shard's final status (called on the writer thread)."""
        status.host, status.pid, status.attempt, status.task = socket.gethostname(), os.getpid(), self.attempt, self.task
        status.invocation, status.t_task_start, status.t_task_end = self.settings.invocation, self.t_task, time.time()
        self.statuses.append(status)
        return status

    def finish(self) -> list[ShardStatus]:
        """The statuses by shard id, or raise so that Spark tries the group again (done shards are then skipped)."""
        if self.retry is not None:
            raise self.retry
        if self.counter is not None:  # the driver's live progress (an accumulator: merged as the task ends)
            self.counter.add((len(self.statuses), sum(s.rows for s in self.statuses),
                              sum(s.status != "ok" for s in self.statuses)))
        return sorted(self.statuses, key=lambda s: s.shard_id)


def run_group(group: int, plan, settings: InferSettings, counter=None) -> tuple[bytes, list[FileStats]]:
    """The Spark task for group ``group`` of ``plan`` (an :class:`infer.plan.Plan`, broadcast): the thin adapter
    between Spark and :func:`run_entries` — its shard rows from the manifest, its try number and resources from
    Spark's TaskContext.

    Returns:
        The group's statuses, packed by :func:`common.status.pack`, and (``--iceberg-table``) the statistics of
        each part file its ok shards have (empty otherwise).
    """
    from pyspark import TaskContext

    ctx = TaskContext.get()
    entries = read_shards(plan.manifest, plan.group_ids(group), settings.store)
    statuses = run_entries(entries, settings, counter, group, attempt=ctx.attemptNumber() if ctx is not None else 0,
                           resources=ctx.resources() if ctx is not None else None)
    return status_file.pack(statuses), [s.iceberg for s in statuses if s.iceberg is not None]


def run_entries(entries: Sequence[ShardEntry], settings: InferSettings, counter=None, task: int = 0,
                attempt: int = 0, resources=None) -> list[ShardStatus]:
    """The shards of one group in order, pipelined through the stages (:func:`check`, :func:`fetch`,
    :func:`decode` on a prefetch thread; :func:`predict` on this one; :func:`write` on a writer thread), and the
    retry policy.  Needs no Spark: ``attempt`` is the task's try (0 first), ``resources`` Spark's for the task.

    A shard whose failure another try may fix makes the whole task fail *after* the other
    shards are done, so Spark retries the group and the retry skips every shard already
    written (one HEAD each).  On the last try, and for permanent errors at once, the shard
    is recorded as failed and the task goes on.

    Returns:
        One status record per shard, by shard id.
    """
    group = _Group(settings, attempt, counter, task)
    try:  # --device gpu: the GPU Spark assigned this task
        device = task_device(settings.model.device, resources)
    except ModelError as e:
        for entry in entries:
            group.record(failed_status(entry, e))
        return group.finish()
    if device != settings.model.device:
        settings = replace(settings, model=replace(settings.model, device=device))
    buffers = _Buffers(settings.prep.hw)

    def write_recorded(prep: _Prepared, results: list[ImageResult]) -> None:
        try:
            status = write(prep, results, settings)
        except Exception as e:  # noqa: BLE001 - every failure is either retried or recorded
            status = group.failed(prep.entry, e)
        if status is not None:
            group.record(status)

    with ThreadPoolExecutor(1, thread_name_prefix="shardinfer-prefetch") as prefetch, \
            ThreadPoolExecutor(1, thread_name_prefix="shardinfer-write") as writer:
        upcoming: Future = prefetch.submit(_prepare, entries[0], settings, buffers)
        pending: Optional[Future] = None
        recorded: list[Future] = []  # waited on at the end, so that nothing the writer does fails unseen
        for i in range(len(entries)):
            prep = upcoming.result()
            if i + 1 < len(entries):
                upcoming = prefetch.submit(_prepare, entries[i + 1], settings, buffers)
            if prep.done is not None:
                recorded.append(writer.submit(group.record, prep.done))  # recorded in order on the writer thread
                continue
            try:
                if prep.error is not None:
                    raise prep.error
                results = predict(prep, settings)
            except Exception as e:  # noqa: BLE001
                status = group.failed(prep.entry, e)
                if status is not None:
                    recorded.append(writer.submit(group.record, status))
                continue
            if pending is not None:
                pending.result()  # at most one write in flight
            pending = writer.submit(write_recorded, prep, results)
            recorded.append(pending)
        for future in recorded:
            future.result()
    return group.finish()
