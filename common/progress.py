"""Live progress on the driver: shards done / total, images, images/s, failed so far, ETA.

Tasks report through one Spark accumulator (shards, images, failed), merged on the driver
as each task finishes: nothing else is collected and nothing is polled from the tasks.
On a terminal it draws a bar (on ``/dev/tty``, because spark-submit pipes the Python
driver's output); elsewhere (CI, YARN cluster mode, a log file) it prints a plain line
every ``interval`` seconds, and always a final line when the job ends.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional, TextIO

# Lines in non-terminal mode: often enough to follow a long job, rare enough for a log.
DEFAULT_INTERVAL_S = 30.0


class _Counts:
    """(shards, images, failed) summed element-wise: a ``pyspark.AccumulatorParam`` by its two methods
    (Spark calls only these), so this module imports no Spark."""

    def zero(self, value):
        return (0, 0, 0)

    def addInPlace(self, a, b):
        return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Use as a context manager around the Spark action; tasks call ``counter.add((1, images, failed))``."""

    def __init__(self, sc, prog: str, total_shards: int, total_images: int, what: str = "images",
                 interval: Optional[float] = None, stream: Optional[TextIO] = None):
        """Create the accumulator; nothing is printed until :meth:`start`."""
        self.counter = sc.accumulator((0, 0, 0), _Counts())
        self.prog, self.total_shards, self.total_images, self.what = prog, total_shards, total_images, what
        self.interval = interval if interval is not None else float(os.environ.get("SHARDINFER_PROGRESS_INTERVAL",
                                                                                     DEFAULT_INTERVAL_S))
        self._tty: Optional[TextIO] = None
        self._stream = stream or sys.stdout
        if stream is None and os.environ.get("SHARDINFER_PROGRESS", "auto") != "lines":
            try:
                self._tty = open("/dev/tty", "w")  # the user's terminal, even when stdout is a pipe
            except OSError:
                self._tty = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = time.time()

    def line(self, final: bool = False) -> str:
        """The current state as one line."""
        shards, images, failed = self.counter.value
        elapsed = time.time() - self._t0
        rate = images / elapsed if elapsed > 0 else 0.0
        left = self.total_shards - shards
        eta = "done" if final else (f"ETA {_duration(elapsed / shards * left)}" if shards else "ETA ?")
        return (f"{shards}/{self.total_shards} shards, {images}/{self.total_images} {self.what}, {rate:.1f} {self.what}/s, "
                f"{failed} failed, {_duration(elapsed)} elapsed, {eta}")

    def _bar(self) -> str:
        shards = self.counter.value[0]
        width = 30
        filled = int(width * shards / max(1, self.total_shards))
        return f"\r{self.prog}: [{'#' * filled}{'.' * (width - filled)}] {self.line()}\x1b[K"

    def _run(self) -> None:
        last = time.time()
        while not self._stop.wait(0.5):
            if self._tty:
                self._tty.write(self._bar())
                self._tty.flush()
            elif time.time() - last >= self.interval:
                last = time.time()
                print(f"{self.prog}: progress {self.line()}", file=self._stream, flush=True)

    def start(self) -> "Progress":
        """Start reporting in a daemon thread."""
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._run, name="shardinfer-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reporting and print the final line."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._tty:
            self._tty.write(self._bar() + "\n")
            self._tty.close()
        print(f"{self.prog}: progress {self.line(final=True)}", file=self._stream, flush=True)

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
