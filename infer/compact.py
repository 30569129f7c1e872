"""compact: rewrite one finished run's per-shard files into Athena-sized files.

    spark-submit --properties-file spark-defaults.conf infer/compact.py \\
        --input s3://BUCKET/predictions/ --run-id ID \\
        --output s3://BUCKET/predictions_compacted/ [--target-size 128MiB]

The driver checks that the run is finished (every manifest shard has its part file and an
ok status), groups the part files in shard order into bins of about ``--target-size``
(by their compressed size), and one Spark task per bin concatenates its parts and uploads
one Parquet file with one PUT to ``<output>/run_id=<id>/part-NNNNN.parquet``.  Rows in must
equal rows out.  A rerun writes the same names and then deletes any leftover file of an
earlier compaction of that run, so the output never holds a row twice.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from common import athena, glue, storage  # noqa: E402
from common.cli import UsageError, Writes, add_common_arguments, exit_process, run_cli  # noqa: E402
from common.manifest import read_manifest  # noqa: E402
from common.output import (  # noqa: E402
    PARQUET_CONTENT_TYPE,
    PREDICTION_SCHEMA,
    check_run_id,
    part_key,
    partition_dir,
    run_record_key,
    table_to_parquet,
)
from common.settings import from_flags, store_from  # noqa: E402
from common.spark import spark_context  # noqa: E402
from common.status import failed_ids  # noqa: E402
from infer.plan import present_mask  # noqa: E402

PROG = "compact"
# Athena reads Parquet fastest in files of roughly 128 MB-1 GB; small per-shard files (tens
# of KB each) cost one S3 request apiece.
DEFAULT_TARGET = "128MiB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``128MiB`` -> 134217728; also KB/MB/GB (powers of 10), KiB/MiB/GiB and plain bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise UsageError(f"--target-size {text!r}: expected a size like 128MiB, 64MB or 1000000")
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size < 1:
        raise UsageError(f"--target-size {text!r} must be positive")
    return size


def plan_bins(sizes: Sequence[tuple[str, int]], target: int) -> list[list[str]]:
    """Group ``(key, size)`` in order into consecutive bins of at most ``target`` bytes (at least one key each)."""
    bins: list[list[str]] = []
    current: list[str] = []
    total = 0
    for key, size in sizes:
        if current and total + size > target:
            bins.append(current)
            current, total = [], 0
        current.append(key)
        total += size
    if current:
        bins.append(current)
    return bins


def _current_schema(table: pa.Table) -> pa.Table:
    """Part files written before the ``embedding`` column get it as nulls (runs from older versions compact too)."""
    if "embedding" in table.column_names or "top1_prob" not in table.column_names:
        return table
    at = table.column_names.index("top1_prob") + 1
    return table.add_column(at, PREDICTION_SCHEMA.field("embedding"),
                            pa.nulls(table.num_rows, PREDICTION_SCHEMA.field("embedding").type))


def write_bin(item: tuple[int, list[str]], target: str, run_id: str, store: storage.Store) -> tuple[str, int, int]:
    """Spark task: concatenate one bin's part files into one Parquet object; returns (uri, rows in, rows out)."""
    index, uris = item
    tables = [_current_schema(pq.read_table(io.BytesIO(storage.read_bytes(u, store)))) for u in uris]
    for u, t in zip(uris, tables):
        if not t.schema.equals(PREDICTION_SCHEMA, check_metadata=False):
            raise ValueError(f"{u}: schema differs from the predictions schema; not compacting it")
    table = pa.concat_tables(tables).combine_chunks()
    key = part_key(target, run_id, index)  # numbered by bin
    data = table_to_parquet(table, key)
    storage.write_bytes(key, data, store, PARQUET_CONTENT_TYPE, encryption=store.encryption)
    return key, sum(t.num_rows for t in tables), pq.read_metadata(io.BytesIO(data)).num_rows


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False,
                                usage="%(prog)s --input URI --run-id ID --output URI [--target-size 128MiB] "
                                "[--table NAME] [--glue-database DB --glue-table TABLE] [--sse ...] [options]",
                                description="Rewrite one finished infer run's per-shard Parquet files (under "
                                "--input) into files of about --target-size under <output>/run_id=<id>/, with "
                                "the same rows and schema, and print the Athena DDL for the compacted table.")
    p.add_argument("--input", help="the run's predictions: infer's --output, e.g. s3://BUCKET/predictions/")
    p.add_argument("--run-id", required=True, help="the finished run to compact")
    p.add_argument("--output", help="where compacted files go, e.g. s3://BUCKET/predictions_compacted/")
    p.add_argument("--target", help=argparse.SUPPRESS)  # the old name of --output: refused with what to type
    p.add_argument("--target-size", default=DEFAULT_TARGET, help=f"approximate file size (default {DEFAULT_TARGET})")
    p.add_argument("--table", default="predictions_compacted", help="table name for the printed DDL")
    p.add_argument("--glue-database", default=None, help="with --glue-table: point the run's partition of that Glue "
                   "table at the compacted files")
    p.add_argument("--glue-table", default=None, help="the Glue table infer registered the run in")
    add_common_arguments(p)
    return p


@dataclass(frozen=True)
class CompactConfig:
    """Every flag of compact, checked (:meth:`from_args`), the target size in bytes and the Store."""

    input: str
    run_id: str
    output: str
    target: Optional[str]
    target_size: str
    table: str
    glue_database: Optional[str]
    glue_table: Optional[str]
    sse: Optional[str]
    sse_kms_key_id: Optional[str]
    s3_endpoint_url: Optional[str]
    verbose: bool
    # derived from the flags
    target_bytes: int
    store: storage.Store

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompactConfig":
        """The settings of parsed flags.

        Raises:
            UsageError: the offending flag and value.
        """
        run_id = check_run_id(args.run_id)
        if bool(args.glue_database) != bool(args.glue_table):
            raise UsageError("--glue-database and --glue-table go together")
        if args.target:
            raise UsageError("--target is now --output, and the run's predictions are --input (infer's --output): "
                             f"compact --input {args.output or 's3://BUCKET/predictions/'} --run-id {run_id} "
                             f"--output {args.target}")
        if not args.input or not args.output:
            raise UsageError("--input (infer's --output) and --output (where compacted files go) are both required")
        if storage.join(args.output) == storage.join(args.input):
            raise UsageError("--output must differ from --input (compaction never rewrites the source files)")
        return from_flags(cls, args, target_bytes=parse_size(args.target_size), store=store_from(args))


def run(config: CompactConfig, writes: Writes) -> int:
    """Compact one run; returns the exit code."""
    run_id, endpoint, target_size = config.run_id, config.store, config.target_bytes
    storage.check_buckets((config.input, config.output), endpoint)
    try:
        record = json.loads(storage.read_bytes(run_record_key(config.input, run_id), endpoint))
    except storage.NotFound as e:
        raise UsageError(f"run {run_id} has no record under {config.input} (is --run-id right?)") from e
    manifest = read_manifest(record["manifest"], endpoint)
    missing = np.flatnonzero(~present_mask(config.input, run_id, manifest.num_shards, endpoint)).tolist()
    failed = failed_ids(config.input, run_id, endpoint).tolist()
    if missing or failed:
        raise UsageError(f"run {run_id} is not finished: {len(missing)} shards missing {missing[:10]}, "
                         f"{len(failed)} failed {failed[:10]}; finish it with infer --only-missing / --only-failed")

    prefix = partition_dir(config.input, run_id)
    sizes = sorted((storage.object_uri(prefix, o.key), o.size) for o in storage.list_objects(prefix, endpoint)
                   if o.key.endswith(".parquet"))
    bins = plan_bins(sizes, target_size)
    sc = spark_context(f"shardinfer-compact-{run_id}")
    finish = "run the same compact command again (it writes the same files)"
    writes.begin(f"compacted files under {partition_dir(config.output, run_id)} (the run's own files under --input are "
                 "never changed)", finish)
    results = (sc.parallelize(list(enumerate(bins)), len(bins))
               .map(partial(write_bin, target=config.output, run_id=run_id, store=config.store)).collect())
    rows_in, rows_out = sum(r[1] for r in results), sum(r[2] for r in results)
    if rows_in != rows_out or rows_in != manifest.num_images:
        raise RuntimeError(f"compaction of {run_id}: {rows_in} rows in, {rows_out} rows out, "
                           f"manifest has {manifest.num_images} images")
    written = {r[0] for r in results}
    out_prefix = partition_dir(config.output, run_id)
    stale = [storage.object_uri(out_prefix, o.key) for o in storage.list_objects(out_prefix, endpoint)
             if storage.object_uri(out_prefix, o.key) not in written]
    storage.delete_objects(stale, endpoint)  # leftovers of an earlier compaction with more bins
    print(f"{PROG}: {len(sizes)} part files, {rows_in} rows -> {len(bins)} files under {out_prefix}"
          f"{f' ({len(stale)} stale files removed)' if stale else ''}", flush=True)
    if config.glue_table:
        writes.begin(f"the Glue partition run_id={run_id} of {config.glue_database}.{config.glue_table}", finish)
        moved = glue.catalog(lambda: glue.move_partition(config.glue_database, config.glue_table, run_id, out_prefix))
        print(f"{PROG}: Glue table {config.glue_database}.{config.glue_table}: partition run_id={run_id} "
              + (f"now at {moved}" if moved else "is not registered; nothing to update"), flush=True)
    print(f"{PROG}: Athena statements for the compacted table:\n")
    print(athena.create_predictions_table(config.output, config.table) + ";\n")
    print(athena.add_partition(config.output, run_id, config.table) + ";")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``spark-submit infer/compact.py`` and for tests."""
    return run_cli(PROG, run, build_parser(), argv, settings=CompactConfig.from_args)


if __name__ == "__main__":
    exit_process(main())
