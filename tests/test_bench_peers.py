"""The benchmark's peers (bench/peers.py): what makes a peer's figure count — every image back exactly once,
read from the Parquet it wrote to S3 — and the variant list.  The peers themselves run in environments of
their own (make bench), not here."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import peers
from common import storage

# formats and the local S3 server only: the same on either Spark line
pytestmark = pytest.mark.once


def _parquet(keys: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": keys, "class_ids": [[1, 2]] * len(keys)}), buf)
    return buf.getvalue()


def test_rows_are_counted_back_from_s3_and_a_repeated_image_shows(s3):
    s3.create_bucket("peers")
    storage.write_bytes("s3://peers/daft/part-0.parquet", _parquet(["s3://peers/in/a.png", "s3://peers/in/b.png"]))
    storage.write_bytes("s3://peers/daft/part-1.parquet", _parquet(["s3://peers/in/c.png"]))
    storage.write_bytes("s3://peers/daft/_SUCCESS", b"")  # not Parquet: not counted
    assert peers.count_back("s3://peers/daft/") == {"rows": 3, "distinct_keys": 3, "files": 2}
    # Ray writes the key as a path without the scheme: the same image by its file name
    storage.write_bytes("s3://peers/daft/part-2.parquet", _parquet(["peers/in/c.png"]))
    assert peers.count_back("s3://peers/daft/") == {"rows": 4, "distinct_keys": 3, "files": 3}


def test_variants_by_name_and_the_hanging_one_only_when_named():
    assert peers.parse_variants("daft:tuned,ray") == [("daft", "tuned"), ("ray", "idiomatic"), ("ray", "tuned"),
                                                      ("ray", "threads")]
    assert ("ray", "guide") in peers.parse_variants("ray:guide")
    assert all(v != ("ray", "guide") for v in peers.parse_variants(",".join(peers.DEFAULT_VARIANTS)))
    with pytest.raises(SystemExit, match="unknown variant 'spark:udf'"):
        peers.parse_variants("spark:udf")
