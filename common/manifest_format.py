"""The manifest's format as pure functions (no I/O): its schemas, metadata keys and rows, a part's and the
index's bytes, the digests that make the manifest id, and the parsing and checking of an index.  The contract
and its reading and writing are :mod:`common.manifest`; users' documentation, ``manifests/README.md``.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import uris
from common.errors import ManifestError  # noqa: F401 - raised here, defined with the other user errors

FORMAT_VERSION = "3"
READABLE_VERSIONS = ("1", "2", "3")
MANIFEST_NAME = "manifest.parquet"
PARTS_DIR = "manifest"
SKIPPED_NAME = "skipped.parquet"
# A part is what one prepare task writes: 1,024 shards (65,536 images at --batch 64), so a
# billion images make ~15,300 parts and an index of ~1 MB.  Row groups of 32 shards: a task
# of 4-12 shards reads one or two of them (~25 KB) plus the footer.
SHARDS_PER_PART = 1024
ROW_GROUP_SHARDS = 32

SHARD_SCHEMA = pa.schema(
    [
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("num_records", pa.int32(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("keys", pa.list_(pa.string()), nullable=False),
    ]
)
# Format 3: per key (record order), null when the shard stores the object's own bytes, else the original's
# size (as its header gives it), bytes and sha256; the whole list is null for a shard with nothing downscaled.
ORIGINAL_TYPE = pa.struct([pa.field("width", pa.int32()), pa.field("height", pa.int32()),
                           pa.field("num_bytes", pa.int64()), pa.field("sha256", pa.string())])
ORIGINALS = pa.field("originals", pa.list_(ORIGINAL_TYPE), nullable=True)
V2_SHARD_SCHEMA = SHARD_SCHEMA
SHARD_SCHEMA = SHARD_SCHEMA.append(ORIGINALS)
MANIFEST_SCHEMA = SHARD_SCHEMA  # the shard rows' schema (Athena's manifest table; older parts lack originals)
INDEX_SCHEMA = pa.schema(
    [
        pa.field("part_id", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("first_shard_id", pa.int32(), nullable=False),
        pa.field("num_shards", pa.int32(), nullable=False),
        pa.field("num_images", pa.int64(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
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
META_NUM_SHARDS = b"shardinfer.num_shards"
META_MAX_SIDE = b"shardinfer.max_side"  # format 3: prepare's --max-side ("" when off)



@dataclass(frozen=True)
class ShardEntry:
    """One shard row: what a Spark task needs to process one shard."""

    shard_id: int
    uri: str
    num_records: int
    num_bytes: int
    sha256: str
    keys: tuple[str, ...]
    # prepare --max-side: per key, None or the original of an image stored downscaled (None: none was)
    originals: Optional[tuple[Optional[Original], ...]] = None


@dataclass(frozen=True)
class Original:
    """What the manifest keeps of an image that prepare stored downscaled (its header's size, bytes, sha256)."""

    width: int
    height: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class PartEntry:
    """One index row: a part file holding shards ``first_shard_id .. first_shard_id + num_shards - 1``."""

    part_id: int
    uri: str
    first_shard_id: int
    num_shards: int
    num_images: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A read manifest index: its parts and metadata (never the shard rows)."""

    uri: str
    manifest_id: str
    input_uri: str
    batch_size: int
    created_at: str
    version: str
    parts: tuple[PartEntry, ...]
    num_skipped: int = 0
    max_side: Optional[int] = None

    @property
    def num_shards(self) -> int:
        """Shards in all parts (ids ``0 .. num_shards - 1``)."""
        return sum(p.num_shards for p in self.parts)

    @property
    def num_images(self) -> int:
        """Images in all shards."""
        return sum(p.num_images for p in self.parts)

    def part_of(self, shard_id: int) -> PartEntry:
        """The part holding ``shard_id``."""
        if not 0 <= shard_id < self.num_shards:
            raise ManifestError(f"{self.uri}: no shard {shard_id} (shard ids 0-{self.num_shards - 1})")
        return self.parts[bisect.bisect_right(self._firsts, shard_id) - 1]

    @property
    def _firsts(self) -> list[int]:
        return [p.first_shard_id for p in self.parts]


def shard_name(shard_id: int) -> str:
    """``shards/shard-00042.rec``: the shard's path under prepare's ``--output``."""
    return f"shards/shard-{shard_id:05d}.rec"


def part_name(part_id: int) -> str:
    """``manifest/part-00003.parquet``: a manifest part's path under prepare's ``--output``."""
    return f"{PARTS_DIR}/part-{part_id:05d}.parquet"



# ----------------------------------------------------------------------------- writing


def shard_table(entries: Sequence[ShardEntry]) -> pa.Table:
    """Shard rows (in shard id order) as an Arrow table in :data:`SHARD_SCHEMA`."""
    return pa.Table.from_pydict(
        {
            "shard_id": [e.shard_id for e in entries],
            "uri": [e.uri for e in entries],
            "num_records": [e.num_records for e in entries],
            "num_bytes": [e.num_bytes for e in entries],
            "sha256": [e.sha256 for e in entries],
            "keys": [list(e.keys) for e in entries],
            "originals": [None if e.originals is None or not any(e.originals) else
                          [None if o is None else dataclasses.asdict(o) for o in e.originals] for e in entries],
        },
        schema=SHARD_SCHEMA,
    )


def rows_digest(table: pa.Table) -> str:
    """A part's content digest: the sum (mod 2**256) of its shards' digests, each over the shard's id,
    record count, sha256 and keys in order.

    Sums compose: the manifest id (:func:`compute_manifest_id`) depends on the shards alone,
    not on how prepare split them into parts or in what order the parts finished.
    """
    table = table.combine_chunks()
    n = table.num_rows
    if n == 0:
        return f"{0:064x}"
    head = np.stack([np.asarray(table.column("shard_id").to_numpy(), dtype="<i4"),
                     np.asarray(table.column("num_records").to_numpy(), dtype="<i4")], axis=1)
    shas = table.column("sha256").to_pylist()
    keys = table.column("keys").chunk(0)
    kofs = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset : keys.offset + n + 1]
    flat = keys.values
    sofs = np.frombuffer(flat.buffers()[1], dtype=np.int32)[flat.offset : flat.offset + len(flat) + 1]
    lengths = np.diff(sofs).astype("<i4")
    data = memoryview(flat.buffers()[2]) if len(flat) else memoryview(b"")
    total = 0
    for i in range(n):
        lo, hi = kofs[i], kofs[i + 1]
        h = hashlib.sha256(head[i].tobytes())
        h.update(shas[i].encode())
        h.update(lengths[lo:hi].tobytes())
        h.update(data[sofs[lo] : sofs[hi]])
        total += int.from_bytes(h.digest(), "big")
    return f"{total % (1 << 256):064x}"


def part_to_bytes(table: pa.Table, where: str = "manifest part") -> bytes:
    """Serialise one part's shard rows (contiguous ids, in order), in row groups of :data:`ROW_GROUP_SHARDS`.

    Raises:
        ManifestError: the ids are not one contiguous ascending run (names ``where``).
    """
    ids = table.column("shard_id").to_numpy()
    if len(ids) == 0 or not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        raise ManifestError(f"{where}: shard ids must be one contiguous ascending run, got {ids[:10].tolist()}...")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_SHARDS)
    return buf.getvalue()


def describe_part(part_id: int, uri: str, table: pa.Table, data: bytes) -> PartEntry:
    """The index row of a written part."""
    return PartEntry(part_id, uri, int(table.column("shard_id")[0].as_py()), table.num_rows,
                     int(table.column("num_records").to_numpy().sum()), len(data),
                     hashlib.sha256(data).hexdigest())


def compute_manifest_id(part_digests: Sequence[str]) -> str:
    """``m`` + 16 hex digits from the parts' :func:`rows_digest` values (in any order, any split)."""
    total = sum(int(d, 16) for d in part_digests) % (1 << 256)
    return "m" + hashlib.sha256(f"{total:064x}".encode()).hexdigest()[:16]


def index_to_bytes(parts: Sequence[PartEntry], manifest_id: str, input_uri: str, batch_size: int, num_skipped: int,
                   created_at: Optional[datetime] = None, max_side: Optional[int] = None) -> bytes:
    """Serialise the index (``manifest.parquet``) with its metadata.

    Raises:
        ManifestError: part ids are not ``0..n-1`` or their shards do not follow on from each other.
    """
    parts = sorted(parts, key=lambda p: p.part_id)
    expect = 0
    for i, p in enumerate(parts):
        if p.part_id != i or p.first_shard_id != expect or p.num_shards < 1:
            raise ManifestError(f"manifest index: part {p.part_id} starts at shard {p.first_shard_id} with "
                                f"{p.num_shards} shards; expected part {i} starting at shard {expect}")
        expect += p.num_shards
    created = (created_at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cols = {f.name: [getattr(p, f.name) for p in parts] for f in INDEX_SCHEMA}
    table = pa.Table.from_pydict(cols, schema=INDEX_SCHEMA).replace_schema_metadata({
        META_MANIFEST_ID: manifest_id,
        META_INPUT: input_uri,
        META_BATCH: str(batch_size),
        META_CREATED: created,
        META_VERSION: FORMAT_VERSION,
        META_NUM_IMAGES: str(sum(p.num_images for p in parts)),
        META_NUM_SHARDS: str(expect),
        META_NUM_SKIPPED: str(num_skipped),
        META_MAX_SIDE: str(max_side or ""),
    })
    return _to_parquet(table)


def skipped_to_bytes(rows: Iterable[tuple[str, str]]) -> bytes:
    """Serialise ``(key, reason)`` rows, sorted by key."""
    rows = sorted(rows)
    table = pa.Table.from_pydict({"key": [k for k, _ in rows], "reason": [r for _, r in rows]}, schema=SKIPPED_SCHEMA)
    return _to_parquet(table)


def _to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# ----------------------------------------------------------------------------- reading


def manifest_from_bytes(data: bytes, uri: str) -> Manifest:
    """Parse and check a manifest index (format 2) or a version-1 manifest (read as one part: itself).

    Raises:
        ManifestError: not Parquet, an unknown format version, or missing columns/metadata.
    """
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise ManifestError(f"{uri}: not a readable Parquet manifest: {e}") from e
    meta = pf.schema_arrow.metadata or {}
    version = meta.get(META_VERSION, b"").decode()
    if version not in READABLE_VERSIONS:
        raise ManifestError(
            f"{uri}: manifest format version {version or '(none)'!r} is not supported "
            f"(this shardinfer reads versions {', '.join(READABLE_VERSIONS)}); rerun prepare with this version"
        )
    for k in (META_MANIFEST_ID, META_INPUT, META_BATCH, META_CREATED):
        if k not in meta:
            raise ManifestError(f"{uri}: manifest metadata lacks {k.decode()!r}")
    schema = V2_SHARD_SCHEMA if version == "1" else INDEX_SCHEMA
    missing = [n for n in schema.names if n not in pf.schema_arrow.names]
    if missing:
        raise ManifestError(f"{uri}: manifest lacks columns {missing}")
    if version == "1":
        t = pf.read(columns=["shard_id", "num_records"])
        ids = t.column("shard_id").to_numpy()
        if not np.array_equal(np.sort(ids), np.arange(len(ids))):
            raise ManifestError(f"{uri}: shard ids must be 0..{len(ids) - 1} without gaps")
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ManifestError(f"{uri}: version-1 manifest rows are not in shard id order")
        parts: tuple[PartEntry, ...] = (PartEntry(0, uri, 0, len(ids), int(t.column("num_records").to_numpy().sum()),
                                                  len(data), hashlib.sha256(data).hexdigest()),) if len(ids) else ()
    else:
        cols = pf.read(columns=INDEX_SCHEMA.names).to_pydict()
        rows = [PartEntry(*(cols[n][i] for n in INDEX_SCHEMA.names)) for i in range(len(cols["part_id"]))]
        here = uris.parent(uri)
        # parts are read beside the index (a copied manifest folder stays usable)
        parts = tuple(PartEntry(p.part_id, uris.join(here, PARTS_DIR, p.uri.rsplit("/", 1)[-1]), p.first_shard_id,
                                p.num_shards, p.num_images, p.num_bytes, p.sha256)
                      for p in sorted(rows, key=lambda p: p.part_id))
        expect = 0
        for i, p in enumerate(parts):
            if p.part_id != i or p.first_shard_id != expect:
                raise ManifestError(f"{uri}: index row for part {p.part_id} does not follow on (expected part {i} "
                                    f"starting at shard {expect})")
            expect += p.num_shards
    return Manifest(uri=uri, manifest_id=meta[META_MANIFEST_ID].decode(), input_uri=meta[META_INPUT].decode(),
                    batch_size=int(meta[META_BATCH]), created_at=meta[META_CREATED].decode(), version=version,
                    parts=parts, num_skipped=int(meta.get(META_NUM_SKIPPED, b"0")),
                    max_side=int(meta[META_MAX_SIDE]) if meta.get(META_MAX_SIDE) else None)


