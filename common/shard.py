"""The shard format: an MXNet RecordIO file whose record *i* is ``IRHeader(0, 0, i, 0)`` + PNG bytes.

The record header is MXNet's ``IRHeader`` (``mx.recordio.pack`` / ``unpack``: ``struct`` format
``IfQQ``, 24 bytes, flag 0 = a scalar label and no label array).  It and the framing around each
record (dmlc-core's RecordIO layout) are written here over bytes, so that a shard can be built and
checked in memory (one PUT, one GET), so that an error can say at which byte offset a damaged shard
goes wrong, and so that packing and reading a shard does not import MXNet (about 2 CPU-seconds per
process: prepare's driver and tasks run no model; infer's driver imports it only to check the model).
The tests check both directions against ``mx.recordio.pack``/``unpack`` and ``mx.recordio.MXRecordIO``
on real files.

dmlc framing, per record::

    uint32 magic 0xCED7230A | uint32 lrec (cflag << 29 | length) | payload | zero pad to 4 bytes

A payload that contains the magic word at a 4-byte-aligned position is split there into
parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole record) and the magic words are
dropped; the reader puts them back.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Iterator, Sequence

from common.errors import ShardFormatError  # noqa: F401 - raised here, defined with the other user errors

if TYPE_CHECKING:
    from common.manifest import ShardEntry

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_MAX_RECORD = 1 << 29
# MXNet's IRHeader(flag, label, id, id2) as mx.recordio packs it (its _IR_FORMAT "IfQQ", x86's byte order).
_HEADER = struct.Struct("<IfQQ")


def _frame(cflag: int, part: bytes) -> bytes:
    return _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(part)) + part


def frame_record(payload: bytes) -> bytes:
    """Frame one record exactly as dmlc's ``RecordIOWriter::WriteRecord`` does.

    Args:
        payload: the record body (MXNet header + image bytes).

    Returns:
        The framed bytes, padded with zeros to a multiple of 4.
    """
    size = len(payload)
    if size >= _MAX_RECORD:
        raise ValueError(f"record of {size} bytes is too large for RecordIO (limit {_MAX_RECORD - 1})")
    out = []
    start = 0
    lower_align = (size >> 2) << 2
    for i in range(0, lower_align, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            out.append(_frame(1 if start == 0 else 2, payload[start:i]))
            start = i + 4
    out.append(_frame(3 if start != 0 else 0, payload[start:]))
    pad = (-size) % 4
    return b"".join(out) + b"\0" * pad


def iter_records(data: bytes, source: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte_offset, payload)`` for each record of dmlc RecordIO ``data``.

    Args:
        data: the whole file.
        source: what to call the file in errors (its URI).

    Raises:
        ShardFormatError: bad magic, a truncated header or payload, or a split record that
            is not continued; the message names ``source`` and the byte offset.
    """
    view = memoryview(data)
    pos = 0
    end = len(data)
    while pos < end:
        record_start = pos
        parts: list[bytes] = []
        while True:
            if pos + 8 > end:
                raise ShardFormatError(
                    f"{source} @ byte {pos}: truncated record header "
                    f"(expected 8 bytes, {end - pos} left)"
                )
            magic, lrec = struct.unpack_from("<II", data, pos)
            if magic != MAGIC:
                raise ShardFormatError(
                    f"{source} @ byte {pos}: expected RecordIO magic 0x{MAGIC:08X}, got 0x{magic:08X}"
                )
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag not in (0, 1, 2, 3) or (not parts and cflag in (2, 3)) or (parts and cflag in (0, 1)):
                raise ShardFormatError(
                    f"{source} @ byte {pos}: unexpected continuation flag {cflag} "
                    f"in record starting at byte {record_start}"
                )
            body = pos + 8
            padded = body + ((length + 3) >> 2 << 2)
            if padded > end:
                raise ShardFormatError(
                    f"{source} @ byte {body}: truncated record payload "
                    f"(expected {length} bytes, {end - body} left)"
                )
            parts.append(bytes(view[body : body + length]))
            pos = padded
            if cflag in (0, 3):
                break
            parts.append(_MAGIC_BYTES)
        yield record_start, b"".join(parts)


def pack_shard(pngs: Sequence[bytes]) -> bytes:
    """Build a shard in memory.

    Args:
        pngs: image bytes in record order.

    Returns:
        RecordIO bytes where record *i* is ``IRHeader(flag=0, label=0, id=i, id2=0)`` + ``pngs[i]``.
    """
    return b"".join(
        frame_record(_HEADER.pack(0, 0.0, i, 0) + png) for i, png in enumerate(pngs)
    )


def unpack_shard(data: bytes, source: str) -> list[bytes]:
    """The image payloads of a shard, in record order.

    Args:
        data: the shard's bytes.
        source: the shard's URI, used in error messages.

    Raises:
        ShardFormatError: the framing is damaged, or record *i* does not carry id *i*.
    """
    out = []
    for i, (offset, payload) in enumerate(iter_records(data, source)):
        if len(payload) < _HEADER.size:
            raise ShardFormatError(f"{source} @ byte {offset}: record {i} is shorter than its header")
        flag, _label, record_id, _id2 = _HEADER.unpack_from(payload)
        if record_id != i or flag != 0:
            raise ShardFormatError(
                f"{source} @ byte {offset}: record {i} has header id={record_id} flag={flag}, "
                f"expected id={i} flag=0"
            )
        out.append(payload[_HEADER.size :])
    return out


class ShardError(RuntimeError):
    """A shard that cannot be processed as a whole (damaged, wrong size)."""


def check_shard(entry: "ShardEntry", data: bytes) -> list[bytes]:
    """The image payloads in record order of a shard's bytes (as one GET of ``entry.uri`` brought them), after
    checking their size, sha256 and record count against the manifest's row.

    Raises:
        ShardError: the bytes or the record count differ from the manifest (names the shard).
    """
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
