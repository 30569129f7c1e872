"""infer's plan: which shards this invocation runs, and how they are grouped into Spark tasks.

Selection (``--shards``, ``--only-missing``, ``--only-failed``) reads the manifest rows, the
run's partition listing and its status records; grouping cuts the selected shards, in id
order, into task groups of ``--shards-per-task`` consecutive entries.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Optional, Sequence

from common import storage
from common.cli import UsageError
from common.manifest import Manifest, ShardEntry
from common.output import read_statuses

# Shards per Spark task, by precision.  Measured (docs/benchmarks.md, 2 cores, AVX-512 VNNI):
# each task costs ~0.2 s that the pipeline cannot hide (Spark's local per-task cost, the
# group's first fetch and decode, its last write), so a task should hold a few seconds of
# model time: fp32 1 -> 4 shards per task took 5,120 images from 59.8 s to 52.9 s, 8 gave
# the same as 4; int8 (3.3x faster per shard) gained 5-8 % more from 4 -> 8-15.  Smaller
# groups keep a retry cheap and the last wave short; the planner lowers the default when
# there are too few shards to give every core 2 groups.
DEFAULT_SHARDS_PER_TASK = {"fp32": 4, "bf16": 6, "int8": 12}
MIN_GROUPS_PER_CORE = 2


def parse_shard_ids(text: str, manifest: Manifest) -> list[int]:
    """``"3,17,40-45"`` -> sorted ids; every id must exist in the manifest.

    Raises:
        UsageError: bad syntax or an id outside the manifest (named).
    """
    ids: set[int] = set()
    last = len(manifest.entries) - 1
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"--shards: {part!r} is not an id or a range like 40-45")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UsageError(f"--shards: range {part!r} runs backwards")
        if hi > last:
            raise UsageError(f"--shards: {part!r} is outside the manifest {manifest.uri} (shard ids 0-{last})")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def present_shards(output: str, run_id: str, endpoint_url: Optional[str]) -> set[int]:
    """Shard ids whose part file exists in the run's partition."""
    prefix = storage.join(output, f"run_id={run_id}") + "/"
    found = set()
    try:
        for obj in storage.list_objects(prefix, endpoint_url):
            m = re.search(r"part-(\d+)\.parquet$", obj.key)
            if m and obj.size > 0:
                found.add(int(m.group(1)))
    except storage.NotFound:
        pass
    return found


def failed_shards(output: str, run_id: str, endpoint_url: Optional[str]) -> list[int]:
    """Shard ids whose recorded status is failed."""
    return [int(r["shard_id"]) for r in read_statuses(output, run_id, endpoint_url) if r.get("status") != "ok"]


def select_entries(args: argparse.Namespace, manifest: Manifest, run_id: str,
                   endpoint_url: Optional[str]) -> list[ShardEntry]:
    """The manifest rows this invocation runs, in shard id order."""
    by_id = {e.shard_id: e for e in manifest.entries}
    if args.shards:
        return [by_id[i] for i in parse_shard_ids(args.shards, manifest)]
    if args.only_missing:
        present = present_shards(args.output, run_id, endpoint_url)
        return [e for e in manifest.entries if e.shard_id not in present]
    if args.only_failed:
        return [by_id[i] for i in failed_shards(args.output, run_id, endpoint_url) if i in by_id]
    return list(manifest.entries)


def shards_per_task(requested: Optional[int], shards: int, cores: int, precision: str = "fp32") -> int:
    """``--shards-per-task`` when given (checked by the command line), else the precision's default,
    lowered so every core gets a couple of groups."""
    if requested is not None:
        return requested
    fair = math.ceil(shards / max(1, cores * MIN_GROUPS_PER_CORE))
    return max(1, min(DEFAULT_SHARDS_PER_TASK[precision], fair))


def plan_groups(entries: Sequence[ShardEntry], requested: Optional[int], cores: int,
                precision: str = "fp32") -> tuple[int, list[list[ShardEntry]]]:
    """``(shards per task, task groups)`` for the selected entries on ``cores`` task slots."""
    per_task = shards_per_task(requested, len(entries), cores, precision)
    return per_task, group_entries(entries, per_task, cores)


def group_entries(entries: Sequence[ShardEntry], per_task: int, cores: int = 1) -> list[list[ShardEntry]]:
    """Consecutive runs of at most ``per_task`` selected entries (in the order given), balanced.

    The number of groups is rounded up to a multiple of ``cores`` (as far as there are
    shards) and the sizes differ by at most one, larger groups first: Spark hands tasks out
    in order, so every core gets the same work and the last wave has no lone long task.
    """
    if not entries:
        return []
    count = math.ceil(len(entries) / per_task)
    if count % cores:
        count = min(len(entries), count + cores - count % cores)
    base, extra = divmod(len(entries), count)
    groups, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        groups.append(list(entries[start : start + size]))
        start += size
    return groups
