"""prepare: list images under an S3 prefix (or read a list of them) and pack them into RecordIO
shards plus a format-3 manifest.

    spark-submit --properties-file spark-defaults.conf prepare/main.py \\
        --input s3://BUCKET/cifar10/test/ [--input-list URI] --output s3://BUCKET/shards/cifar10-test/ \\
        [--batch 64] [--formats png] [--max-side N] [--decode fast|exact] [--exclude-manifest URI ...] \\
        [--max-skipped-fraction 0.5] \\
        [--sse AES256|aws:kms [--sse-kms-key-id KEY]]

Stages, all Spark: (1) listing tasks, one per sub-prefix or list file (prepare/listing.py),
then the guard against junk by names (prepare/guard.py); (2) ``--exclude-manifest``'s anti-join,
a global sort of the candidate keys and their numbering (``zipWithIndex``), so the same set of
objects always gives the same shards; (3) one task per manifest part (1,024 shards) fetches its
images, checks that each decodes (``--max-side``: stores the large ones downscaled), writes its
shards and its ``manifest/part-NNNNN.parquet`` (prepare/tasks.py); (4) one task writes
``skipped.parquet``. The driver holds the index rows and counts and, from the packing tasks, the
(key, reason) pairs of the images that did not decode (on its way into ``skipped.parquet`` —
as many as the archive has undecodable images); never the listed keys. It writes
``manifest.parquet`` (the index) last: its presence means the whole manifest is there.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import storage  # noqa: E402
from common.athena import symlink_location  # noqa: E402
from common.cli import UsageError, Writes, exit_process, run_cli  # noqa: E402
from common.manifest import (  # noqa: E402
    MANIFEST_NAME,
    PARTS_DIR,
    SHARDS_PER_PART,
    SKIPPED_NAME,
    SKIPPED_SCHEMA,
    PartEntry,
    compute_manifest_id,
    index_to_bytes,
    part_keys,
    read_manifest,
)
from common.output import PARQUET_CONTENT_TYPE  # noqa: E402
from common.progress import Progress  # noqa: E402
from common.spark import spark_context  # noqa: E402
from prepare import guard, listing  # noqa: E402
from prepare.settings import PROG, PrepareConfig, build_parser  # noqa: E402
from prepare.tasks import Candidate, PartOutcome, PrepareSettings, write_part  # noqa: E402


def _dedupe_sorted(items):
    """Drop repeats of a key (a list may name an object twice); equal keys are adjacent after the sort."""
    last = None
    for key, etag in items:
        if key != last:
            yield key, etag
            last = key


def write_skipped(rows, uri: str, store: storage.Store) -> list[int]:
    """The skipped-writing task: ``(key, reason)`` rows (sorted) streamed to a local file, then one upload."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, SKIPPED_NAME)
        with pq.ParquetWriter(path, SKIPPED_SCHEMA, compression="zstd") as writer:
            chunk: list = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == 100_000:
                    writer.write_table(pa.Table.from_pylist([{"key": k, "reason": r} for k, r in chunk], SKIPPED_SCHEMA))
                    count += len(chunk)
                    chunk = []
            writer.write_table(pa.Table.from_pylist([{"key": k, "reason": r} for k, r in chunk], SKIPPED_SCHEMA))
            count += len(chunk)
        storage.upload_file(path, uri, store, PARQUET_CONTENT_TYPE, encryption=store.encryption)
    return [count]


@dataclass
class Listing:
    """Stage 1's result: every listed object classified (an RDD of :class:`prepare.listing.Classified`, kept)."""

    rows: object
    listed: int
    candidates: int


def list_stage(sc, config: PrepareConfig, settings: PrepareSettings) -> Listing:
    """The driver plans sources (one level of the prefix, or the list's files); tasks list them and classify
    every key by its name and size."""
    from pyspark import StorageLevel

    endpoint, formats = settings.store, settings.formats
    if config.input_list:
        sources, direct = listing.plan_list(config.input_list, settings.input_uri, endpoint), []
        how = f"{len(sources)} list file(s) from {config.input_list}"
    else:
        try:
            sources, direct = listing.plan_prefix(settings.input_uri, endpoint)
        except storage.NotFound as e:
            raise UsageError(f"{settings.input_uri}: {e}") from e
        how = f"{len(sources)} sub-prefixes listed by tasks, {len(direct)} objects listed by the driver"
    rdds = [sc.parallelize(sources, len(sources)).flatMap(
        lambda src: listing.read_source(src, settings.input_uri, endpoint))] if sources else []
    if direct:
        rdds.append(sc.parallelize(direct, max(1, min(len(direct) // 100_000, 64))))
    if not rdds:
        raise UsageError(f"{settings.input_uri}: no objects found")
    rows = (sc.union(rdds) if len(rdds) > 1 else rdds[0]).map(lambda item: listing.classify(item, formats))
    rows.persist(StorageLevel.MEMORY_AND_DISK)
    n_listed, n_candidates, outside = rows.map(
        lambda r: (1, int(r.candidate), [r.key] if r.outside else [])).reduce(
        lambda a, b: (a[0] + b[0], a[1] + b[1], (a[2] + b[2])[:5]))
    if outside:
        raise UsageError(f"--input-list {config.input_list}: keys outside --input {settings.input_uri}, e.g. "
                         f"{', '.join(outside[:3])}")
    print(f"{PROG}: listed {n_listed} objects under {settings.input_uri} ({how}): {n_candidates} candidates "
          f"({','.join(formats)})", flush=True)
    if not n_candidates:
        raise UsageError(f"{settings.input_uri}: no {'/'.join(formats)} images found ({n_listed} objects "
                         f"listed; --formats {','.join(formats)}: add the formats you have, or all)")
    return Listing(rows, n_listed, n_candidates)


@dataclass
class Numbered:
    """Stage 2's result: the candidates in one global order, numbered and keyed by manifest part."""

    keys: object  # RDD of (key, etag), sorted, repeats dropped (kept)
    by_part: object  # RDD of (part_id, (image number, Candidate)); None when nothing is left to pack
    unique: int
    parts: int
    left_out: int = 0  # candidates already in an --exclude-manifest manifest


def excluded_keys(sc, uris: Sequence[str], settings: PrepareSettings):
    """``--exclude-manifest``: an RDD of ``(key, None)`` for every key of those manifests (one task per part;
    the driver reads only their indexes), or None.

    Raises:
        UsageError: a manifest that cannot be read, or one over another bucket (keys are bucket-relative).
    """
    if not uris:
        return None
    endpoint, parts = settings.store, []
    bucket = storage.parse_s3(settings.input_uri).bucket if storage.is_s3(settings.input_uri) else None
    for uri in uris:
        try:
            m = read_manifest(uri, endpoint)
        except storage.NotFound as e:
            raise UsageError(f"--exclude-manifest {uri}: {e}") from e
        theirs = storage.parse_s3(m.input_uri).bucket if storage.is_s3(m.input_uri) else None
        if theirs != bucket:
            raise UsageError(f"--exclude-manifest {uri}: its images are in {m.input_uri}, not in the bucket of --input "
                             f"{settings.input_uri} (keys are bucket-relative)")
        print(f"{PROG}: leaving out the {m.num_images} keys of manifest {m.manifest_id} ({uri})", flush=True)
        parts += m.parts
    if not parts:
        return None
    return sc.parallelize(parts, min(len(parts), 10_000)).flatMap(
        lambda part: ((k, None) for k in part_keys(part, endpoint)))


def number_stage(sc, config: PrepareConfig, found: Listing, excluded) -> Numbered:
    """Sorted keys, repeats and ``--exclude-manifest`` keys (``excluded``, see :func:`excluded_keys`) dropped,
    numbered (``zipWithIndex``): the same objects always give the same shards."""
    from pyspark import StorageLevel

    spp = config.shards_per_part or min(SHARDS_PER_PART, max(1, math.ceil(
        found.candidates / config.batch / (2 * sc.defaultParallelism))))
    per_part = config.batch * spp
    candidates = found.rows.filter(lambda r: r.candidate).map(lambda r: (r.key, r.etag))
    if excluded is not None:  # an anti-join in Spark: neither side is ever on the driver
        candidates = candidates.subtractByKey(excluded).persist(StorageLevel.MEMORY_AND_DISK)
    keys = (candidates.sortByKey(numPartitions=max(1, min(math.ceil(found.candidates / per_part), 10_000)))
            .mapPartitions(_dedupe_sorted))
    keys.persist(StorageLevel.MEMORY_AND_DISK)
    unique = keys.count()
    left_out = found.candidates - candidates.count() if excluded is not None else 0
    if excluded is not None:
        candidates.unpersist()
    if left_out:
        print(f"{PROG}: {left_out} keys already in the excluded manifests left out", flush=True)
    if unique < found.candidates - left_out:
        print(f"{PROG}: {found.candidates - left_out - unique} repeated keys in the listing counted once", flush=True)
    parts = math.ceil(unique / per_part)
    by_part = (keys.zipWithIndex()
               .map(lambda x: (x[1] // per_part, (x[1], Candidate(x[0][0], x[0][1]))))
               .partitionBy(parts, lambda part: part)) if parts else None
    return Numbered(keys, by_part, unique, parts, left_out)


def pack_stage(sc, numbered: Numbered, settings: PrepareSettings) -> list[PartOutcome]:
    """One task per manifest part: its shards and its manifest part file.  Returns the outcomes by part id."""
    batch = settings.batch_size
    if not numbered.parts:
        return []

    def pack(part_id, items):
        items = sorted((i for _, i in items), key=lambda t: t[0])
        if not items:
            return
        outcome = write_part(part_id, items[0][0] // batch, [c for _, c in items], settings)
        counter.add((outcome.part.num_shards, outcome.part.num_images, 0))
        yield outcome

    with Progress(sc, PROG, math.ceil(numbered.unique / batch), numbered.unique) as progress:
        counter = progress.counter
        outcomes = sorted(numbered.by_part.mapPartitionsWithIndex(pack).collect(), key=lambda o: o.part.part_id)
    if [o.part.part_id for o in outcomes] != list(range(numbered.parts)):
        raise RuntimeError(f"prepare: parts {[o.part.part_id for o in outcomes][:10]}... do not cover "
                           f"0..{numbered.parts - 1}")
    return outcomes


def skipped_stage(sc, found: Listing, outcomes: Sequence[PartOutcome], settings: PrepareSettings) -> int:
    """``skipped.parquet``: every listed object that is in no shard, with its reason, written by one task.
    Returns how many."""
    bad = [row for o in outcomes for row in o.bad]
    uri = storage.join(settings.output_uri, SKIPPED_NAME)
    rows = found.rows.filter(lambda r: not r.candidate).map(lambda r: (r.key, r.reason))
    if bad:
        rows = rows.union(sc.parallelize(bad, 1))
    store = settings.store
    return sum(rows.sortByKey(numPartitions=1).mapPartitions(
        lambda part: write_skipped(part, uri, store)).collect())


def publish(settings: PrepareSettings, manifest_uri: str, parts: Sequence[PartEntry], manifest_id: str,
            skipped: int) -> None:
    """Remove stale parts of an earlier prepare into this output, then write the index at ``manifest_uri``
    (last: the manifest now exists) and the skipped table's symlink."""
    endpoint = settings.store
    parts_dir = storage.join(settings.output_uri, PARTS_DIR) + "/"
    wanted = {p.uri for p in parts}
    listed = (storage.object_uri(parts_dir, o.key) for o in storage.list_objects(parts_dir, endpoint))
    storage.delete_objects([u for u in listed if u not in wanted], endpoint)  # an earlier manifest's, with more parts
    storage.write_bytes(manifest_uri, index_to_bytes(parts, manifest_id, settings.input_uri, settings.batch_size,
                                                     skipped, max_side=settings.max_side), endpoint, PARQUET_CONTENT_TYPE,
                        encryption=settings.store.encryption)
    # A one-line symlink file: an Athena table over exactly skipped.parquet (its folder also holds
    # the shards). See `python -m infer.athena --manifest-output`.
    storage.write_bytes(storage.join(symlink_location(settings.output_uri, "skipped"), "symlink.txt"),
                        (storage.join(settings.output_uri, SKIPPED_NAME) + "\n").encode(), endpoint, "text/plain",
                        encryption=settings.store.encryption)


def refuse(line: str) -> int:
    """prepare's exit 1 for junk input (:mod:`prepare.guard`): one line, no manifest index."""
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return 1


def run(config: PrepareConfig, writes: Writes) -> int:
    """Run prepare for parsed arguments; returns the exit code."""
    settings = config.task_settings()
    endpoint = settings.store
    started = time.time()
    # seconds, not a minute of retries, for a typo in a bucket or endpoint
    storage.check_buckets([u for u in (settings.input_uri, settings.output_uri, config.input_list) if u], endpoint)
    manifest_uri = storage.join(settings.output_uri, MANIFEST_NAME)
    sc = spark_context("shardinfer-prepare")
    found = list_stage(sc, config, settings)
    excluded = excluded_keys(sc, config.exclude_manifest, settings)  # the last check of the input: nothing written yet
    writes.begin(f"shards, manifest parts and skipped.parquet under {settings.output_uri} (no manifest index: "
                 "infer refuses the folder until one is written)",
                 "run the same prepare command again (the same objects give the same shards)")
    if storage.exists(manifest_uri, endpoint):  # the old index must not outlive the parts rewritten under it
        print(f"{PROG}: replacing the manifest at {manifest_uri}", flush=True)
        storage.delete(manifest_uri, endpoint)
    # the guard, by names alone first: a wrong --formats costs a listing, not a packing
    by_name = found.rows.filter(lambda r: not r.candidate).map(lambda r: (r.key, r.reason)).mapPartitions(
        lambda rows: [guard.summarise(rows)]).fold((Counter(), Counter(), 0), guard.merge)
    junk = guard.verdict(found.listed - by_name[2], by_name[0], by_name[1], config.max_skipped_fraction, settings.formats)
    if junk:
        skipped_stage(sc, found, [], settings)
        return refuse(junk)
    numbered = number_stage(sc, config, found, excluded)
    outcomes = pack_stage(sc, numbered, settings)
    skipped = skipped_stage(sc, found, outcomes, settings)
    found.rows.unpersist()
    numbered.keys.unpersist()
    undecodable = guard.summarise(row for o in outcomes for row in o.bad)
    junk = guard.verdict(found.listed - by_name[2] - numbered.left_out, by_name[0] + undecodable[0], by_name[1],
                         config.max_skipped_fraction, settings.formats)
    if junk:
        return refuse(junk)

    parts = [o.part for o in outcomes]
    good = sum(p.num_images for p in parts)
    if good + skipped != numbered.unique + (found.listed - found.candidates):
        raise RuntimeError(f"prepare: {good} images in shards + {skipped} skipped != {found.listed} listed "
                           f"- {found.candidates - numbered.unique} repeats")
    manifest_id = compute_manifest_id([o.digest for o in outcomes])
    if not parts:
        print(f"{PROG}: nothing new: an empty manifest (infer over it has nothing to do)", flush=True)
    publish(settings, manifest_uri, parts, manifest_id, skipped)
    print(f"{PROG}: wrote {sum(p.num_shards for p in parts)} shards in {len(parts)} manifest parts with {good} "
          f"images, {skipped} skipped, in {time.time() - started:.1f}s", flush=True)
    print(f"{PROG}: manifest {manifest_uri} (manifest_id {manifest_id})", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``spark-submit prepare/main.py`` and for tests."""
    return run_cli(PROG, run, build_parser(), argv, settings=PrepareConfig.from_args)


if __name__ == "__main__":
    exit_process(main())
