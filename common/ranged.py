"""Parquet read by byte ranges over any storage URI: a task reads its manifest rows, and infer its status files,
with a footer GET and one GET spanning the column chunks it needs (ranged GETs: :func:`common.storage.read_range`)."""

from __future__ import annotations

import io
from typing import Optional, Sequence

import pyarrow.parquet as pq

from common import storage


class RangedFile(io.RawIOBase):
    """A read-only file over an object of known size, served from byte ranges fetched on demand
    (pyarrow's Parquet reader reads footer and column chunks through it); :meth:`fetch` reads a
    span ahead in one request, and ``requests`` counts them."""

    def __init__(self, uri: str, size: int, endpoint_url: storage.Endpoint) -> None:
        super().__init__()
        self.uri, self.size, self.endpoint_url = uri, size, endpoint_url
        self.pos = 0
        self.segments: list[tuple[int, bytes]] = []
        self.requests = 0

    def fetch(self, start: int, end: int) -> None:
        """Read bytes ``start``..``end`` ahead in one request, unless already held."""
        start, end = max(0, start), min(self.size, end)
        if end > start and not self._covered(start, end):
            self.segments.append((start, storage.read_range(self.uri, start, end, self.endpoint_url)))
            self.requests += 1

    def _covered(self, start: int, end: int) -> Optional[bytes]:
        for s, data in self.segments:
            if s <= start and end <= s + len(data):
                return data[start - s : end - s]
        return None

    def readable(self) -> bool:
        """io's protocol: readable."""
        return True

    def seekable(self) -> bool:
        """io's protocol: seekable."""
        return True

    def tell(self) -> int:
        """io's protocol: the position."""
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """io's protocol: move the position (nothing is read until :meth:`readinto`)."""
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def readinto(self, b) -> int:
        """io's protocol: fill ``b`` from held bytes, fetching what is missing."""
        n = max(0, min(len(b), self.size - self.pos))
        data = self._covered(self.pos, self.pos + n)
        if data is None:
            self.fetch(self.pos, self.pos + n)
            data = self._covered(self.pos, self.pos + n)
        b[:n] = data
        self.pos += n
        return n


class RangedParquet:
    """A Parquet file read by byte ranges: its footer with one GET of the last ``tail`` bytes (none when
    ``metadata`` is already known), then one GET spanning every column chunk a read needs."""

    def __init__(self, uri: str, size: int, endpoint_url: storage.Endpoint, tail: int = 1024 * 1024,
                 metadata=None) -> None:
        self.file = RangedFile(uri, size, endpoint_url)
        if metadata is None:
            self.file.fetch(size - tail, size)
        self.parquet = pq.ParquetFile(self.file, metadata=metadata)
        self.metadata = self.parquet.metadata

    def read(self, row_groups: Optional[Sequence[int]] = None, columns: Optional[Sequence[str]] = None):
        """The ``row_groups`` (default: all) as an Arrow table, ``columns`` only (default: all)."""
        md = self.metadata
        groups = list(range(md.num_row_groups) if row_groups is None else row_groups)
        spans = []
        for g in groups:
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if columns is None or col.path_in_schema.split(".")[0] in columns:
                    first = min(x for x in (col.dictionary_page_offset, col.data_page_offset) if x is not None and x > 0)
                    spans.append((first, first + col.total_compressed_size))
        if spans:
            self.file.fetch(min(s for s, _ in spans), max(e for _, e in spans))
        return self.parquet.read_row_groups(groups, columns=columns)
