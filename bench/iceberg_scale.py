"""The driver's side of an Iceberg commit at scale (docs/iceberg.md), measured here (``make scale-iceberg``).

    .venv/bin/python bench/iceberg_scale.py [--files 2000000] [--out docs/scale-figures-iceberg.json]

A synthetic run of ``--files`` part files (shards) goes through :class:`infer.iceberg_table.Committer` exactly as
infer's driver feeds it: in waves of 80,000 (20,000 tasks of 4 shards, infer's ``TASKS_PER_JOB``), each file's
statistics those of a real 64-row part file (45-character keys, top-5), then one commit.  The table is in the
local server's Glue; its location a local folder (the manifests are written where S3 would hold them, without
the local S3 server holding gigabytes in this process's memory).  Measured: the driver's resident memory after
each wave (it must not grow with the run), time per file, manifest bytes per file, the commit's own time, and
what a wave's results weigh in flight (pickled, as Spark returns them).  The figures extrapolate to 15.6 M files
(a billion images) in the JSON's ``at_1b``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.scale import _cpu  # noqa: E402
from common import iceberg, status, storage  # noqa: E402
from common.output import ImageResult, predictions_table, table_to_parquet  # noqa: E402
from infer import iceberg_table  # noqa: E402
from infer.main import TASKS_PER_JOB  # noqa: E402
from testkit.localdev import LocalS3  # noqa: E402

SHARDS_PER_TASK = 4
BILLION_FILES = 15_625_000


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def realistic_stats(target: iceberg_table.Target) -> iceberg.FileStats:
    """What a task reports of a realistic part file: 64 rows, 45-character keys, top-5 of 1,000 classes."""
    labels = [f"n{i:08d} a class name of some length" for i in range(1000)]
    rng = np.random.default_rng(0)
    results = [ImageResult(f"train/n{rng.integers(1e8):08d}/n{rng.integers(1e8):08d}_{i:06d}.JPEG", i, "ok",
                           [int(c) for c in rng.choice(1000, 5, replace=False)],
                           sorted(rng.random(5).tolist(), reverse=True)) for i in range(64)]
    data = table_to_parquet(predictions_table(results, labels, 0, "resnet-18@sha256:0123456789ab", "m0123456789abcdef",
                                              datetime.now(timezone.utc), iceberg_run_id="scale"), "bench")
    return iceberg.FileTarget.of(target.table.schema(), target.table.properties).describe(0, "x", data)


def measure(files: int, root: str) -> dict:
    store = storage.Store()
    target = iceberg_table.find_table("scale_db.preds", root, store)
    target.location = os.path.join(root, "scale_db.db", "preds")
    iceberg_table.ensure_table(target, store)
    one = realistic_stats(target)
    prefix = iceberg.data_prefix(target.location)
    seen = iceberg_table.committed_mask(target.table, root, "scale", files, store)
    rss0 = _rss_mb()
    committer = iceberg_table.Committer(target, root, "scale", "bench", "m0123456789abcdef", files, store, seen)
    wave = TASKS_PER_JOB * SHARDS_PER_TASK
    samples, t0 = [], time.time()
    in_flight = None
    for lo in range(0, files, wave):
        batch = [dataclasses.replace(one, shard_id=i, uri=f"{prefix}/run_id=scale/part-{i:05d}.parquet")
                 for i in range(lo, min(files, lo + wave))]
        if in_flight is None:  # a wave's results as Spark hands them to the driver: per task, statuses + stats
            one_task = (status.pack([status.ShardStatus(0, "x").done("written", "x", 64)]), batch[:SHARDS_PER_TASK])
            in_flight = len(pickle.dumps([one_task])) * TASKS_PER_JOB
        committer.add(batch)
        samples.append({"files": min(files, lo + wave), "s": round(time.time() - t0, 1), "rss_mb": round(_rss_mb(), 1)})
        print(f"  {samples[-1]['files']:>10,} files added in {samples[-1]['s']:.0f}s, driver RSS {samples[-1]['rss_mb']:.0f} MB",
              flush=True)
    add_s = time.time() - t0
    t1 = time.time()
    snapshot = committer.commit()
    commit_s = time.time() - t1
    manifest_bytes = sum(m.manifest_length for m in committer.manifests)
    target.table.refresh()
    summary = target.table.current_snapshot().summary
    assert snapshot is not None and summary["added-data-files"] == str(files), summary
    per_file_s = add_s / files
    rss = [s["rss_mb"] for s in samples]
    return {
        "files": files, "manifests": len(committer.manifests), "manifest_bytes_per_file": round(manifest_bytes / files, 1),
        "add_s": round(add_s, 1), "driver_us_per_file": round(1e6 * per_file_s, 1), "commit_s": round(commit_s, 2),
        "rss_before_mb": round(rss0, 1), "rss_after_first_wave_mb": rss[0], "rss_last_mb": rss[-1], "rss_max_mb": max(rss),
        "mask_bytes": files, "wave_results_in_flight_mb": round(in_flight / 2**20, 1),
        "file_stats_pickled_bytes": len(pickle.dumps(one)), "samples": samples,
        "at_1b": {"files": BILLION_FILES, "driver_cpu_min": round(BILLION_FILES * per_file_s / 60, 1),
                  "manifests": -(-BILLION_FILES // iceberg_table.MANIFEST_FILES),
                  "manifest_gb": round(BILLION_FILES * manifest_bytes / files / 1e9, 2),
                  "mask_mb": round(BILLION_FILES / 1e6, 1)},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2_000_000, help="part files (shards) in the synthetic run")
    p.add_argument("--out", default="docs/scale-figures-iceberg.json", help="where the figures go")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="shardinfer-iceberg-scale-")
    try:
        with LocalS3() as s3:  # the Glue catalog only
            os.environ.update(s3.env)
            result = {"cpu": _cpu(), "date": time.strftime("%Y-%m-%d"), **measure(args.files, root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{result['files']:,} files: {result['driver_us_per_file']} µs each on the driver, RSS "
          f"{result['rss_after_first_wave_mb']} -> {result['rss_last_mb']} MB, {result['manifests']} manifests, "
          f"commit {result['commit_s']} s; at a billion images: {result['at_1b']}; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
