"""The manifest contract: ``manifest.parquet`` (one row per shard) and ``skipped.parquet``.

Documented for users in ``manifests/README.md``; bump :data:`FORMAT_VERSION` whenever a
column or metadata key changes meaning, so an older reader refuses a newer file clearly.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = "1"
MANIFEST_NAME = "manifest.parquet"
SKIPPED_NAME = "skipped.parquet"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("num_records", pa.int32(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("keys", pa.list_(pa.string()), nullable=False),
    ]
)
SKIPPED_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("reason", pa.string(), nullable=False)])

# Key-value metadata of manifest.parquet (all values are strings).
META_MANIFEST_ID = b"shardinfer.manifest_id"
META_INPUT = b"shardinfer.input"
META_BATCH = b"shardinfer.batch_size"
META_CREATED = b"shardinfer.created_at"
META_VERSION = b"shardinfer.format_version"
META_NUM_IMAGES = b"shardinfer.num_images"
META_NUM_SKIPPED = b"shardinfer.num_skipped"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names it."""


@dataclass(frozen=True)
class ShardEntry:
    """One manifest row: what a Spark task needs to process one shard."""

    shard_id: int
    uri: str
    num_records: int
    num_bytes: int
    sha256: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """A read manifest: its rows and metadata."""

    uri: str
    manifest_id: str
    input_uri: str
    batch_size: int
    created_at: str
    entries: tuple[ShardEntry, ...]

    @property
    def num_images(self) -> int:
        """Images in all shards."""
        return sum(e.num_records for e in self.entries)


def shard_name(shard_id: int) -> str:
    """``shards/shard-00042.rec``: the shard's path under prepare's ``--output``."""
    return f"shards/shard-{shard_id:05d}.rec"


def compute_manifest_id(entries: Sequence[ShardEntry]) -> str:
    """A content id: the same shards (bytes and keys) give the same id on every rerun of prepare."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.shard_id):
        h.update(json.dumps([e.shard_id, e.sha256, list(e.keys)], ensure_ascii=False).encode())
    return "m" + h.hexdigest()[:16]


def manifest_to_bytes(entries: Sequence[ShardEntry], input_uri: str, batch_size: int, num_skipped: int,
                      created_at: datetime | None = None) -> tuple[bytes, str]:
    """Serialise manifest rows with their metadata.

    Returns:
        ``(parquet_bytes, manifest_id)``.
    """
    entries = sorted(entries, key=lambda e: e.shard_id)
    ids = [e.shard_id for e in entries]
    if ids != list(range(len(ids))):
        raise ManifestError(f"shard ids must be 0..{len(ids) - 1} without gaps, got {ids[:10]}...")
    manifest_id = compute_manifest_id(entries)
    created = (created_at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    table = pa.Table.from_pydict(
        {
            "shard_id": [e.shard_id for e in entries],
            "uri": [e.uri for e in entries],
            "num_records": [e.num_records for e in entries],
            "num_bytes": [e.num_bytes for e in entries],
            "sha256": [e.sha256 for e in entries],
            "keys": [list(e.keys) for e in entries],
        },
        schema=MANIFEST_SCHEMA,
    ).replace_schema_metadata(
        {
            META_MANIFEST_ID: manifest_id,
            META_INPUT: input_uri,
            META_BATCH: str(batch_size),
            META_CREATED: created,
            META_VERSION: FORMAT_VERSION,
            META_NUM_IMAGES: str(sum(e.num_records for e in entries)),
            META_NUM_SKIPPED: str(num_skipped),
        }
    )
    return _to_parquet(table), manifest_id


def skipped_to_bytes(rows: Iterable[tuple[str, str]]) -> bytes:
    """Serialise ``(key, reason)`` rows, sorted by key."""
    rows = sorted(rows)
    table = pa.Table.from_pydict({"key": [k for k, _ in rows], "reason": [r for _, r in rows]}, schema=SKIPPED_SCHEMA)
    return _to_parquet(table)


def _to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def manifest_from_bytes(data: bytes, uri: str) -> Manifest:
    """Parse and check a manifest.

    Raises:
        ManifestError: not Parquet, an unknown format version, or missing columns/metadata.
    """
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise ManifestError(f"{uri}: not a readable Parquet manifest: {e}") from e
    meta = table.schema.metadata or {}
    version = meta.get(META_VERSION, b"").decode()
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{uri}: manifest format version {version or '(none)'!r} is not supported "
            f"(this shardinfer reads version {FORMAT_VERSION!r}); rerun prepare with this version"
        )
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.schema.names]
    if missing:
        raise ManifestError(f"{uri}: manifest lacks columns {missing}")
    for k in (META_MANIFEST_ID, META_INPUT, META_BATCH, META_CREATED):
        if k not in meta:
            raise ManifestError(f"{uri}: manifest metadata lacks {k.decode()!r}")
    cols = table.select(MANIFEST_SCHEMA.names).to_pydict()
    entries = tuple(
        ShardEntry(int(s), u, int(n), int(b), h, tuple(k))
        for s, u, n, b, h, k in zip(*(cols[n] for n in MANIFEST_SCHEMA.names))
    )
    for e in entries:
        if e.num_records != len(e.keys):
            raise ManifestError(f"{uri}: shard {e.shard_id} has num_records={e.num_records} but {len(e.keys)} keys")
    return Manifest(
        uri=uri,
        manifest_id=meta[META_MANIFEST_ID].decode(),
        input_uri=meta[META_INPUT].decode(),
        batch_size=int(meta[META_BATCH]),
        created_at=meta[META_CREATED].decode(),
        entries=tuple(sorted(entries, key=lambda e: e.shard_id)),
    )
