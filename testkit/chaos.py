"""Faults on a schedule drawn from a seed, while a job runs on the local YARN (testkit/yarn).

Four kinds, the ones a cluster sees:

* ``kill-python-worker`` — SIGKILL of one PySpark worker process (a forked child of an
  executor's ``pyspark.daemon``): its task fails with "Python worker exited unexpectedly";
* ``kill-executor`` — SIGKILL of a whole executor JVM (``…CoarseGrainedExecutorBackend``), its
  Python daemon and workers with it: every task on it is lost, YARN reports the container gone;
* ``burst-503`` — a few seconds (and at least a few faults) in which the S3 endpoint (a
  :class:`testkit.faultproxy.FaultProxy`) answers half the requests ``503 SlowDown``;
* ``burst-reset`` — the same with connection resets, before and after the request reached S3.

The clock starts when the first Python worker of the job appears (before that there is nothing to
kill), and each kill waits until it has a target.  :class:`Chaos` runs in a thread beside the job
and records what it did.  Tooling for tests only; the jobs never import it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import psutil

from testkit.faultproxy import FaultProxy

KINDS = ("kill-python-worker", "kill-executor", "burst-503", "burst-reset")


@dataclass(frozen=True)
class Event:
    """One scheduled fault: seconds after the first worker appears, and its kind."""

    at: float
    kind: str


def schedule(seed: int, span_s: float = 25.0) -> list[Event]:
    """The faults of ``seed``, in time order: two worker kills, one executor kill, two 503 bursts and one
    reset burst, each at a uniform time in ``1 .. span_s`` seconds."""
    rng = random.Random(seed)
    kinds = ["kill-python-worker"] * 2 + ["kill-executor"] + ["burst-503"] * 2 + ["burst-reset"]
    return sorted((Event(round(rng.uniform(1.0, span_s), 1), k) for k in kinds), key=lambda e: e.at)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def python_workers(root_pid: int) -> list[psutil.Process]:
    """PySpark worker processes under ``root_pid``: children of a ``pyspark.daemon`` (not the daemons)."""
    out = []
    for p in _descendants(root_pid):
        try:
            parent = p.parent()
        except psutil.Error:
            continue
        if parent is not None and "pyspark.daemon" in _cmdline(parent) and "pyspark.daemon" in _cmdline(p):
            out.append(p)
    return out


def executor_jvms(root_pid: int) -> list[psutil.Process]:
    """Executor JVMs under ``root_pid`` (YARN containers running ``CoarseGrainedExecutorBackend``)."""
    return [p for p in _descendants(root_pid) if "CoarseGrainedExecutorBackend" in _cmdline(p)]


def _created(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.Error:
        return 0.0


def _descendants(root_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []


@dataclass
class Chaos:
    """Run :func:`schedule`'s events against the processes under ``root_pid`` and the ``proxy``; a context manager.

    ``done`` lists what happened: ``(seconds after the first worker, kind, detail)``.
    """

    seed: int
    root_pid: int
    proxy: FaultProxy
    span_s: float = 25.0
    burst_s: float = 3.0
    burst_faults: int = 4
    wait_s: float = 120.0
    done: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.events = schedule(self.seed, self.span_s)
        self._rng = random.Random(self.seed + 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos")
        self.started: Optional[float] = None

    def __enter__(self) -> "Chaos":
        self._since = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _wait_for(self, find) -> list[psutil.Process]:
        """Targets of this job: processes started after the chaos began (an earlier job's containers may linger)."""
        deadline = time.monotonic() + self.wait_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            found = [p for p in find(self.root_pid) if _created(p) >= self._since]
            if found:
                return found
            time.sleep(0.1)
        return []

    def _run(self) -> None:
        if not self._wait_for(python_workers):
            return
        self.started = time.monotonic()
        for e in self.events:
            if self._stop.wait(max(0.0, self.started + e.at - time.monotonic())):
                return
            detail = self._fire(e.kind)
            self.done.append((round(time.monotonic() - self.started, 1), e.kind, detail))

    def _fire(self, kind: str) -> str:
        if kind.startswith("burst-"):
            fault = kind.split("-", 1)[1]
            self.proxy.burst(("503",) if fault == "503" else ("reset", "reset_after"), 0.5, self.burst_s,
                             at_least=self.burst_faults)
            return f"{self.burst_s:.0f} s, at least {self.burst_faults} faults"
        find = python_workers if kind == "kill-python-worker" else executor_jvms
        targets = self._wait_for(find)
        if not targets:
            return "no target"
        victim = self._rng.choice(sorted(targets, key=lambda p: p.pid))
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return f"pid {victim.pid} already gone"
        return f"pid {victim.pid}"

    def counts(self) -> dict[str, int]:
        """Faults injected, by kind (kills that found a target; bursts' faulted requests by fault)."""
        out = {k: sum(1 for _, kind, d in self.done if kind == k and d.startswith("pid ") and "gone" not in d)
               for k in ("kill-python-worker", "kill-executor")}
        for k, n in self.proxy.counts.items():
            if k.startswith("burst_"):
                out[f"s3 {k[len('burst_'):]} (in bursts)"] = n
        return out
