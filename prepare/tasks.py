"""prepare's packing task: a part's candidate images in, its shards and its manifest part out.

Takes a frozen :class:`PrepareSettings` (strings only) and does its own I/O through
:mod:`common.storage`; the driver only ever sees the part's index row and skipped images.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from common import storage
from common.images import DEFAULT_DECODE, DEFAULT_FORMATS, admit
from common.manifest import (
    PartEntry,
    ShardEntry,
    describe_part,
    part_name,
    part_to_bytes,
    rows_digest,
    shard_name,
    shard_table,
)
from common.output import PARQUET_CONTENT_TYPE
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
    # endpoint, --sse (every shard and part carries it) and retries of every request the task makes
    store: storage.Store = storage.Store()
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_side: Optional[int] = None  # --max-side: store larger images downscaled (common.images.admit)
    decode: str = DEFAULT_DECODE  # --decode: how admit checks and downscales a JPEG


@dataclass(frozen=True)
class Candidate:
    """A listed object whose extension makes it a candidate: its key and the ETag seen at listing time."""

    key: str
    etag: str


GONE = "listed but no longer exists"


def _fetcher(settings: PrepareSettings):
    def get(c: Candidate):
        uri = storage.object_uri(settings.input_uri, c.key)
        pin = c.etag if storage.is_s3(uri) and c.etag else None
        try:
            return storage.read_bytes(uri, settings.store, if_match=pin)
        except storage.NotFound:  # deleted between listing (or the inventory) and now: skipped, with the reason
            return None
    return get


def fetch_batches(batches: Sequence[Sequence[Candidate]], settings: PrepareSettings) -> Iterator[list[bytes]]:
    """Each batch's bytes (same order; None for an object that is gone), GETs in threads, one batch
    fetched ahead: memory stays two batches however large the part.  A GET is pinned to the listed
    ETag when there is one, so an object changed since listing is caught."""
    get = _fetcher(settings)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        ahead = [pool.submit(get, c) for c in batches[0]] if batches else []
        for i in range(len(batches)):
            current = ahead
            ahead = [pool.submit(get, c) for c in batches[i + 1]] if i + 1 < len(batches) else []
            yield [f.result() for f in current]


@dataclass(frozen=True)
class PartOutcome:
    """What a part task reports to the driver: the index row, the part's content digest, and the
    images it skipped because they do not decode (key, reason)."""

    part: PartEntry
    digest: str
    bad: tuple[tuple[str, str], ...] = ()


def write_part(part_id: int, first_shard_id: int, candidates: Sequence[Candidate],
               settings: PrepareSettings) -> PartOutcome:
    """One prepare task: cut its candidates (sorted, consecutive in the global order) into batches,
    write one shard per batch and then the manifest part that lists them.

    Shard *i* of the part is shard id ``first_shard_id + i`` and holds the images of batch *i*
    that decode; an undecodable image is skipped with its reason (its shard is one image
    short, never padded or refilled from the next batch, so no other shard moves).

    Raises:
        StorageError: a GET or a PUT failed (an object changed since listing fails its ETag check).
    """
    batches = [candidates[i : i + settings.batch_size] for i in range(0, len(candidates), settings.batch_size)]
    entries, bad = [], []
    for i, (batch, images) in enumerate(zip(batches, fetch_batches(batches, settings))):
        keep = []
        for c, data in zip(batch, images):
            got = admit(data, c.key, settings.formats, settings.max_side, settings.decode) if data is not None else None
            if got is None or got.reason:
                bad.append((c.key, GONE if got is None else got.reason))
            else:
                keep.append((c.key, got))
        data = pack_shard([a.data for _, a in keep])
        shard_id = first_shard_id + i
        uri = storage.join(settings.output_uri, shard_name(shard_id))
        storage.write_bytes(uri, data, settings.store, encryption=settings.store.encryption)
        originals = tuple(a.original for _, a in keep)
        entries.append(ShardEntry(shard_id=shard_id, uri=uri, num_records=len(keep), num_bytes=len(data),
                                  sha256=hashlib.sha256(data).hexdigest(), keys=tuple(k for k, _ in keep),
                                  originals=originals if any(originals) else None))
    table = shard_table(entries)
    uri = storage.join(settings.output_uri, part_name(part_id))
    data = part_to_bytes(table, uri)
    storage.write_bytes(uri, data, settings.store, PARQUET_CONTENT_TYPE, encryption=settings.store.encryption)
    return PartOutcome(describe_part(part_id, uri, table, data), rows_digest(table), tuple(bad))
