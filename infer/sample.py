"""The images a reduced-precision model is calibrated and checked on: drawn deterministically from
across the manifest (evenly spaced shards, evenly spaced records), split into two disjoint samples,
and kept as their original bytes until a batch is decoded."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from common import storage
from common.errors import UsageError
from common.images import DEFAULT_PREPROCESSING, Preprocessing, decode_into
from common.manifest import Manifest, ShardEntry, read_shards
from common.shard import check_shard

# Records taken from each sampled shard: enough shards to cover the manifest, few enough GETs.
SAMPLE_PER_SHARD = 16


def sample_plan(shards: Sequence[tuple[int, int]], calibration: int, agreement: int,
                per_shard: int = SAMPLE_PER_SHARD) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Which images calibrate and which check agreement: disjoint ``(shard_id, record)`` lists.

    ``shards`` is ``[(shard_id, num_records), ...]`` in manifest order.  Shards are taken evenly
    spaced across the manifest, records evenly spaced inside each, and alternately assigned to
    the calibration and the agreement sample, so both see the whole manifest.  The same
    manifest and numbers always give the same plan.
    """
    want = calibration + agreement
    total = sum(n for _, n in shards)
    if want > total:
        raise UsageError(f"{want} sample images requested ({calibration} calibration + {agreement} agreement), "
                         f"the manifest holds {total}")
    if want == 0:
        return [], []
    count = min(len(shards), math.ceil(want / per_shard))
    while True:  # ends: with every shard picked, the sum is the total
        picked = [shards[(2 * j + 1) * len(shards) // (2 * count)] for j in range(count)]
        if sum(n for _, n in picked) >= want:
            break
        count = min(len(shards), count * 2)
    take = math.ceil(want / count)
    while sum(min(n, take) for _, n in picked) < want:
        take += 1
    chosen = [(sid, (2 * r + 1) * n // (2 * k)) for sid, n in picked for k in (min(n, take),) for r in range(k)]
    even, odd = chosen[0::2], chosen[1::2]
    calib, agree = even[:calibration], odd[:agreement]
    spare = even[calibration:] + odd[agreement:]
    short = calibration - len(calib)
    calib += spare[:short]
    agree += spare[short : short + agreement - len(agree)]
    return calib, agree


@dataclass(frozen=True)
class Sample:
    """Sampled images as their original bytes: decoded one batch at a time, so a sample of
    thousands of images costs the driver its compressed size, not 600 KB of floats per image."""

    payloads: tuple[bytes, ...]
    keys: tuple[str, ...]
    prep: Preprocessing = DEFAULT_PREPROCESSING

    def __len__(self) -> int:
        return len(self.payloads)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Model input in batches of up to ``size`` rows; undecodable images are left out."""
        for start in range(0, len(self), size):
            out = np.empty((min(size, len(self) - start), 3) + self.prep.hw, dtype=np.float32)
            bad = decode_into(self.payloads[start : start + size], self.keys[start : start + size], out, self.prep)
            yield out[[i for i in range(len(out)) if i not in bad]] if bad else out


def load_sample(entries: Sequence[ShardEntry], items: Sequence[tuple[int, int]], endpoint_url: storage.Endpoint,
                prep: Preprocessing = DEFAULT_PREPROCESSING, threads: int = 8) -> Sample:
    """Fetch the shards that hold ``items`` (``(shard_id, record)`` pairs, in parallel) and keep those records."""
    by_id = {e.shard_id: e for e in entries}
    wanted = list(dict.fromkeys(sid for sid, _ in items))
    with ThreadPoolExecutor(threads) as pool:
        fetched = dict(zip(wanted, pool.map(lambda sid: check_shard(by_id[sid], storage.read_bytes(by_id[sid].uri, endpoint_url)), wanted)))
    return Sample(tuple(fetched[sid][rec] for sid, rec in items), tuple(by_id[sid].keys[rec] for sid, rec in items),
                  prep)


def sample_shards(manifest: Manifest, want: int, endpoint_url: storage.Endpoint,
                  per_shard: int = SAMPLE_PER_SHARD) -> list[ShardEntry]:
    """Rows of shards evenly spaced across the manifest holding at least ``want`` images (read from
    their parts' row groups only; the whole manifest only when it is that small)."""
    n = manifest.num_shards
    count = min(n, max(1, math.ceil(want / per_shard)))
    while True:
        ids = sorted({(2 * j + 1) * n // (2 * count) for j in range(count)})
        entries = read_shards(manifest, ids, endpoint_url)
        if sum(e.num_records for e in entries) >= want or count == n:
            return entries
        count = min(n, count * 2)
