"""infer's plan: which shards this invocation runs, and how they are grouped into Spark tasks.

The driver plans from the manifest index alone: a selection is a few ``[start, stop)`` ranges
of shard ids (numpy), not a list of shard rows.  ``--shards`` parses into ranges,
``--only-missing`` lists the run's part files (fanned out over 100 key prefixes when there
are many), ``--only-failed`` reads the run's status files (common/status.py).  Grouping is
arithmetic: group *g* covers selected positions ``[g·base + min(g, extra), …)``, so a plan
of any size is a few numbers plus the ranges, and a task turns its group index into shard
ids itself (:meth:`Plan.group_ids`) and reads only those rows from the manifest.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

from common import storage
from common.cli import UsageError
from common.manifest import Manifest, ManifestError, part_problem, parts_of_ranges
from common.output import part_file_id, partition_dir
from common.spark import import_in_background
from common.status import failed_ids

if TYPE_CHECKING:
    from infer.settings import InferConfig

# Shards per Spark task, by precision.  Measured (docs/benchmarks.md, 2 cores, AVX-512 VNNI):
# each task costs ~0.2 s that the pipeline cannot hide (Spark's local per-task cost, the
# group's first fetch and decode, its last write), so a task should hold a few seconds of
# model time: fp32 1 -> 4 shards per task took 5,120 images from 59.8 s to 52.9 s, 8 gave
# the same as 4; int8 (3.3x faster per shard) gained 5-8 % more from 4 -> 8-15.  Smaller
# groups keep a retry cheap and the last wave short; the planner lowers the default when
# there are too few shards to give every core 2 groups.
DEFAULT_SHARDS_PER_TASK = {"fp32": 4, "bf16": 6, "int8": 12}
MIN_GROUPS_PER_CORE = 2
# Part-file listings of more than one page fan out over the 100 two-digit key prefixes.
LIST_THREADS = 16


def ids_to_ranges(ids: np.ndarray) -> np.ndarray:
    """Sorted unique shard ids -> ``(n, 2)`` array of ``[start, stop)`` runs."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if len(ids) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts = np.concatenate(([ids[0]], ids[breaks + 1]))
    stops = np.concatenate((ids[breaks] + 1, [ids[-1] + 1]))
    return np.stack([starts, stops], axis=1)


def mask_to_ranges(mask: np.ndarray) -> np.ndarray:
    """A boolean array over shard ids -> ``[start, stop)`` runs of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1).astype(np.int64)


def parse_shard_ids(text: str, manifest: Manifest) -> np.ndarray:
    """``"3,17,40-45"`` -> ``[start, stop)`` ranges; every id must exist in the manifest.

    Raises:
        UsageError: bad syntax or an id outside the manifest (named).
    """
    mask = np.zeros(manifest.num_shards, dtype=bool)
    last = manifest.num_shards - 1
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
        mask[lo : hi + 1] = True
    return mask_to_ranges(mask)


def _part_ids(objects: Iterable[storage.ObjectInfo]) -> list[int]:
    """The shard ids of the non-empty part files among ``objects``."""
    return [i for o in objects if o.size > 0 and (i := part_file_id(o.key)) is not None]


def present_mask(output: str, run_id: str, num_shards: int, endpoint_url: storage.Endpoint) -> np.ndarray:
    """``mask[i]``: shard *i*'s part file exists in the run's partition (one bit per shard).

    A partition of up to 1,000 files is one LIST; a larger one is listed over the 100
    prefixes ``part-00`` … ``part-99`` in parallel (15.6 M part files: ~15,600 LISTs on 16 threads).
    """
    prefix = partition_dir(output, run_id)
    mask = np.zeros(num_shards, dtype=bool)
    try:
        first, more = storage.list_page(prefix, endpoint_url)
    except storage.NotFound:
        return mask
    if not more:
        ids = _part_ids(first)
    else:
        def ids_under(digits: int) -> list[int]:
            return _part_ids(storage.list_objects(f"{prefix}part-{digits:02d}", endpoint_url))

        with ThreadPoolExecutor(LIST_THREADS) as pool:
            ids = [i for part in pool.map(ids_under, range(100)) for i in part]
    ids = np.asarray(ids, dtype=np.int64)
    mask[ids[(ids >= 0) & (ids < num_shards)]] = True
    return mask


def select(args: "InferConfig", manifest: Manifest, run_id: str, endpoint_url: storage.Endpoint,
           files_prefix: Optional[str] = None) -> np.ndarray:
    """The shard id ranges this invocation runs (``files_prefix``: where the run's part files are, when not under
    ``--output``)."""
    n = manifest.num_shards
    if args.shards:
        return parse_shard_ids(args.shards, manifest)
    if args.only_missing:
        return mask_to_ranges(~present_mask(files_prefix or args.output, run_id, n, endpoint_url))
    if args.only_failed:
        ids = failed_ids(args.output, run_id, endpoint_url)
        return ids_to_ranges(ids[(ids >= 0) & (ids < n)])
    return np.array([[0, n]], dtype=np.int64) if n else np.zeros((0, 2), dtype=np.int64)


def subtract(ranges: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``ranges`` without the shard ids set in ``mask`` (a bit per shard of the manifest)."""
    if not mask.any():
        return ranges
    keep = np.zeros(len(mask), dtype=bool)
    for lo, hi in ranges:
        keep[lo:hi] = True
    return mask_to_ranges(keep & ~mask)


def shards_per_task(requested: Optional[int], shards: int, cores: int, precision: str = "fp32") -> int:
    """``--shards-per-task`` when given (checked by the command line), else the precision's default,
    lowered so every core gets a couple of groups."""
    if requested is not None:
        return requested
    fair = math.ceil(shards / max(1, cores * MIN_GROUPS_PER_CORE))
    return max(1, min(DEFAULT_SHARDS_PER_TASK[precision], fair))


def group_count(selected: int, per_task: int, cores: int = 1) -> int:
    """How many groups: at most ``per_task`` shards each, rounded up to a multiple of ``cores``
    (as far as there are shards), so every core gets the same work and the last wave has no lone long task."""
    if selected == 0:
        return 0
    count = math.ceil(selected / per_task)
    if count % cores:
        count = min(selected, count + cores - count % cores)
    return count


@dataclass(frozen=True)
class Plan:
    """What this invocation runs: the manifest index, the selected ranges and the grouping.

    Broadcast to the executors once; a task needs only its group index.
    """

    manifest: Manifest
    ranges: np.ndarray
    groups: int
    per_task: int

    @property
    def selected(self) -> int:
        """Shards selected."""
        return count(self.ranges)

    def group_span(self, g: int) -> tuple[int, int]:
        """Selected positions ``[p0, p1)`` of group ``g``: sizes within one of each other, larger first."""
        base, extra = divmod(self.selected, self.groups)
        p0 = g * base + min(g, extra)
        return p0, p0 + base + (1 if g < extra else 0)

    def group_ids(self, g: int) -> list[int]:
        """The shard ids of group ``g``, ascending."""
        p0, p1 = self.group_span(g)
        lengths = self.ranges[:, 1] - self.ranges[:, 0]
        ends = np.cumsum(lengths)
        pos = np.arange(p0, p1)
        r = np.searchsorted(ends, pos, side="right")
        return (self.ranges[r, 0] + pos - (ends[r] - lengths[r])).tolist()


def count(ranges: np.ndarray) -> int:
    """How many shard ids the ``[start, end)`` rows of ``ranges`` hold."""
    return int((ranges[:, 1] - ranges[:, 0]).sum()) if len(ranges) else 0


def make_plan(manifest: Manifest, ranges: np.ndarray, requested: Optional[int], cores: int,
              precision: str = "fp32") -> Plan:
    """Group the selected ranges for ``cores`` task slots."""
    selected = count(ranges)
    per_task = shards_per_task(requested, selected, cores, precision)
    return Plan(manifest, ranges, group_count(selected, per_task, cores), per_task)


def describe(plan: Plan, shown: int = 20) -> str:
    """The first groups as ``a-b`` spans of shard ids (consecutive ids; a gap starts a new span)."""
    out = []
    for g in range(min(shown, plan.groups)):
        ids = plan.group_ids(g)
        runs = ids_to_ranges(np.asarray(ids))
        out.append("+".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in runs))
    return ", ".join(out) + (" ..." if plan.groups > shown else "")


# Parts per verification task: a part is ~1 MB (1,024 shards' keys), so a task reads a few MB.
VERIFY_PARTS_PER_TASK = 8


def verify_parts(sc, manifest: Manifest, ranges: np.ndarray, endpoint_url: storage.Endpoint,
                 warm: Sequence[str] = ()) -> None:
    """Before any shard runs: every manifest part holding a selected shard matches its index row
    (size and sha256), checked by a Spark stage that reads each part once; the driver gets back
    only the problems.  With ``warm`` (module names), the stage has a task for every core at least,
    and each starts importing those modules on its Python worker in the background: the tasks that
    come next on those workers find MXNet imported (while the driver converts a model, or writes
    the run record).

    Raises:
        ManifestError: the first damaged part, named (with how many more there are).
    """
    parts = parts_of_ranges(manifest, ranges) if manifest.version != "1" else []
    if not parts:  # a version-1 manifest was read whole, and checked, by the driver
        return
    slices = max(1, min(len(parts), math.ceil(len(parts) / VERIFY_PARTS_PER_TASK), sc.defaultParallelism * 4),
                 sc.defaultParallelism if warm else 1)

    def check(items):
        if warm:
            import_in_background(*warm)
        for p in items:
            problem = part_problem(p, endpoint_url)
            if problem is not None:
                yield p.part_id, problem

    problems = sorted(sc.parallelize(parts, slices).mapPartitions(check).collect())
    if problems:
        more = f" (and {len(problems) - 1} more damaged parts)" if len(problems) > 1 else ""
        raise ManifestError(f"{manifest.uri}: {problems[0][1]}{more}; rerun prepare")
