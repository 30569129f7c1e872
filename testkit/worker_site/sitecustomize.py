"""Test processes only: Python re-reads a zip archive's directory when it changed, not at every task.

On Python 3.10 and 3.11, ``zipimport.zipimporter.invalidate_caches()`` reads the archive's whole central
directory again, at once (CPython gh-103200; 3.12 made it lazy), and one importer exists per package imported
from the archive.  PySpark's Python worker calls ``importlib.invalidate_caches()`` before every task, with
Spark's ``pyspark.zip`` (1,220 entries) and ``spark-core``'s jar on its path: 16-17 importers, ~0.1 CPU-s per
task (measured in the session's workers): with the tests' tiny tasks, ~15 % of the Spark lines' CPU (6 % of the
suite's, 2,099 -> 1,973 CPU-s on clean-clone runs).

Here an importer re-reads the directory only when the archive's file changed (inode, size or modification
time) since this process last read it, and takes the cached directory otherwise: what an import finds is
unchanged.  ``tests/conftest.py`` puts this folder first on ``PYTHONPATH`` for the processes the tests start
(spark-submit, its drivers and Python workers, the session's workers); the node environment's tests and
everything outside the tests (the jobs, ``make bench``, a cluster) run without it.
"""

from __future__ import annotations

import os
import sys
import zipimport


def install() -> bool:
    """Replace ``zipimporter.invalidate_caches`` on the Pythons that re-read eagerly; True when it did."""
    if sys.version_info >= (3, 12) or getattr(zipimport.zipimporter.invalidate_caches, "shardinfer", False):
        return False
    reread = zipimport.zipimporter.invalidate_caches
    read_at: dict[str, tuple] = {}  # archive -> (inode, size, mtime_ns) of the file when last read here

    def invalidate_caches(self) -> None:
        try:
            st = os.stat(self.archive)
            stamp: tuple | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        files = zipimport._zip_directory_cache.get(self.archive)  # type: ignore[attr-defined]
        if stamp is not None and files is not None and read_at.get(self.archive) == stamp:
            self._files = files
            return
        reread(self)
        read_at[self.archive] = stamp

    invalidate_caches.shardinfer = True  # type: ignore[attr-defined]
    zipimport.zipimporter.invalidate_caches = invalidate_caches  # type: ignore[method-assign]
    return True


install()
