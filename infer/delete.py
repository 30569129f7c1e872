"""Delete (or redo) one run: its part files, its run record and its Glue partition — after showing what goes.

    python -m infer.delete --output s3://BUCKET/predictions/ --run-id ID \\
        [--glue-database DB --glue-table TABLE | --iceberg-table DB.TABLE]   # a dry run: lists what would go
    python -m infer.delete ... --yes                          # deletes it

What goes: every object under ``<output>/run_id=<ID>/`` (the run's partition of the predictions
table), every object under ``<output>/_runs/<ID>/`` (run.json, summary, status files, report,
athena.sql, a converted model), and with ``--glue-*`` the table's partition ``run_id=ID`` (the
table stays). Nothing else is touched: other runs, the manifest and its shards stay. A compacted
copy is another location: the same command with its ``--output`` removes it. After a delete, the
same infer command runs the work again from the start.

With ``--iceberg-table`` the run leaves the Iceberg table with one metadata-only snapshot (its files dropped
whole, and its commit properties removed in the same commit), then its ``_runs/<ID>/`` record goes.  Its part
files stay: older snapshots still refer to them (``FOR VERSION AS OF``) until snapshots expire, and the same
infer command would commit them again rather than recompute (use another --run-id for new output).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import glue, iceberg, storage  # noqa: E402
from common.cli import UsageError, Writes, add_common_arguments, exit_process, run_cli  # noqa: E402
from common.output import check_run_id, partition_dir, run_dir  # noqa: E402
from common.settings import from_flags, store_from  # noqa: E402

PROG = "delete"
SHOWN = 5  # keys listed per location in the dry run


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m infer.delete", allow_abbrev=False,
                                usage="%(prog)s --output URI --run-id ID [--glue-database DB --glue-table TABLE | "
                                "--iceberg-table DB.TABLE] [--yes] [options]",
                                description="Delete one infer run: its part files, its _runs/<run_id>/ record and "
                                "its Glue partition. Without --yes, only lists what would go.")
    p.add_argument("--output", help="infer's --output, e.g. s3://BUCKET/predictions/")
    p.add_argument("--run-id", help="the run to delete")
    p.add_argument("--glue-database", default=None, help="with --glue-table: also remove the run's partition")
    p.add_argument("--glue-table", default=None, help="the Glue table infer registered the run in")
    p.add_argument("--iceberg-table", default=None, metavar="DB.TABLE", help="the Iceberg table infer committed the "
                   "run to: the run leaves it in one metadata-only snapshot (its part files stay for time travel "
                   "until snapshots expire)")
    p.add_argument("--yes", action="store_true", help="delete (without it: a dry run that lists what would go)")
    add_common_arguments(p, sse=False)
    return p


@dataclass(frozen=True)
class DeleteConfig:
    """Every flag of delete, checked (:meth:`from_args`), and the Store."""

    output: str
    run_id: str
    glue_database: Optional[str]
    glue_table: Optional[str]
    iceberg_table: Optional[str]
    yes: bool
    s3_endpoint_url: Optional[str]
    verbose: bool
    store: storage.Store  # derived from the flags

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DeleteConfig":
        """The settings of parsed flags.

        Raises:
            UsageError: the offending flag and value.
        """
        if not args.output or not args.run_id:
            raise UsageError("--output (infer's --output) and --run-id are both required")
        check_run_id(args.run_id)
        if bool(args.glue_database) != bool(args.glue_table):
            raise UsageError("--glue-database and --glue-table go together")
        if args.iceberg_table:
            iceberg.parse_table_name(args.iceberg_table)
            if args.glue_table:
                raise UsageError("--iceberg-table or --glue-database/--glue-table: a run is in one table")
        return from_flags(cls, args, store=store_from(args))


def run_iceberg(config: DeleteConfig, writes: Writes) -> int:
    """--iceberg-table: show what the run holds in the table, then (with --yes) drop it and its record."""
    from infer import iceberg_table

    run_id, endpoint = config.run_id, config.store
    storage.check_buckets([config.output], endpoint)
    target = iceberg_table.find_table(config.iceberg_table, config.output, endpoint)
    if target.table is None:
        raise UsageError(f"--iceberg-table {config.iceberg_table}: no such table in the Glue catalog")
    held = iceberg_table.run_in_table(target.table, run_id)
    record = storage.as_folder(run_dir(config.output, run_id))
    uris = [storage.object_uri(record, o.key) for o in storage.list_objects(record, endpoint)]
    if not held.files and not held.commits and not uris:
        print(f"{PROG}: run {run_id}: not in {target.ident} and nothing under {record}: nothing to delete")
        return 0
    verb = "deleting" if config.yes else "would delete"
    print(f"{PROG}: {verb} run_id={run_id} from the Iceberg table {target.ident}: {held.files} files, {held.rows} rows, "
          f"in one metadata-only snapshot (the files stay for time travel until snapshots expire)", flush=True)
    print(f"{PROG}: {verb} {len(uris)} objects under {record}", flush=True)
    if not config.yes:
        print(f"{PROG}: dry run: nothing deleted; add --yes to delete", flush=True)
        return 0
    writes.begin(f"run {run_id} partly deleted (from {target.ident} first, then its record)",
                 "run the same delete command again: it deletes what is left")
    snapshot = iceberg_table.delete_run(target.table, run_id)
    storage.delete_objects(uris, endpoint)
    print(f"{PROG}: run {run_id} deleted from {target.ident} (snapshot {snapshot}) and its record ({len(uris)} objects)",
          flush=True)
    return 0


def run(config: DeleteConfig, writes: Writes) -> int:
    """List, then (with --yes) delete; returns the exit code."""
    if config.iceberg_table:
        return run_iceberg(config, writes)
    run_id, endpoint = config.run_id, config.store
    storage.check_buckets([config.output], endpoint)
    locations = (partition_dir(config.output, run_id), storage.as_folder(run_dir(config.output, run_id)))
    found = {loc: [storage.object_uri(loc, o.key) for o in storage.list_objects(loc, endpoint)]
             for loc in locations}
    partition = None
    if config.glue_table:
        partition = glue.catalog(lambda: glue.partition_location(config.glue_database, config.glue_table, run_id))
    total = sum(len(v) for v in found.values())
    if not total and partition is None:
        print(f"{PROG}: run {run_id}: nothing under {config.output} (and no Glue partition): nothing to delete")
        return 0
    verb = "deleting" if config.yes else "would delete"
    for loc, uris in found.items():
        print(f"{PROG}: {verb} {len(uris)} objects under {loc}"
              + "".join(f"\n    {u}" for u in uris[:SHOWN]) + (f"\n    … and {len(uris) - SHOWN} more" if
                                                             len(uris) > SHOWN else ""), flush=True)
    if config.glue_table:
        what = (f"the partition run_id={run_id} of {config.glue_database}.{config.glue_table} (at {partition})"
                if partition is not None else f"no partition run_id={run_id} in {config.glue_database}.{config.glue_table}")
        print(f"{PROG}: {verb if partition is not None else 'Glue:'} {what}", flush=True)
    if not config.yes:
        print(f"{PROG}: dry run: nothing deleted; add --yes to delete", flush=True)
        return 0
    writes.begin(f"run {run_id} partly deleted" + (" (its Glue partition first, then its objects)" if partition
                                                   is not None else ""),
                 "run the same delete command again: it lists and deletes what is left")
    if partition is not None:  # the table stops showing the run first, then its files go
        glue.catalog(lambda: glue.delete_partition(config.glue_database, config.glue_table, run_id))
    for uris in found.values():
        storage.delete_objects(uris, endpoint)
    print(f"{PROG}: run {run_id} deleted ({total} objects{', its Glue partition' if partition is not None else ''})",
          flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    return run_cli(PROG, run, build_parser(), argv, settings=DeleteConfig.from_args)


if __name__ == "__main__":
    exit_process(main())
