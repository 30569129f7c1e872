"""prepare: list PNGs under an S3 prefix and pack them into RecordIO shards plus a manifest.

    spark-submit --properties-file spark-defaults.conf prepare/main.py \\
        --input s3://BUCKET/cifar10/test/ --output s3://BUCKET/shards/cifar10-test/ [--batch 64]

The driver lists and sorts the keys (never image bytes) and cuts the PNG candidates into
batches; one Spark task per batch fetches its images (one GET each, in threads), checks
that every one decodes, and writes the shard with one PUT.  Undecodable images are rare:
a batch holding one writes nothing and reports it, and the driver then rewrites only the
shards from that batch on, without the bad images (every shard but the last stays full).
The driver writes ``skipped.parquet`` and then ``manifest.parquet`` last, so a manifest
only ever lists shards that exist.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import storage  # noqa: E402
from common.cli import UsageError, add_common_arguments, endpoint_from, run_cli, spark_context  # noqa: E402
from common.athena import symlink_location  # noqa: E402
from common.images import skip_reason_for_key  # noqa: E402
from common.manifest import MANIFEST_NAME, SKIPPED_NAME, manifest_to_bytes, shard_name, skipped_to_bytes  # noqa: E402
from common.progress import Progress  # noqa: E402
from prepare.tasks import Candidate, PrepareSettings, write_batch  # noqa: E402

PROG = "prepare"
# 64 CIFAR PNGs are ~150 KB: one GET per task, and exactly one model batch in infer.
DEFAULT_BATCH = 64


def build_parser() -> argparse.ArgumentParser:
    """The command line of DESIGN.md."""
    p = argparse.ArgumentParser(prog=PROG, description="Pack PNG images under a prefix into MXNet RecordIO shards "
                                "and write manifest.parquet + skipped.parquet.")
    p.add_argument("--input", required=True, help="s3://BUCKET/PREFIX/ (or a local directory) holding the PNGs")
    p.add_argument("--output", required=True,
                   help="s3://BUCKET/shards/NAME/ (or a local directory): shards/, manifest.parquet, skipped.parquet")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"images per shard (default {DEFAULT_BATCH}; the last shard holds the remainder)")
    add_common_arguments(p)
    return p


def _folder(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def write_shards(sc, candidates: list[Candidate], settings: PrepareSettings, start: int):
    """One Spark task per batch of ``candidates`` (shard ids from ``start``).

    Returns:
        ``(entries, bad)``: every batch's ShardEntry (None where it held bad images), and
        ``{key: reason}`` of the undecodable images.
    """
    batches = [candidates[i : i + settings.batch_size] for i in range(0, len(candidates), settings.batch_size)]
    if not batches:
        return [], {}
    with Progress(sc, PROG, len(batches), len(candidates)) as progress:
        counter = progress.counter

        def task(item):
            outcome = write_batch(item[0], item[1], settings)
            counter.add((1, outcome.entry.num_records if outcome.entry else 0, 0))
            return outcome

        outcomes = sc.parallelize([(start + i, b) for i, b in enumerate(batches)], len(batches)).map(task).collect()
    return [o.entry for o in outcomes], {k: r for o in outcomes for k, r in o.bad}


def run(args: argparse.Namespace) -> int:
    """Run prepare for parsed arguments; returns the exit code."""
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    settings = PrepareSettings(_folder(args.input), _folder(args.output), args.batch, endpoint_from(args))
    started = time.time()
    # seconds, not a minute of retries, for a typo in a bucket or endpoint
    storage.check_buckets((settings.input_uri, settings.output_uri), settings.endpoint_url)

    # Listing happens on the driver: keys and sizes only, never image bytes.
    skipped: list[tuple[str, str]] = []
    candidates: list[Candidate] = []
    listed = sorted(storage.list_objects(settings.input_uri, settings.endpoint_url), key=lambda o: o.key)
    for obj in listed:
        reason = skip_reason_for_key(obj.key, obj.size)
        if reason:
            skipped.append((obj.key, reason))
        else:
            candidates.append(Candidate(obj.key, obj.etag))
    print(f"{PROG}: listed {len(listed)} objects under {settings.input_uri}: "
          f"{len(candidates)} PNG candidates, {len(skipped)} skipped by name or size", flush=True)

    if not candidates:
        raise UsageError(f"{settings.input_uri}: no PNG images found ({len(listed)} objects listed, "
                         f"{len(skipped)} skipped)")
    sc = spark_context("shardinfer-prepare")
    entries, bad = write_shards(sc, candidates, settings, start=0)
    if bad:
        # Undecodable images move the shard boundaries after the first of them: keep the
        # shards before it, rewrite the rest without the bad images (usually a small tail).
        skipped += sorted(bad.items())
        good = [c for c in candidates if c.key not in bad]
        if not good:
            raise UsageError(f"{settings.input_uri}: no decodable PNG images found "
                             f"({len(listed)} objects listed, {len(skipped)} skipped)")
        first_bad = min(i for i, c in enumerate(candidates) if c.key in bad)
        keep = [e for e in entries if e is not None and e.shard_id < first_bad // args.batch]
        rest, more_bad = write_shards(sc, good[len(keep) * args.batch :], settings, start=len(keep))
        if more_bad:
            raise ValueError(f"images changed while prepare ran and no longer decode: {sorted(more_bad)[:5]}")
        stale = {e.shard_id for e in entries if e is not None} - {e.shard_id for e in keep + rest}
        for shard_id in sorted(stale):  # written in the first pass, past the new last shard
            storage.delete(storage.join(settings.output_uri, shard_name(shard_id)), settings.endpoint_url)
        entries = keep + rest
    good_count = sum(e.num_records for e in entries)
    manifest_bytes, manifest_id = manifest_to_bytes(entries, settings.input_uri, args.batch, len(skipped))
    # skipped first, manifest last: the manifest's presence means the whole output is there.
    storage.write_bytes(storage.join(settings.output_uri, SKIPPED_NAME), skipped_to_bytes(skipped), settings.endpoint_url)
    manifest_uri = storage.join(settings.output_uri, MANIFEST_NAME)
    storage.write_bytes(manifest_uri, manifest_bytes, settings.endpoint_url)
    # One-line symlink files: Athena tables over exactly manifest.parquet / skipped.parquet
    # (their folder also holds the shards). See `python -m infer.athena --manifest-output`.
    for name, target in (("manifest", manifest_uri), ("skipped", storage.join(settings.output_uri, SKIPPED_NAME))):
        storage.write_bytes(storage.join(symlink_location(settings.output_uri, name), "symlink.txt"),
                            (target + "\n").encode(), settings.endpoint_url, "text/plain")
    print(f"{PROG}: wrote {len(entries)} shards with {good_count} images, {len(skipped)} skipped, "
          f"in {time.time() - started:.1f}s", flush=True)
    print(f"{PROG}: manifest {manifest_uri} (manifest_id {manifest_id})", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``spark-submit prepare/main.py`` and for tests."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
