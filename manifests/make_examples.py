"""Regenerate the example manifests in manifests/examples/ (used by the tests and the docs).

    .venv/bin/python manifests/make_examples.py

The examples describe three shards of a made-up prepare run; their shard objects do not
exist.  Format 3: ``manifest.parquet`` (the index) and ``manifest/part-00000.parquet`` (the
shard rows; prepare ran with ``--max-side 256``, so the images that were larger carry their
original's size and sha256 in ``originals``).  ``v1/manifest.parquet`` is the same shards as a
version-1 manifest and ``v2/`` the same as a format-2 manifest, both as shardinfer wrote them
before format 3 (kept as they were, not regenerated; ``v1_manifest_bytes`` still writes version 1
for tests): both still read.  ``manifest-unknown-version.parquet`` is
the index claiming format version 999, which readers must refuse.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.manifest import (  # noqa: E402
    META_BATCH,
    META_CREATED,
    META_INPUT,
    META_MANIFEST_ID,
    META_NUM_IMAGES,
    META_NUM_SKIPPED,
    META_VERSION,
    V2_SHARD_SCHEMA,
    Original,  # noqa: E402
    ShardEntry,
    compute_manifest_id,
    describe_part,
    index_to_bytes,
    part_name,
    part_to_bytes,
    rows_digest,
    shard_table,
    skipped_to_bytes,
)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
CREATED = datetime(2026, 11, 26, 0, 0, 0, tzinfo=timezone.utc)
INPUT = "s3://example-bucket/cifar10/test/"
OUTPUT = "s3://example-bucket/shards/cifar10-test/"


def example_entries(originals: bool = True) -> list[ShardEntry]:
    """Three shards of 64, 64 and 2 images (batch 64); with ``originals``, every third image of the first
    shard was stored downscaled (a 4032x3024 original)."""
    keys = [f"cifar10/test/{i:05d}.png" for i in range(130)]
    entries = []
    for shard_id, start in enumerate(range(0, 130, 64)):
        chunk = tuple(keys[start : start + 64])
        fake = f"shard {shard_id}".encode()
        big = (tuple(Original(4032, 3024, 3_385_000 + i, hashlib.sha256(f"original {i}".encode()).hexdigest())
                     if i % 3 == 0 else None for i in range(len(chunk))) if originals and shard_id == 0 else None)
        entries.append(ShardEntry(shard_id, f"{OUTPUT}shards/shard-{shard_id:05d}.rec", len(chunk),
                                  2600 * len(chunk), hashlib.sha256(fake).hexdigest(), chunk, big))
    return entries


def v1_manifest_bytes(entries: list[ShardEntry], manifest_id: str, input_uri: str = INPUT, batch: int = 64,
                      num_skipped: int = 2) -> bytes:
    """Shards as a version-1 manifest (what shardinfer wrote before format 2): every shard row in
    manifest.parquet, the metadata on it.  Tests use it to check that version 1 still reads."""
    import io

    import pyarrow.parquet as pq

    table = shard_table(entries).select(V2_SHARD_SCHEMA.names).replace_schema_metadata({
        META_MANIFEST_ID: manifest_id, META_INPUT: input_uri, META_BATCH: str(batch),
        META_CREATED: "2026-11-26T00:00:00Z", META_VERSION: "1", META_NUM_IMAGES: str(sum(e.num_records for e in entries)),
        META_NUM_SKIPPED: str(num_skipped)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def main() -> None:
    """Write the example files."""
    import io

    import pyarrow.parquet as pq

    os.makedirs(os.path.join(HERE, "manifest"), exist_ok=True)
    entries = example_entries()
    table = shard_table(entries)
    part = part_to_bytes(table)
    with open(os.path.join(HERE, part_name(0)), "wb") as f:
        f.write(part)
    manifest_id = compute_manifest_id([rows_digest(table)])
    index = index_to_bytes([describe_part(0, OUTPUT + part_name(0), table, part)], manifest_id, INPUT, 64, 2,
                           created_at=CREATED, max_side=256)
    with open(os.path.join(HERE, "manifest.parquet"), "wb") as f:
        f.write(index)
    with open(os.path.join(HERE, "skipped.parquet"), "wb") as f:
        f.write(skipped_to_bytes([("cifar10/test/README.txt", "not a .png key"),
                                  ("cifar10/test/broken.png", "undecodable PNG: image file is truncated")]))
    t = pq.read_table(io.BytesIO(index))
    meta = dict(t.schema.metadata)
    meta[META_VERSION] = b"999"
    pq.write_table(t.replace_schema_metadata(meta), os.path.join(HERE, "manifest-unknown-version.parquet"))


if __name__ == "__main__":
    main()
