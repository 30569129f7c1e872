"""Regenerate the example manifests in manifests/examples/ (used by the tests and the docs).

    .venv/bin/python manifests/make_examples.py

The examples describe three shards of a made-up prepare run; their shard objects do not
exist.  ``manifest-unknown-version.parquet`` is the same file claiming format version 999,
which readers must refuse.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.manifest import META_VERSION, ShardEntry, manifest_to_bytes, skipped_to_bytes  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
CREATED = datetime(2026, 11, 26, 0, 0, 0, tzinfo=timezone.utc)
INPUT = "s3://example-bucket/cifar10/test/"
OUTPUT = "s3://example-bucket/shards/cifar10-test/"


def example_entries() -> list[ShardEntry]:
    """Three shards of 64, 64 and 2 images (batch 64)."""
    keys = [f"cifar10/test/{i:05d}.png" for i in range(130)]
    entries = []
    for shard_id, start in enumerate(range(0, 130, 64)):
        chunk = tuple(keys[start : start + 64])
        fake = f"shard {shard_id}".encode()
        entries.append(ShardEntry(shard_id, f"{OUTPUT}shards/shard-{shard_id:05d}.rec", len(chunk),
                                  2600 * len(chunk), hashlib.sha256(fake).hexdigest(), chunk))
    return entries


def main() -> None:
    """Write the example files."""
    import io

    import pyarrow.parquet as pq

    os.makedirs(HERE, exist_ok=True)
    data, _ = manifest_to_bytes(example_entries(), INPUT, 64, 2, created_at=CREATED)
    with open(os.path.join(HERE, "manifest.parquet"), "wb") as f:
        f.write(data)
    with open(os.path.join(HERE, "skipped.parquet"), "wb") as f:
        f.write(skipped_to_bytes([("cifar10/test/README.txt", "not a .png key"),
                                  ("cifar10/test/broken.png", "undecodable PNG: image file is truncated")]))
    table = pq.read_table(io.BytesIO(data))
    meta = dict(table.schema.metadata)
    meta[META_VERSION] = b"999"
    pq.write_table(table.replace_schema_metadata(meta), os.path.join(HERE, "manifest-unknown-version.parquet"))


if __name__ == "__main__":
    main()
