"""infer's Spark task: one manifest shard in, one Parquet object and one status record out.

    fetch (one GET, sha256 checked) -> unpack records -> decode + preprocess each image
    -> forward in batches of the bound size -> top-k -> Parquet in memory, read back -> one PUT

Everything the task needs travels in :class:`InferSettings` (strings and numbers); the
model is built once per executor Python process by :func:`common.model.get_predictor`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from common import storage
from common.images import INPUT_SIZE, BadImageError, decode_rgb, preprocess_into
from common.manifest import ShardEntry
from common.model import ModelError, ModelSpec, get_predictor, top_k
from common.output import (META_INPUT_DIGEST, META_INVOCATION, META_ROWS, META_ROWS_ERROR, STATUS_OK, ConflictError, ImageResult, input_digest, part_key,
                           predictions_table, shard_status_key, table_to_parquet)
from common.shard import ShardFormatError, unpack_shard


@dataclass(frozen=True)
class InferSettings:
    """What every infer task needs; picklable (see tests/test_infer_units.py)."""

    model: ModelSpec
    output_prefix: str
    run_id: str
    manifest_id: str
    top_k: int = 5
    # Spark's tries per task: the task records "failed" only on its last try and raises before.
    attempts: int = 1
    endpoint_url: Optional[str] = None
    # Overwrite part files even when they exist with a different input digest.
    force: bool = False
    # Unique per infer invocation: a try that finds its own invocation's file knows an earlier
    # try of the same task wrote it (reply lost) and counts it as written, not as done before.
    invocation: str = ""


PARQUET_TYPE = "application/vnd.apache.parquet"


class ShardError(RuntimeError):
    """A shard that cannot be processed as a whole (damaged, wrong size)."""


# Failures that another try cannot fix: recorded at once instead of retried by Spark.
PERMANENT = (ShardError, ShardFormatError, ConflictError, ModelError)


def _existing(key: str, digest: str, settings: InferSettings) -> Optional[dict]:
    """The part file's metadata if ``key`` holds this very work, None if absent; ConflictError otherwise."""
    meta = storage.read_metadata(key, settings.endpoint_url)
    if meta is None:
        return None
    if meta.get(META_INPUT_DIGEST) == digest:
        return meta
    raise ConflictError(
        f"{key} already exists from different input (digest {meta.get(META_INPUT_DIGEST, 'none')[:12]}, "
        f"this run: {digest[:12]}); not overwritten: use another --run-id, or --force to replace it"
    )


def _already_done(status: dict, key: str, meta: dict, settings: InferSettings) -> dict:
    """Status for a shard whose part file is there: written by this invocation (an earlier try whose
    reply was lost) or by an earlier one."""
    ours = bool(settings.invocation) and meta.get(META_INVOCATION) == settings.invocation
    status.update(status="ok", outcome="written" if ours else "already present", part=key,
                  rows=int(meta.get(META_ROWS, 0)) if ours else 0,
                  rows_error=int(meta.get(META_ROWS_ERROR, 0)) if ours else 0, t_end=time.time())
    return status


def _fetch_shard(entry: ShardEntry, settings: InferSettings) -> list[bytes]:
    data = storage.read_bytes(entry.uri, settings.endpoint_url)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry.num_bytes or digest != entry.sha256:
        raise ShardError(
            f"shard {entry.shard_id} ({entry.uri}): content does not match the manifest "
            f"({len(data)} bytes sha256 {digest[:12]}, expected {entry.num_bytes} bytes sha256 {entry.sha256[:12]})"
        )
    payloads = unpack_shard(data, entry.uri)
    if len(payloads) != entry.num_records:
        raise ShardError(f"shard {entry.shard_id} ({entry.uri}): {len(payloads)} records, manifest says {entry.num_records}")
    return payloads


def predict_images(payloads: list[bytes], keys: tuple[str, ...], predictor, k: int) -> tuple[list[ImageResult], float, float]:
    """Decode, preprocess and predict in batches of the bound size; an undecodable image fails only its row.

    Returns:
        ``(results in record order, seconds decoding, seconds in the model)``.
    """
    bs = predictor.batch_size
    results: list[ImageResult] = []
    decode_s = forward_s = 0.0
    batch = np.zeros((bs, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for start in range(0, len(payloads), bs):
        td = time.time()
        chunk = payloads[start : start + bs]
        errors: dict[int, str] = {}
        for i, png in enumerate(chunk):
            try:
                preprocess_into(decode_rgb(png, keys[start + i]), batch[i])
            except BadImageError as e:
                errors[i] = f"error: {e}"
                batch[i] = 0.0
        tf = time.time()
        decode_s += tf - td
        ids, probs = top_k(predictor.predict(batch[: len(chunk)]), k)
        forward_s += time.time() - tf
        for i in range(len(chunk)):
            rec = start + i
            if i in errors:
                results.append(ImageResult(keys[rec], rec, errors[i]))
            else:
                results.append(ImageResult(keys[rec], rec, STATUS_OK, ids[i].tolist(), probs[i].tolist()))
    return results, decode_s, forward_s


def infer_shard(entry: ShardEntry, settings: InferSettings) -> dict:
    """Process one shard and upload its predictions; returns the status record (without writing it)."""
    t0 = time.time()
    status: dict = {"shard_id": entry.shard_id, "uri": entry.uri, "t_start": t0}
    key = part_key(settings.output_prefix, settings.run_id, entry.shard_id)
    digest = input_digest(entry.sha256, settings.model.params_sha256 or "", settings.top_k)
    if not settings.force:
        meta = _existing(key, digest, settings)
        if meta is not None:  # a retry, a speculative copy or a rerun: the work is there already
            return _already_done(status, key, meta, settings)
    payloads = _fetch_shard(entry, settings)
    status["t_fetched"] = time.time()

    predictor, loaded = get_predictor(settings.model)
    status.update(model_loaded=loaded, model_load_s=round(predictor.load_seconds, 3) if loaded else 0.0)
    results, decode_s, forward_s = predict_images(payloads, entry.keys, predictor, settings.top_k)
    status["t_decoded"] = status["t_fetched"] + decode_s
    status["t_forwarded"] = status["t_decoded"] + forward_s

    table = predictions_table(results, predictor.labels, entry.shard_id, predictor.model_id, settings.manifest_id,
                              datetime.now(timezone.utc))
    data = table_to_parquet(table, key)
    rows_error = sum(r.status != STATUS_OK for r in results)
    meta = {META_INPUT_DIGEST: digest, META_ROWS: str(len(results)), META_ROWS_ERROR: str(rows_error),
            META_INVOCATION: settings.invocation}
    if settings.force:
        storage.write_bytes(key, data, settings.endpoint_url, PARQUET_TYPE, metadata=meta)
        outcome = "written"
    elif storage.put_if_absent(key, data, meta, settings.endpoint_url, PARQUET_TYPE):
        outcome = "written"
    else:  # another copy of this task (or an earlier try whose reply was lost) got there first
        existing = _existing(key, digest, settings)
        if existing is None:  # refused (409: a concurrent write in flight) yet absent: let Spark retry
            raise storage.StorageError(f"{key}: conditional PUT refused but no object is there yet")
        return _already_done(status, key, existing, settings)
    status.update(
        status="ok",
        outcome=outcome,
        part=key,
        rows=len(results),
        rows_ok=len(results) - rows_error,
        rows_error=rows_error,
        bytes=len(data),
        model=predictor.model_id,
        t_end=time.time(),
    )
    return status


def run_shard(entry: ShardEntry, settings: InferSettings, counter=None) -> dict:
    """The Spark task: :func:`infer_shard`, a status record, and the retry policy.

    A failure raises (so Spark retries it, perhaps elsewhere) until the last try; the last
    try records the shard as failed and returns, so the job goes on with the other shards.
    """
    from pyspark import TaskContext

    t_task = time.time()
    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0
    host = {"host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt}
    try:
        status = infer_shard(entry, settings)
    except Exception as e:  # noqa: BLE001 - every failure is either retried or recorded
        if attempt + 1 < settings.attempts and not isinstance(e, PERMANENT):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, PERMANENT + (storage.StorageError,)):
            message = f"{type(e).__name__}: {message}"
        status = {
            "shard_id": entry.shard_id,
            "uri": entry.uri,
            "status": "failed",
            "error": message,
            "traceback": traceback.format_exc(limit=8),
            "rows": 0,
            "t_end": time.time(),
        }
    status.update(host)
    status["run_id"] = settings.run_id
    status["t_task_start"] = t_task
    status["t_status_write"] = time.time()
    if counter is not None:  # the driver's live progress (an accumulator: merged as the task ends)
        counter.add((1, status.get("rows", 0), int(status["status"] != "ok")))
    try:
        storage.write_bytes(shard_status_key(settings.output_prefix, settings.run_id, entry.shard_id),
                            json.dumps(status, indent=1).encode(), settings.endpoint_url, "application/json")
    except storage.StorageError as e:
        status["status_write_error"] = str(e)
    status["t_task_end"] = time.time()
    return status
