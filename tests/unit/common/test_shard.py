"""The shard format on bytes, checked against MXNet's own RecordIO reader and writer."""

from __future__ import annotations

import struct

import mxnet as mx
import numpy as np
import pytest

from common.shard import MAGIC, ShardFormatError, frame_record, iter_records, pack_shard, unpack_shard
from testkit.testdata import cifar_like_png

MAGIC_BYTES = struct.pack("<I", MAGIC)


@pytest.fixture
def pngs() -> list[bytes]:
    return [cifar_like_png(i) for i in range(5)]


def payloads_of_many_sizes() -> list[bytes]:
    rng = np.random.default_rng(0)
    sizes = [0, 1, 2, 3, 4, 5, 7, 8, 31, 64, 1000, 4097]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def with_magic() -> list[bytes]:
    """Payloads holding the RecordIO magic word at aligned and unaligned offsets."""
    return [
        MAGIC_BYTES,
        MAGIC_BYTES * 3,
        b"abcd" + MAGIC_BYTES + b"efgh",
        b"abcd" + MAGIC_BYTES + b"efg",
        b"ab" + MAGIC_BYTES + b"cd",  # unaligned: not split
        MAGIC_BYTES + b"x" * 9 + MAGIC_BYTES,
    ]


def test_roundtrip(pngs):
    assert unpack_shard(pack_shard(pngs), "t") == pngs


@pytest.mark.parametrize("payloads", [payloads_of_many_sizes(), with_magic()])
def test_roundtrip_many_sizes_and_magic(payloads):
    assert unpack_shard(pack_shard(payloads), "t") == payloads
    assert len(pack_shard(payloads)) % 4 == 0


@pytest.mark.parametrize("payloads", [payloads_of_many_sizes(), with_magic()])
def test_our_bytes_read_by_mxrecordio(tmp_path, payloads):
    path = tmp_path / "s.rec"
    path.write_bytes(pack_shard(payloads))
    reader = mx.recordio.MXRecordIO(str(path), "r")
    got = []
    while (item := reader.read()) is not None:
        header, body = mx.recordio.unpack(item)
        assert (header.flag, header.label, header.id, header.id2) == (0, 0.0, len(got), 0)
        got.append(body)
    reader.close()
    assert got == payloads


@pytest.mark.parametrize("payloads", [payloads_of_many_sizes(), with_magic()])
def test_mxrecordio_bytes_read_by_us(tmp_path, payloads):
    path = tmp_path / "s.rec"
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for i, p in enumerate(payloads):
        writer.write(mx.recordio.pack(mx.recordio.IRHeader(0, 0, i, 0), p))
    writer.close()
    data = path.read_bytes()
    assert data == pack_shard(payloads)  # byte-identical to MXNet's writer
    assert unpack_shard(data, str(path)) == payloads


def test_magic_in_payload_is_split_like_dmlc():
    framed = frame_record(b"abcd" + MAGIC_BYTES + b"efgh")
    # two parts: cflag 1 with "abcd", cflag 3 with "efgh"
    assert framed == (MAGIC_BYTES + struct.pack("<I", (1 << 29) | 4) + b"abcd"
                      + MAGIC_BYTES + struct.pack("<I", (3 << 29) | 4) + b"efgh")


def test_truncated_shard_names_source_and_offset(pngs):
    data = pack_shard(pngs)
    with pytest.raises(ShardFormatError, match=r"s3://b/shard-00003\.rec @ byte \d+: truncated record payload"):
        unpack_shard(data[:-1], "s3://b/shard-00003.rec")
    with pytest.raises(ShardFormatError, match=r"@ byte \d+: truncated record header"):
        unpack_shard(data + b"\x0a\x23", "x")


def test_foreign_bytes_name_offset():
    with pytest.raises(ShardFormatError, match=r"foreign\.rec @ byte 0: expected RecordIO magic 0xCED7230A, got"):
        unpack_shard(b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "foreign.rec")


def test_garbage_after_first_record_reports_its_offset(pngs):
    first = pack_shard(pngs[:1])
    with pytest.raises(ShardFormatError, match=rf"@ byte {len(first)}: expected RecordIO magic"):
        unpack_shard(first + b"garbagegarbage!!", "x")


def test_wrong_record_id_is_an_error(pngs):
    bad = frame_record(mx.recordio.pack(mx.recordio.IRHeader(0, 0, 7, 0), pngs[0]))
    with pytest.raises(ShardFormatError, match="record 0 has header id=7"):
        unpack_shard(bad, "x")


def test_dangling_continuation_is_an_error():
    bad = MAGIC_BYTES + struct.pack("<I", (1 << 29) | 4) + b"abcd"
    with pytest.raises(ShardFormatError, match="truncated record header"):
        list(iter_records(bad, "x"))
    bad2 = MAGIC_BYTES + struct.pack("<I", (3 << 29) | 4) + b"abcd"
    with pytest.raises(ShardFormatError, match="unexpected continuation flag 3"):
        list(iter_records(bad2, "x"))


def test_image_record_iter_reads_a_shard(tmp_path):
    """MXNet's ImageRecordIter (OpenCV decode) reads our shard: the .rec is a standard MXNet file."""
    path = tmp_path / "s.rec"
    path.write_bytes(pack_shard([cifar_like_png(i) for i in range(6)]))
    it = mx.io.ImageRecordIter(path_imgrec=str(path), data_shape=(3, 32, 32), batch_size=6, round_batch=False)
    batch = next(iter(it))
    assert batch.data[0].shape == (6, 3, 32, 32)
    # OpenCV decodes BGR->RGB the same pixels Pillow sees for record 0
    import io

    from PIL import Image
    ref = np.asarray(Image.open(io.BytesIO(cifar_like_png(0))).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    assert np.array_equal(batch.data[0].asnumpy()[0], ref)
