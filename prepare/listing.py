"""prepare's input: which objects there are, listed by Spark tasks rather than by the driver alone.

Two ways in:

* ``--input s3://B/P/`` alone: the driver lists one level under ``P`` (``Delimiter="/"``):
  the objects directly there, and the sub-prefixes; sub-prefixes that hold only further
  sub-prefixes are opened (:func:`plan_prefix`); then each sub-prefix is a :class:`Source`
  that one Spark task lists in full.  The driver holds only the objects directly under ``P``.
* ``--input-list URI``: an S3 Inventory ``manifest.json`` (CSV or Parquet inventory files),
  or Parquet / CSV files with a ``key`` column (optional ``size`` and ``etag``), one file or
  a folder of them.  The driver reads only ``manifest.json`` (or lists the folder); each
  data file is a Source read by one task.  Inventory rows outside ``--input`` are left out
  (an inventory covers a bucket); a key list naming a key outside ``--input`` is an error.

Every task yields :class:`Listed` tuples; nothing here decides what is an image.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence

import pyarrow.parquet as pq

from common import storage
from common.cli import UsageError
from common.images import skip_reason_for_key

FANOUT_TARGET = 64
FANOUT_DEPTH = 3
LIST_THREADS = 16


class Listed(NamedTuple):
    """One listed object: its key (bucket-relative; a path for a local input), size (-1: unknown),
    ETag ("" unknown), and whether it lies outside ``--input`` (only a list can say so)."""

    key: str
    size: int
    etag: str
    outside: bool = False


class Classified(NamedTuple):
    """A listed object as prepare's driver stages see it: a candidate image (``reason`` None) or skipped
    by its name or size (``reason`` says why)."""

    key: str
    etag: str
    reason: Optional[str]
    outside: bool

    @property
    def candidate(self) -> bool:
        return self.reason is None and not self.outside


def classify(item: Listed, formats: Sequence[str]) -> Classified:
    """Judge one listed object by its key and size (content is checked later, when its part is packed)."""
    size = item.size if item.size >= 0 else 1  # unknown (a key list without sizes): judged by content later
    return Classified(item.key, item.etag, skip_reason_for_key(item.key, size, formats), item.outside)


@dataclass(frozen=True)
class Source:
    """What one listing task reads: ``kind`` is ``prefix``, ``inventory-csv``, ``inventory-parquet``,
    ``keys-csv`` or ``keys-parquet``; ``columns`` are an inventory's fileSchema names."""

    kind: str
    uri: str
    columns: tuple[str, ...] = ()


def _key_prefix(input_uri: str) -> str:
    return storage.parse_s3(input_uri).key if storage.is_s3(input_uri) else input_uri


def plan_prefix(input_uri: str, endpoint_url: storage.Endpoint) -> tuple[list[Source], list[Listed]]:
    """The listing of ``--input``: sub-prefix Sources for tasks, and the objects directly under it.

    The driver lists ``--input`` one level deep (every page: those objects it holds).  A
    sub-prefix that holds only further sub-prefixes (its first page shows no object) is
    replaced by them, level by level, while there are fewer than :data:`FANOUT_TARGET` and
    for at most :data:`FANOUT_DEPTH` levels: ``train/``, ``test/`` become their class folders.
    Looking costs one request per sub-prefix; the driver never pages through a folder of objects.
    """
    try:
        objects, level = storage.list_level(input_uri, endpoint_url)
    except storage.NotFound as e:
        raise UsageError(f"{input_uri}: {e}") from e
    direct = [Listed(o.key, o.size, o.etag) for o in objects]
    sources: list[Source] = []
    for _ in range(FANOUT_DEPTH - 1):
        if not level or len(sources) + len(level) >= FANOUT_TARGET:
            break
        with ThreadPoolExecutor(LIST_THREADS) as pool:
            peeks = list(pool.map(lambda u: storage.peek_level(u, endpoint_url), level))
        deeper = []
        for folder, (n_objects, subs, more) in zip(level, peeks):
            if n_objects == 0 and not more and subs:
                deeper += subs  # a folder of folders: fan out over its sub-prefixes instead
            else:
                sources.append(Source("prefix", folder))
        level = deeper
    return sources + [Source("prefix", f) for f in level], direct


def _bucket_of_arn(arn: str) -> str:
    return arn.split(":::", 1)[-1] if arn.startswith("arn:") else arn


def plan_list(list_uri: str, input_uri: str, endpoint_url: storage.Endpoint) -> list[Source]:
    """The Sources named by ``--input-list``.

    Raises:
        UsageError: an unreadable inventory manifest, an unsupported format, another bucket, or no files.
    """
    name = list_uri.rstrip("/").rsplit("/", 1)[-1]
    if name == "manifest.json" or list_uri.endswith(".json"):
        try:
            inv = json.loads(storage.read_bytes(list_uri, endpoint_url))
        except storage.NotFound as e:
            raise UsageError(f"--input-list {list_uri}: not found") from e
        except ValueError as e:
            raise UsageError(f"--input-list {list_uri}: not a JSON S3 Inventory manifest ({e})") from e
        fmt = str(inv.get("fileFormat", "")).upper()
        if fmt not in ("CSV", "PARQUET"):
            raise UsageError(f"--input-list {list_uri}: inventory fileFormat {fmt or '(none)'!r} is not supported "
                             "(use CSV or Parquet)")
        source_bucket = inv.get("sourceBucket", "")
        if storage.is_s3(input_uri) and source_bucket and source_bucket != storage.parse_s3(input_uri).bucket:
            raise UsageError(f"--input-list {list_uri}: an inventory of bucket {source_bucket!r}, but --input "
                             f"{input_uri} is in {storage.parse_s3(input_uri).bucket!r}")
        columns = tuple(c.strip() for c in str(inv.get("fileSchema", "")).split(","))
        if fmt == "CSV" and "Key" not in columns:
            raise UsageError(f"--input-list {list_uri}: inventory fileSchema has no Key column: {columns}")
        dest = _bucket_of_arn(str(inv.get("destinationBucket", "")))
        files = inv.get("files") or []
        if not files:
            raise UsageError(f"--input-list {list_uri}: the inventory lists no files")

        def locate(key: str) -> str:
            if storage.is_s3(list_uri) or dest:
                return f"s3://{dest or storage.parse_s3(list_uri).bucket}/{key}"
            return storage.join(list_uri.rsplit("/", 1)[0], key)

        kind = "inventory-csv" if fmt == "CSV" else "inventory-parquet"
        return [Source(kind, locate(f["key"]), columns) for f in files]
    if list_uri.endswith("/") or (not storage.is_s3(list_uri) and not storage.is_http(list_uri)
                                  and not name.count(".")):
        try:
            uris = [storage.object_uri(list_uri, o.key) for o in storage.list_objects(list_uri, endpoint_url)]
        except storage.NotFound as e:
            raise UsageError(f"--input-list {list_uri}: no such folder") from e
        sources = [_key_file(u) for u in sorted(uris) if _key_file(u) is not None]
        if not sources:
            raise UsageError(f"--input-list {list_uri}: no .parquet, .csv or .csv.gz files in it")
        return sources
    source = _key_file(list_uri)
    if source is None:
        raise UsageError(f"--input-list {list_uri}: expected an S3 Inventory manifest.json, a .parquet, .csv or "
                         ".csv.gz file with a 'key' column, or a folder of them")
    return [source]


def _key_file(uri: str) -> Optional[Source]:
    low = uri.lower()
    if low.endswith(".parquet"):
        return Source("keys-parquet", uri)
    if low.endswith(".csv") or low.endswith(".csv.gz"):
        return Source("keys-csv", uri)
    return None


def _text(data: bytes, uri: str) -> str:
    if uri.lower().endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _int(value, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def read_source(source: Source, input_uri: str, endpoint_url: storage.Endpoint) -> Iterator[Listed]:
    """The listing task: every object of ``source`` (for a list, flagged when outside ``--input``).

    Raises:
        UsageError: a key list without a ``key`` column (names the file).
    """
    if source.kind == "prefix":
        for o in storage.list_objects(source.uri, endpoint_url):
            yield Listed(o.key, o.size, o.etag)
        return
    prefix = _key_prefix(input_uri)
    bucket = storage.parse_s3(input_uri).bucket if storage.is_s3(input_uri) else None
    data = storage.read_bytes(source.uri, endpoint_url)
    if source.kind == "inventory-csv":
        cols = {name: i for i, name in enumerate(source.columns)}
        for row in csv.reader(io.StringIO(_text(data, source.uri))):
            key = urllib.parse.unquote_plus(row[cols["Key"]])  # inventory CSV keys are URL-encoded
            if "Bucket" in cols and bucket and row[cols["Bucket"]] != bucket:
                continue
            if key.startswith(prefix) and not _is_delete_marker(row, cols):
                # no ETag pin: an inventory is up to a day old, and an object rewritten since is still
                # that image (its bytes are what the shard stores and hashes)
                yield Listed(key, _int(row[cols["Size"]]) if "Size" in cols else -1, "")
        return
    if source.kind == "inventory-parquet":
        t = pq.read_table(io.BytesIO(data))
        names = {n.lower(): n for n in t.column_names}
        d = t.to_pydict()
        keys, sizes = d[names["key"]], d.get(names.get("size", ""), [None] * t.num_rows)
        buckets = d.get(names.get("bucket", ""), [None] * t.num_rows)
        latest = d.get(names.get("is_latest", ""), [True] * t.num_rows)
        deleted = d.get(names.get("is_delete_marker", ""), [False] * t.num_rows)
        for key, size, b, is_latest, is_deleted in zip(keys, sizes, buckets, latest, deleted):
            if (bucket and b and b != bucket) or is_latest is False or is_deleted:
                continue
            if key.startswith(prefix):
                yield Listed(key, _int(size), "")
        return
    if source.kind == "keys-parquet":
        t = pq.read_table(io.BytesIO(data))
        if "key" not in t.column_names:
            raise UsageError(f"--input-list {source.uri}: no 'key' column (columns: {t.column_names})")
        d = t.to_pydict()
        rows = zip(d["key"], d.get("size", [None] * t.num_rows), d.get("etag", [""] * t.num_rows))
    else:
        reader = csv.DictReader(io.StringIO(_text(data, source.uri)))
        if "key" not in (reader.fieldnames or []):
            raise UsageError(f"--input-list {source.uri}: no 'key' column in the CSV header ({reader.fieldnames})")
        rows = ((r["key"], r.get("size"), r.get("etag") or "") for r in reader)
    for key, size, etag in rows:
        yield Listed(key, _int(size), (etag or "").strip('"'), outside=not key.startswith(prefix))


def _is_delete_marker(row: list[str], cols: dict[str, int]) -> bool:
    if "IsDeleteMarker" in cols and row[cols["IsDeleteMarker"]].lower() == "true":
        return True
    return "IsLatest" in cols and row[cols["IsLatest"]].lower() == "false"
