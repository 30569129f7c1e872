"""The manifest contract, format 3: shard rows in ``manifest/part-*.parquet``, a small index
``manifest.parquet`` (one row per part, written last), and ``skipped.parquet``.

Documented for users in ``manifests/README.md``.  Format 3 adds the shard rows' ``originals``
column (``prepare --max-side``: the size and sha256 of each image stored downscaled) and the
index's ``max_side`` metadata.  Version-2 manifests (no ``originals``) and version-1 manifests
(one ``manifest.parquet`` holding every shard row, read as an index of one part: the file
itself) stay readable.
Bump :data:`FORMAT_VERSION` whenever a column or metadata key changes meaning, so an older reader
refuses a newer file clearly.

Its format as pure functions (schemas, rows, bytes, digests, parsing) is :mod:`common.manifest_format`; this
module reads and writes it (its names are importable from here too).  Nothing here holds a whole manifest's keys: the driver reads the index; a task reads the
row groups of the one part that hold its shards (:func:`read_shards`), in two ranged GETs.
"""


from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import ranged, storage
from common.errors import ManifestError  # noqa: F401 - raised here, defined with the other user errors
from common.manifest_format import (  # noqa: F401 - the format's names, importable from the contract's module
    FORMAT_VERSION,
    INDEX_SCHEMA,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    META_BATCH,
    META_CREATED,
    META_INPUT,
    META_MANIFEST_ID,
    META_MAX_SIDE,
    META_NUM_IMAGES,
    META_NUM_SHARDS,
    META_NUM_SKIPPED,
    META_VERSION,
    ORIGINAL_TYPE,
    ORIGINALS,
    PARTS_DIR,
    READABLE_VERSIONS,
    ROW_GROUP_SHARDS,
    SHARD_SCHEMA,
    SHARDS_PER_PART,
    SKIPPED_NAME,
    SKIPPED_SCHEMA,
    V2_SHARD_SCHEMA,
    Manifest,
    Original,
    PartEntry,
    ShardEntry,
    compute_manifest_id,
    describe_part,
    index_to_bytes,
    manifest_from_bytes,
    part_name,
    part_to_bytes,
    rows_digest,
    shard_name,
    shard_table,
    skipped_to_bytes,
)

# The tail read that brings a part's footer (64 row groups: ~40 KB) in the same GET.
_TAIL = 128 * 1024


def write_manifest(entries: Sequence[ShardEntry], output_uri: str, input_uri: str, batch_size: int,
                   num_skipped: int = 0, endpoint_url: storage.Endpoint = None,
                   shards_per_part: int = SHARDS_PER_PART, created_at: Optional[datetime] = None,
                   encryption: Optional[storage.Encryption] = None) -> Manifest:
    """Write a complete manifest (parts, then the index) for shard rows held in memory.

    prepare writes its parts from its tasks instead; this serves small manifests (examples, tools).
    """
    entries = sorted(entries, key=lambda e: e.shard_id)
    if [e.shard_id for e in entries] != list(range(len(entries))):
        raise ManifestError(f"{output_uri}: shard ids must be 0..{len(entries) - 1} without gaps")
    parts, digests = [], []
    for part_id, start in enumerate(range(0, len(entries), shards_per_part)):
        table = shard_table(entries[start : start + shards_per_part])
        uri = storage.join(output_uri, part_name(part_id))
        data = part_to_bytes(table, uri)
        storage.write_bytes(uri, data, endpoint_url, encryption=encryption)
        parts.append(describe_part(part_id, uri, table, data))
        digests.append(rows_digest(table))
    manifest_id = compute_manifest_id(digests)
    index_uri = storage.join(output_uri, MANIFEST_NAME)
    storage.write_bytes(index_uri, index_to_bytes(parts, manifest_id, input_uri, batch_size, num_skipped, created_at),
                        endpoint_url, encryption=encryption)
    return read_manifest(index_uri, endpoint_url)




def read_manifest(uri: str, endpoint_url: storage.Endpoint = None) -> Manifest:
    """Read the index at ``uri`` (one GET)."""
    return manifest_from_bytes(storage.read_bytes(uri, endpoint_url), uri)


# Parsed part footers, per process: consecutive tasks on an executor mostly read the same part.
_FOOTERS: "OrderedDict[tuple[str, str], pq.FileMetaData]" = OrderedDict()
_FOOTERS_LOCK = threading.Lock()
_FOOTERS_MAX = 16


def _part_rows(part: PartEntry, offsets: Sequence[int], endpoint_url: storage.Endpoint, originals: bool = False
               ) -> pa.Table:
    """The row groups of ``part`` that hold its rows at ``offsets`` (a footer GET unless cached, then one GET);
    with ``originals``, also that column where the part has it (format 3)."""
    with _FOOTERS_LOCK:
        meta = _FOOTERS.get((part.uri, part.sha256))
    try:
        f = ranged.RangedParquet(part.uri, part.num_bytes, endpoint_url, tail=_TAIL, metadata=meta)
    except storage.StorageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ManifestError(f"{part.uri}: not a readable manifest part: {e}") from e
    md = f.metadata
    if meta is None:
        with _FOOTERS_LOCK:
            _FOOTERS[(part.uri, part.sha256)] = md
            while len(_FOOTERS) > _FOOTERS_MAX:
                _FOOTERS.popitem(last=False)
    if md.num_rows != part.num_shards:
        raise ManifestError(f"{part.uri}: {md.num_rows} shard rows, the index says {part.num_shards}")
    starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    groups = sorted({int(np.searchsorted(starts, o, side="right") - 1) for o in offsets})
    # one GET for every needed column chunk (what a task runs needs no originals)
    columns = V2_SHARD_SCHEMA.names + ([ORIGINALS.name] if originals and ORIGINALS.name in md.schema.to_arrow_schema().names
                                       else [])
    return f.read(groups, columns=columns)


def read_shards(manifest: Manifest, shard_ids: Sequence[int], endpoint_url: storage.Endpoint = None,
                originals: bool = False) -> list[ShardEntry]:
    """The rows of ``shard_ids`` (in the order given), reading only the row groups that hold them.

    ``originals`` is read only when asked for (``originals=True``: prepare ``--max-side``'s record of the images
    it stored downscaled); a task, which needs none, leaves that column unread and its entries' ``originals`` None.

    Raises:
        ManifestError: an id outside the manifest, or a part that disagrees with the index.
    """
    by_part: dict[int, list[int]] = {}
    for sid in shard_ids:
        by_part.setdefault(manifest.part_of(sid).part_id, []).append(sid)
    found: dict[int, ShardEntry] = {}
    for part_id, ids in by_part.items():
        part = manifest.parts[part_id]
        table = _part_rows(part, [i - part.first_shard_id for i in ids], endpoint_url, originals)
        cols = table.to_pydict()
        kept_originals = cols.get(ORIGINALS.name) or [None] * len(cols["shard_id"])
        for row, sid in enumerate(cols["shard_id"]):
            kept = kept_originals[row]
            found[sid] = ShardEntry(sid, cols["uri"][row], cols["num_records"][row], cols["num_bytes"][row],
                                    cols["sha256"][row], tuple(cols["keys"][row]),
                                    None if kept is None else tuple(None if o is None else Original(**o) for o in kept))
    out = []
    for sid in shard_ids:
        e = found.get(sid)
        if e is None:
            raise ManifestError(f"{manifest.uri}: shard {sid} is missing from its part")
        if e.num_records != len(e.keys):
            raise ManifestError(f"{manifest.uri}: shard {sid} has num_records={e.num_records} but {len(e.keys)} keys")
        out.append(e)
    return out


def part_keys(part: PartEntry, endpoint_url: storage.Endpoint = None) -> list[str]:
    """Every key of one part (one GET of the part, its ``keys`` column decoded): prepare's
    ``--exclude-manifest`` reads each excluded part in a task of its own."""
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(part.uri, endpoint_url)), columns=["keys"])
    except storage.StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise ManifestError(f"{part.uri}: not a readable manifest part: {e}") from e
    return table.column("keys").combine_chunks().flatten().to_pylist()


def iter_shards(manifest: Manifest, endpoint_url: storage.Endpoint = None) -> Iterator[ShardEntry]:
    """Every shard row, part by part (one part's rows in memory at a time): for tests and small tools."""
    for part in manifest.parts:
        yield from read_shards(manifest, range(part.first_shard_id, part.first_shard_id + part.num_shards),
                               endpoint_url)


# ----------------------------------------------------------------------------- integrity


def check_parts_listed(manifest: Manifest, endpoint_url: storage.Endpoint = None) -> None:
    """Every part the index names is there with the size it gives: one LIST of ``manifest/`` per 1,000 parts.

    A version-1 manifest is its own one part, already read whole: nothing to list.

    Raises:
        ManifestError: the first missing or wrong-sized part, named.
    """
    if manifest.version == "1" or not manifest.parts:
        return
    folder = storage.join(storage.parent(manifest.uri), PARTS_DIR) + "/"
    try:
        listed = {o.key.rsplit("/", 1)[-1]: o.size for o in storage.list_objects(folder, endpoint_url)}
    except storage.NotFound:
        listed = {}
    for p in manifest.parts:
        size = listed.get(p.uri.rsplit("/", 1)[-1])
        if size is None:
            raise ManifestError(f"{manifest.uri}: manifest part {p.uri} is missing ({len(listed)} of the "
                                f"{len(manifest.parts)} parts the index names are there); rerun prepare")
        if size != p.num_bytes:
            raise ManifestError(f"{manifest.uri}: manifest part {p.uri} is {size} bytes, the index says "
                                f"{p.num_bytes}: it changed after prepare wrote the index; rerun prepare")


def part_problem(part: PartEntry, endpoint_url: storage.Endpoint = None) -> Optional[str]:
    """Why the part file differs from its index row (size, then sha256), or None when it matches (one GET)."""
    try:
        data = storage.read_bytes(part.uri, endpoint_url)
    except storage.NotFound:
        return f"manifest part {part.uri} is missing"
    if len(data) != part.num_bytes:
        return f"manifest part {part.uri} is {len(data)} bytes, the index says {part.num_bytes}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != part.sha256:
        return (f"manifest part {part.uri} has sha256 {digest[:16]}…, the index says {part.sha256[:16]}…: "
                "it changed after prepare wrote the index")
    return None


def parts_of_ranges(manifest: Manifest, ranges: Iterable[Sequence[int]]) -> list[PartEntry]:
    """The parts holding any shard of the ``[start, stop)`` ranges, in part order."""
    ids: set[int] = set()
    for start, stop in ranges:
        if stop > start:
            first, last = manifest.part_of(int(start)).part_id, manifest.part_of(int(stop) - 1).part_id
            ids.update(range(first, last + 1))
    return [manifest.parts[i] for i in sorted(ids)]
