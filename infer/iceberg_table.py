"""infer's Iceberg table (``--iceberg-table DB.TABLE``), the driver's side: the table found or created in the
Glue catalog (pyiceberg), the shards of the run it already holds, one commit per invocation of the part
files the tasks wrote, and a run's delete (python -m infer.delete); the contract: common/iceberg.py.

The driver never reads a part file: each task reports its file's statistics (:class:`common.iceberg.FileStats`)
with its statuses, and :class:`Committer` streams them into Iceberg manifest files as each wave of tasks ends,
a new manifest every :data:`MANIFEST_FILES` files.  What it keeps is a bit per shard, the manifests' summaries
and the snapshot summary's counters, so a run of 15.6 M files commits from bounded memory
(docs/iceberg.md).  The commit is a fast append of those manifests with the run's ledger property; pyiceberg
retries it when another writer committed first (Glue's ``VersionId`` check), and it is refused, never
duplicated, when that writer was another invocation of the same run.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from common import glue, iceberg, storage
from common.errors import GlueError, UsageError

PROG = "infer"
# Files per manifest: ~0.5 KB each in Avro, so ~10 MB manifests (Iceberg's target is 8 MB).
MANIFEST_FILES = 20_000
TABLE_PROPERTIES = {"format-version": str(iceberg.FORMAT_VERSION), "write.parquet.compression-codec": "zstd",
                    "write.format.default": "parquet"}


def catalog(store: storage.Store):
    """The Glue catalog, through pyiceberg, with this job's storage (endpoint, retries, ``--sse``).  Glue's
    endpoint and credentials come from boto3's chain, as for every other AWS call of the jobs."""
    from pyiceberg.catalog.glue import GlueCatalog

    from common import iceberg_io

    return GlueCatalog("glue", **iceberg_io.properties(store))


def _glue_errors(action):
    """Run ``action()``, turning a refused commit (pyiceberg's) and AWS's failures (:func:`common.glue.catalog`)
    into a :class:`GlueError` that says what."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    try:
        return glue.catalog(action)
    except (CommitFailedException, ValidationException) as e:
        raise GlueError(f"Iceberg commit refused: {e}") from e


@dataclasses.dataclass
class Target:
    """The table a run goes to: found in the catalog (``table`` set) or to be created at ``location``."""

    database: str
    name: str
    location: str
    table: object = None  # pyiceberg Table, None until it exists

    @property
    def ident(self) -> str:
        return f"{self.database}.{self.name}"

    @property
    def files_prefix(self) -> str:
        """Where the run's part files go: ``<location>/data``."""
        return iceberg.data_prefix(self.location)


def find_table(name: str, output: str, store: storage.Store) -> Target:
    """The table named by ``--iceberg-table``: loaded and checked when it exists, else where it will be made.

    Raises:
        UsageError: a bad name, or a table that exists with another schema or partitioning (the difference).
    """
    from pyiceberg.exceptions import NoSuchTableError

    database, table = iceberg.parse_table_name(name)
    cat = catalog(store)
    try:
        t = _glue_errors(lambda: cat.load_table((database, table)))
    except NoSuchTableError:
        return Target(database, table, iceberg.default_location(output, database, table))
    problem = iceberg.schema_difference(t.schema(), t.spec())
    if problem:
        raise UsageError(f"--iceberg-table {name}: the table exists with another schema: {problem}; use another table")
    return Target(database, table, t.location().rstrip("/"), t)


def ensure_table(target: Target, store: storage.Store) -> str:
    """Create the table (and its Glue database) when absent; returns "created" or "exists"."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError

    if target.table is not None:
        return "exists"
    cat = catalog(store)
    try:
        _glue_errors(lambda: cat.create_namespace(target.database))
    except NamespaceAlreadyExistsError:
        pass
    schema = iceberg.table_schema()
    try:
        target.table = _glue_errors(lambda: cat.create_table((target.database, target.name), schema=schema,
                                                            location=target.location,
                                                            partition_spec=iceberg.partition_spec(schema),
                                                            properties=TABLE_PROPERTIES))
        return "created"
    except TableAlreadyExistsError:  # made meanwhile by another run: use it if it is ours
        made = find_table(target.ident, "", store)
        target.table, target.location = made.table, made.location
        return "exists"


def committed_mask(table, output: str, run_id: str, num_shards: int, store: storage.Store) -> np.ndarray:
    """``mask[i]``: shard *i* of the run is in the table (the ledgers its commit properties name: one GET per
    commit of the run, none for a new run)."""
    mask = np.zeros(num_shards, dtype=bool)
    if table is None:
        return mask
    for snapshot_id, uri in sorted(iceberg.run_commits(table.properties, run_id).items()):
        for lo, hi in iceberg.read_ledger(storage.read_bytes(uri, store)):
            mask[max(0, lo):min(num_shards, hi)] = True
    return mask


def _producer_class():
    """pyiceberg's fast append, with manifests written beforehand (by :class:`Committer`) instead of from a
    list of data files held in memory, and a check that no other invocation of the run committed meanwhile."""
    from pyiceberg.table.snapshots import Operation, Summary, update_snapshot_summaries
    from pyiceberg.table.update.snapshot import _FastAppendFiles

    class _Append(_FastAppendFiles):
        def __init__(self, transaction, io, committer: "Committer", properties: dict) -> None:
            super().__init__(Operation.APPEND, transaction, io, snapshot_properties=properties)
            self._snapshot_id = committer.snapshot_id  # the manifests' entries carry it
            self._committer = committer

        def _manifests(self):
            return list(self._committer.manifests) + self._existing_manifests()

        def _summary(self, snapshot_properties=None) -> Summary:
            metadata = self._transaction.table_metadata
            parent = metadata.snapshot_by_id(self._parent_snapshot_id) if self._parent_snapshot_id is not None else None
            return update_snapshot_summaries(
                Summary(operation=Operation.APPEND, **self._committer.collector.build(), **self.snapshot_properties),
                previous_summary=parent.summary if parent is not None else None)

        def _validate_concurrency(self) -> None:  # on each retry, against the table as it is now
            self._committer.check_no_other_commit(self._transaction._table.metadata.properties)

    return _Append


class Committer:
    """One invocation's commit: the files its tasks report, streamed into manifests (:meth:`add`), then one
    snapshot (:meth:`commit`)."""

    def __init__(self, target: Target, output: str, run_id: str, invocation: str, manifest_id: str,
                 num_shards: int, store: storage.Store, seen: np.ndarray) -> None:
        from pyiceberg.table.snapshots import SnapshotSummaryCollector

        self.table = target.table
        self.ident, self.output, self.run_id, self.invocation = target.ident, output, run_id, invocation
        self.manifest_id, self.store = manifest_id, store
        self.seen_commits = iceberg.run_commits(self.table.properties, run_id)
        self.seen = seen  # shards already in the table when the run was planned: never added again
        self.added = np.zeros(num_shards, dtype=bool)
        self.snapshot_id = self.table.metadata.new_snapshot_id()
        self.collector = SnapshotSummaryCollector()
        self.manifests: list = []
        self.files = self.rows = self.skipped = 0
        self._writer = None
        self._in_writer = 0
        self._spec = self.table.spec()
        self._schema = self.table.schema()

    def _manifest_writer(self):
        from pyiceberg.manifest import write_manifest

        path = storage.join(self.table.location(), "metadata",
                            f"shardinfer-{self.snapshot_id}-m{len(self.manifests)}.avro")
        w = write_manifest(format_version=self.table.format_version, spec=self._spec, schema=self._schema,
                           output_file=self.table.io.new_output(path), snapshot_id=self.snapshot_id,
                           avro_compression="zstandard")
        w.__enter__()
        return w

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.__exit__(None, None, None)
            self.manifests.append(self._writer.to_manifest_file())
            self._writer, self._in_writer = None, 0

    def add(self, files: Sequence[iceberg.FileStats]) -> None:
        """Add the part files of a batch of tasks (one entry each in the open manifest)."""
        from pyiceberg.manifest import ManifestEntry, ManifestEntryStatus

        for f in files:
            if self.seen[f.shard_id] or self.added[f.shard_id]:
                self.skipped += 1
                continue
            df = iceberg.data_file(f, self.run_id, self._spec.spec_id)
            if self._writer is None:
                self._writer = self._manifest_writer()
            self._writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self.snapshot_id,
                                                     data_file=df))
            self.collector.add_file(df, schema=self._schema, partition_spec=self._spec)
            self.added[f.shard_id] = True
            self.files += 1
            self.rows += df.record_count
            self._in_writer += 1
            if self._in_writer >= MANIFEST_FILES:
                self._close_writer()

    def check_no_other_commit(self, properties: dict) -> None:
        """Refuse to commit when another invocation of the run committed since this one was planned (its shards
        and ours may overlap).

        Raises:
            pyiceberg's ValidationException (the commit is not made; :func:`_glue_errors` names it).
        """
        if set(iceberg.run_commits(properties, self.run_id)) - set(self.seen_commits):
            from pyiceberg.exceptions import ValidationException

            raise ValidationException(
                f"another infer of run {self.run_id} committed to {self.ident} while this one ran; nothing of this "
                "invocation is committed: run the same command again to commit its files")

    def commit(self, failed: int = 0) -> Optional[int]:
        """Commit every file added, in one snapshot; returns its id, or None when there was nothing to add.

        Raises:
            GlueError: the commit was refused (another invocation of the run committed meanwhile, or the
                catalog failed): nothing of it is in the table, the files stay for the next invocation.
        """
        self._close_writer()
        if not self.files:
            return None
        from infer.plan import mask_to_ranges

        ledger = iceberg.ledger_uri(self.output, self.run_id, self.snapshot_id)
        storage.write_bytes(ledger, iceberg.ledger_bytes(mask_to_ranges(self.added)), self.store,
                            encryption=self.store.encryption)
        summary = {iceberg.SUMMARY_RUN_ID: self.run_id, iceberg.SUMMARY_INVOCATION: self.invocation,
                   iceberg.SUMMARY_SHARDS: str(self.files), iceberg.SUMMARY_SHARDS_FAILED: str(failed),
                   iceberg.SUMMARY_MANIFEST_ID: self.manifest_id}
        _glue_errors(self.table.refresh)
        _glue_errors(lambda: self.check_no_other_commit(self.table.properties))
        txn = self.table.transaction()
        _producer_class()(txn, self.table.io, self, summary).commit()
        txn.set_properties({iceberg.commit_property(self.run_id, self.snapshot_id): ledger})
        _glue_errors(txn.commit_transaction)  # retried by pyiceberg when another writer committed first
        return self.snapshot_id


@dataclasses.dataclass(frozen=True)
class RunInTable:
    """What a run holds in the table's current snapshot (from its manifests: no data file is read)."""

    files: int
    rows: int
    commits: dict  # snapshot id -> ledger URI (its commit properties)


def run_in_table(table, run_id: str) -> RunInTable:
    """The run's files and rows in the current snapshot, and its commit properties."""
    from pyiceberg.expressions import EqualTo

    from common.output import PARTITION_COLUMN

    files = rows = 0
    for task in table.scan(row_filter=EqualTo(PARTITION_COLUMN, run_id)).plan_files():
        files += 1
        rows += task.file.record_count
    return RunInTable(files, rows, iceberg.run_commits(table.properties, run_id))


def delete_run(table, run_id: str) -> Optional[int]:
    """Drop the run from the table: one snapshot that removes its files whole (``DELETE … WHERE run_id``, no data
    file rewritten or read) and, in the same commit, its commit properties, so the same infer command would commit
    its files again.  Returns the snapshot id (None when the run had no files).  Its part files stay on S3 while
    an older snapshot refers to them (time travel), until snapshots expire."""
    from pyiceberg.expressions import EqualTo

    from common.output import PARTITION_COLUMN

    held = run_in_table(table, run_id)
    keys = [iceberg.commit_property(run_id, s) for s in held.commits]
    if not held.files and not keys:
        return None
    txn = table.transaction()
    if held.files:
        txn.delete(EqualTo(PARTITION_COLUMN, run_id), snapshot_properties={iceberg.SUMMARY_RUN_ID: run_id})
    if keys:
        txn.remove_properties(*keys)
    _glue_errors(txn.commit_transaction)
    return table.current_snapshot().snapshot_id if held.files else None  # properties alone make no snapshot
