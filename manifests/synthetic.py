"""Write a valid format-2 manifest of N made-up images whose shards need not exist: for planning
and scale tests (``infer --dry-run`` over 100 M images, docs/scale.md).

    python -m manifests.synthetic --images 100000000 --output /tmp/synthetic-100m/ [--batch 64]

Keys look like an ImageNet-21k archive (``imagenet21k/train/n00012345/n00012345_0042.png``,
1,300 per class, sorted as prepare sorts them); shard URIs are ``<output>/shards/shard-NNNNN.rec``
and their sha256 is a made-up constant per shard.  Parts are built column-wise with pyarrow
(no Python object per key) through the same writer and digest as prepare
(common/manifest.py), in worker processes; the index is written last.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from typing import Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from common import storage  # noqa: E402
from common.cli import Writes, add_common_arguments, endpoint_from, run_cli  # noqa: E402
from common.errors import UsageError  # noqa: E402
from common.manifest import (  # noqa: E402
    MANIFEST_NAME,
    SHARD_SCHEMA,
    SHARDS_PER_PART,
    compute_manifest_id,
    describe_part,
    index_to_bytes,
    part_name,
    part_to_bytes,
    rows_digest,
    shard_name,
)

PER_CLASS = 1300
SHARD_BYTES = 64 * 2_900  # about a CIFAR-sized PNG per record


def _padded(values: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width=width, padding="0")


def part_table(first_shard: int, num_shards: int, images: int, batch: int, output: str) -> pa.Table:
    """The shard rows of one part, column-wise."""
    shard_ids = np.arange(first_shard, first_shard + num_shards, dtype=np.int64)
    starts = shard_ids * batch
    counts = np.minimum(batch, images - starts).astype(np.int32)
    index = np.arange(starts[0], starts[0] + int(counts.sum()), dtype=np.int64)
    cls = _padded(index // PER_CLASS, 8)
    keys = pc.binary_join_element_wise("imagenet21k/train/n", cls, "/n", cls, "_", _padded(index % PER_CLASS, 4),
                                       ".png", "")
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    shard_names = _padded(shard_ids, 5)
    base = storage.join(output, shard_name(0)).rsplit("shard-", 1)[0] + "shard-"
    return pa.Table.from_arrays([
        pa.array(shard_ids.astype(np.int32)),
        pc.binary_join_element_wise(base, shard_names, ".rec", ""),
        pa.array(counts),
        pa.array((counts.astype(np.int64) * (SHARD_BYTES // 64))),
        _padded(shard_ids, 64),
        pa.ListArray.from_arrays(offsets, keys),
        pa.nulls(num_shards, SHARD_SCHEMA.field("originals").type),
    ], schema=SHARD_SCHEMA)


def write_part(job: tuple) -> tuple:
    """Build and write one part; returns ``(PartEntry, digest)``."""
    part_id, first, count, images, batch, output, endpoint = job
    table = part_table(first, count, images, batch, output)
    uri = storage.join(output, part_name(part_id))
    data = part_to_bytes(table, uri)
    storage.write_bytes(uri, data, endpoint, "application/vnd.apache.parquet", encryption=None)  # no --sse here
    return describe_part(part_id, uri, table, data), rows_digest(table)


def write(images: int, output: str, batch: int = 64, shards_per_part: int = SHARDS_PER_PART,
          workers: Optional[int] = None, endpoint_url: Optional[str] = None):
    """Write the manifest; returns the index URI and the manifest id."""
    if images < 1 or batch < 1 or shards_per_part < 1:
        raise UsageError(f"--images, --batch and --shards-per-part must be at least 1 (got {images}, {batch}, "
                         f"{shards_per_part})")
    output = output if output.endswith("/") else output + "/"
    shards = math.ceil(images / batch)
    jobs = [(p, first, min(shards_per_part, shards - first), images, batch, output, endpoint_url)
            for p, first in enumerate(range(0, shards, shards_per_part))]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:  # no MXNet in this process
            done = pool.map(write_part, jobs, chunksize=1)
    else:
        done = [write_part(j) for j in jobs]
    manifest_id = compute_manifest_id([d for _, d in done])
    index = storage.join(output, MANIFEST_NAME)
    storage.write_bytes(index, index_to_bytes([p for p, _ in done], manifest_id, "s3://synthetic/imagenet21k/train/",
                                              batch, 0), endpoint_url, "application/vnd.apache.parquet",
                        encryption=None)
    return index, manifest_id, len(jobs), sum(p.num_bytes for p, _ in done)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m manifests.synthetic", description="Write a valid format-2 manifest "
                                "of N made-up images (shards need not exist), for planning and scale tests.")
    p.add_argument("--images", type=int, required=True, help="how many images")
    p.add_argument("--output", required=True, help="where: s3://BUCKET/PREFIX/ or a local directory")
    p.add_argument("--batch", type=int, default=64, help="images per shard (default 64)")
    p.add_argument("--shards-per-part", type=int, default=SHARDS_PER_PART,
                   help=f"shards per manifest part (default {SHARDS_PER_PART}, as prepare)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    add_common_arguments(p, sse=False)
    return p


def run(args: argparse.Namespace, writes: Writes) -> int:
    """Write the manifest and say where it is."""
    t0 = time.time()
    if args.images < 1 or args.batch < 1 or args.shards_per_part < 1:
        raise UsageError(f"--images, --batch and --shards-per-part must be at least 1 (got {args.images}, "
                         f"{args.batch}, {args.shards_per_part})")
    endpoint = endpoint_from(args)
    storage.check_buckets([args.output], endpoint)
    writes.begin(f"manifest parts under {args.output}", "run the same command again")
    index, manifest_id, parts, size = write(args.images, args.output, args.batch, args.shards_per_part,
                                            args.workers, endpoint)
    print(f"synthetic: {args.images} images in {math.ceil(args.images / args.batch)} shards, {parts} parts "
          f"({size / 2**20:.1f} MiB) in {time.time() - t0:.1f}s: {index} (manifest_id {manifest_id})", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line."""
    return run_cli("synthetic", run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
