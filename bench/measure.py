"""Run one command and sample what it costs: wall time, peak RSS per kind of process, CPU busy fraction."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil


def _cpu_times() -> tuple[float, float]:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


def _kind(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "java" in p.name() or "java" in cmd.split(" ")[0]:
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
        return "python_worker"
    if ".py" in cmd:
        return "python_driver"
    return "other"


@dataclass
class Sample:
    """What :func:`run_sampled` measured."""

    returncode: int
    wall_s: float
    stdout: str
    stderr: str
    cpu_busy: float
    peak_rss_mb: dict = field(default_factory=dict)
    # CPU seconds the calling process (bench/run.py: the local S3 server's threads) used meanwhile
    caller_cpu_s: float = 0.0


def run_sampled(cmd: list[str], env: dict, interval: float = 0.25, timeout: float = 7200) -> Sample:
    """Run ``cmd`` to completion while sampling its process tree every ``interval`` seconds."""
    peaks: dict[str, float] = {}
    done = threading.Event()
    busy0, total0 = _cpu_times()
    own0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            workers_total = tree_total = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                kind = _kind(p)
                peaks[kind] = max(peaks.get(kind, 0.0), rss)
                tree_total += rss
                if kind == "python_worker":
                    workers_total += rss
            peaks["python_workers_total"] = max(peaks.get("python_workers_total", 0.0), workers_total)
            peaks["tree_total"] = max(peaks.get("tree_total", 0.0), tree_total)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # the whole tree goes, then the caller hears of it
        done.set()
        for p in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.communicate()
        raise
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    busy1, total1 = _cpu_times()
    own1 = os.times()
    return Sample(proc.returncode, wall, out, err, round((busy1 - busy0) / max(total1 - total0, 1e-9), 3),
                  {k: round(v, 1) for k, v in peaks.items()},
                  round(own1.user + own1.system - own0.user - own0.system, 2))


def steady(records: list[dict]) -> dict:
    """From one infer run's status records: steady-state images/s — each Python worker's first shard (which
    loads the model and fills the task's pipeline) left out, the other images over the time from those first
    shards' ends to the last shard's end — and the decode share of stage time (fetch + decode over fetch +
    decode + forward, summed over shards)."""
    by_process: dict = {}
    for r in records:
        by_process.setdefault((r["host"], r["pid"]), []).append(r)
    images, start, end = 0, [], []
    for shards in by_process.values():
        shards.sort(key=lambda r: r["t_end"])
        if len(shards) > 1:
            images += sum(r["rows"] for r in shards[1:])
            start.append(shards[0]["t_end"])
            end.append(shards[-1]["t_end"])
    decode = sum(r["t_decoded"] - r["t_start"] for r in records)
    forward = sum(r["t_forwarded"] - r["t_forward_start"] for r in records)
    window = max(end) - min(start) if start else float("nan")
    return {"steady_images_per_s": round(images / window, 2) if start else None, "steady_images": images,
            "decode_share": round(decode / (decode + forward), 3), "decode_ms_per_image": round(
                1000 * decode / sum(r["rows"] for r in records), 1), "processes": len(by_process)}
