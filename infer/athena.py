"""Print the Athena statements for shardinfer's output: ``python -m infer.athena --help``.

    python -m infer.athena --output s3://BUCKET/predictions/ --run-id ID
    python -m infer.athena --output s3://BUCKET/predictions/ --projection
    python -m infer.athena --manifest-output s3://BUCKET/shards/cifar10-test/
    python -m infer.athena --output s3://BUCKET/predictions/ --status --glue-database analytics

Nothing is read or written: the statements follow from the locations alone.  With ``--glue-database``
the same tables are created in the Glue Data Catalog instead (what Athena's DDL would create, from the
same :class:`common.athena.Table`), for Athena, Trino or Spark to query without running any DDL.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import athena, glue  # noqa: E402
from common.cli import UsageError, Writes, exit_process, run_cli  # noqa: E402
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
    p.add_argument("--glue-database", default=None, help="create the tables in this Glue Data Catalog database "
                   "(created when absent) instead of printing DDL; an existing table of another shape is refused")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    return p


def tables(args: argparse.Namespace) -> list[athena.Table]:
    """The tables the flags ask for, in order."""
    if not args.output and not args.manifest_output:
        raise UsageError("give --output (predictions table) and/or --manifest-output (manifest table)")
    if args.glue_database and args.database and args.glue_database != args.database:
        raise UsageError("--database and --glue-database name the same database: give one")
    database = args.glue_database or args.database
    out = []
    if args.output:
        out.append(athena.predictions_table(args.output, args.table, database, projection=args.projection))
        if args.status:
            out.append(athena.status_table(args.output, database=database))
    elif args.run_id or args.projection or args.status:
        raise UsageError("--run-id, --projection and --status need --output")
    if args.manifest_output:
        out.append(athena.manifest_table(args.manifest_output, "manifest", database))
        out.append(athena.manifest_table(args.manifest_output, "skipped", database, skipped=True))
    return out


def statements(args: argparse.Namespace) -> list[str]:
    """The statements the flags ask for, in order."""
    out = [t.ddl() for t in tables(args)]
    if args.output and args.run_id and not args.projection:
        out.insert(1, athena.add_partition(args.output, check_run_id(args.run_id), args.table, args.database))
    return out


def run(args: argparse.Namespace, writes: Writes) -> int:
    """Print the statements, separated by blank lines (or, with --glue-database, create the tables)."""
    if not args.glue_database:
        print("\n\n".join(s + ";" for s in statements(args)))
        return 0
    if args.run_id:
        raise UsageError("--glue-database creates tables; runs are registered by infer --glue-database/--glue-table "
                         "when they complete (or use the printed ALTER TABLE without --glue-database)")
    wanted = tables(args)
    for table in wanted:  # every table checked before any is created
        glue.catalog(lambda: glue.check(table, "use another --table or --glue-database"))
    writes.begin(f"Glue tables in {args.glue_database}", "run the same command again")
    for table in wanted:
        said = glue.catalog(lambda: glue.ensure(table, "use another --table or --glue-database"))
        print(f"{PROG}: Glue table {table.database}.{table.name} ({table.location}): {said}", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    exit_process(main())
