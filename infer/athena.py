"""Print the Athena statements for shardinfer's output: ``python -m infer.athena --help``.

    python -m infer.athena --output s3://BUCKET/predictions/ --run-id ID
    python -m infer.athena --output s3://BUCKET/predictions/ --projection
    python -m infer.athena --manifest-output s3://BUCKET/shards/cifar10-test/

Nothing is read or written: the statements follow from the locations alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import athena  # noqa: E402
from common.cli import UsageError, exit_process, run_cli  # noqa: E402
from common.output import check_run_id  # noqa: E402

PROG = "athena"


def build_parser() -> argparse.ArgumentParser:
    """Flags: where the output is, which run, names."""
    p = argparse.ArgumentParser(prog="python -m infer.athena", description="Print Athena DDL for shardinfer's "
                                "predictions (CREATE EXTERNAL TABLE, ALTER TABLE ADD PARTITION for a run, a "
                                "partition-projection variant) and for a prepare manifest.")
    p.add_argument("--output", help="infer's --output (the table location), e.g. s3://BUCKET/predictions/")
    p.add_argument("--run-id", help="also print the ALTER TABLE ... ADD PARTITION statement for this run")
    p.add_argument("--projection", action="store_true",
                   help="print the partition-projection table (projection.run_id.type = injected) instead")
    p.add_argument("--table", default="predictions", help="table name (default predictions)")
    p.add_argument("--database", default=None, help="database to qualify table names with (default: none)")
    p.add_argument("--manifest-output", help="prepare's --output: print tables over its manifest parts "
                   "(manifest/) and skipped.parquet")
    p.add_argument("--status", action="store_true", help="with --output: also print the table over every run's "
                   "status files (_runs/<run_id>/status/*.parquet: which shards failed, and why)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    return p


def statements(args: argparse.Namespace) -> list[str]:
    """The statements the flags ask for, in order."""
    if not args.output and not args.manifest_output:
        raise UsageError("give --output (predictions table) and/or --manifest-output (manifest table)")
    out = []
    if args.output:
        if args.projection:
            out.append(athena.create_predictions_table(args.output, args.table, args.database, projection=True))
        else:
            out.append(athena.create_predictions_table(args.output, args.table, args.database))
            if args.run_id:
                out.append(athena.add_partition(args.output, check_run_id(args.run_id), args.table, args.database))
        if args.status:
            out.append(athena.create_status_table(args.output, database=args.database))
    elif args.run_id or args.projection or args.status:
        raise UsageError("--run-id, --projection and --status need --output")
    if args.manifest_output:
        out.append(athena.create_manifest_table(args.manifest_output, "manifest", args.database))
        out.append(athena.create_manifest_table(args.manifest_output, "skipped", args.database, skipped=True))
    return out


def run(args: argparse.Namespace) -> int:
    """Print the statements, separated by blank lines."""
    print("\n\n".join(s + ";" for s in statements(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    exit_process(main())
