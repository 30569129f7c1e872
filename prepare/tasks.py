"""prepare's Spark task functions: check candidate images, and write one shard per batch.

Each takes a frozen :class:`PrepareSettings` (strings only) and does its own I/O through
:mod:`common.storage`; the driver only ever sees keys, reasons and manifest rows.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from common import storage
from common.images import check_png
from common.manifest import ShardEntry, shard_name
from common.shard import pack_shard

# Many small GETs per task: threads overlap S3 first-byte latency (boto3 clients are
# thread-safe); 16 keeps the connection pool (32) with room to spare.
FETCH_THREADS = 16


@dataclass(frozen=True)
class PrepareSettings:
    """What every prepare task needs."""

    input_uri: str
    output_uri: str
    batch_size: int
    endpoint_url: Optional[str] = None


@dataclass(frozen=True)
class Candidate:
    """A listed object that looks like a PNG: its key and the ETag seen at listing time."""

    key: str
    etag: str


def _fetch_all(candidates: Sequence[Candidate], settings: PrepareSettings) -> Iterator[bytes]:
    """GET each candidate (same order), pinned to its listed ETag, so a changed object is caught."""

    def get(c: Candidate) -> bytes:
        uri = storage.object_uri(settings.input_uri, c.key)
        return storage.read_bytes(uri, settings.endpoint_url, if_match=c.etag if storage.is_s3(uri) else None)

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        yield from pool.map(get, candidates)


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch task reports: the shard it wrote, or the images that kept it from writing."""

    shard_id: int
    entry: Optional[ShardEntry]
    bad: tuple[tuple[str, str], ...] = ()


def write_batch(shard_id: int, candidates: Sequence[Candidate], settings: PrepareSettings) -> BatchOutcome:
    """Fetch one batch and, if every image decodes, pack it into a RecordIO shard in memory and PUT it once.

    A batch with undecodable images writes nothing and reports them: the driver then cuts
    the batches again without them (shard boundaries move) and rewrites only what moved.

    Raises:
        StorageError: a GET or the PUT failed (an object changed since listing fails its ETag check).
    """
    pngs = list(_fetch_all(candidates, settings))
    bad = tuple((c.key, reason) for c, data in zip(candidates, pngs) if (reason := check_png(data, c.key)))
    if bad:
        return BatchOutcome(shard_id, None, bad)
    data = pack_shard(pngs)
    uri = storage.join(settings.output_uri, shard_name(shard_id))
    storage.write_bytes(uri, data, settings.endpoint_url)
    entry = ShardEntry(shard_id=shard_id, uri=uri, num_records=len(pngs), num_bytes=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), keys=tuple(c.key for c in candidates))
    return BatchOutcome(shard_id, entry)
