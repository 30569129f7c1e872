"""The scale figures of docs/scale.md, measured on this machine (``make scale``).

    .venv/bin/python bench/scale.py [--sizes 10000000,100000000] [--out docs/scale-figures.json]

For each size: a synthetic format-2 manifest (``python -m manifests.synthetic``), then the
documented ``spark-submit infer/main.py ... --dry-run`` over it, sampled: wall time and the
peak RSS of the whole spark-submit process tree (JVM + Python driver).  Also the per-structure
constants the worked plan in docs/scale.md is built from: manifest bytes per image, index
bytes per part, the broadcast plan's size, a task's manifest read (requests and bytes), and
status bytes per shard (in flight to the driver, and in the status file).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.measure import run_sampled  # noqa: E402
from common import manifest as manifest_mod  # noqa: E402
from common import status, storage  # noqa: E402
from common.manifest import read_manifest, read_shards  # noqa: E402
from infer.plan import make_plan  # noqa: E402
from manifests import synthetic  # noqa: E402
from testkit import zoo_builder  # noqa: E402
from testkit.localdev import spark_env, spark_submit_command  # noqa: E402


def _cpu() -> str:
    from infer.cpu import cpu_info

    info = cpu_info()
    return f"{info['model']}, {os.cpu_count()} cores, flags {' '.join(info['flags']) or 'none of avx512/vnni/bf16'}"


def task_read(manifest, shard_ids) -> dict:
    """Requests and bytes a task spends reading its shard rows (first task on an executor: footer not cached)."""
    manifest_mod._FOOTERS.clear()
    sizes = []
    real = storage.read_range

    def counting(uri, a, b, e=None):
        sizes.append(b - a)
        return real(uri, a, b, e)

    storage.read_range = counting
    try:
        t0 = time.perf_counter()
        read_shards(manifest, shard_ids)
        cold = time.perf_counter() - t0
        cold_reads = list(sizes)
        sizes.clear()
        read_shards(manifest, [i + len(shard_ids) for i in shard_ids])
    finally:
        storage.read_range = real
    return {"cold_requests": len(cold_reads), "cold_bytes": sum(cold_reads), "warm_requests": len(sizes),
            "warm_bytes": sum(sizes), "cold_s": round(cold, 4)}


def status_sizes() -> dict:
    """Status bytes per shard: packed in flight (Arrow IPC, zstd) and in the Parquet status file."""
    now = time.time()
    rows = [status.ShardStatus(**{"uri": f"s3://b/shards/shard-{i:05d}.rec", "shard_id": i, "status": "ok", "outcome": "written", "rows": 64, "rows_error": 0, "bytes": 9000 + i,
             "t_start": now + i, "t_fetched": now + i + .05, "t_decoded": now + i + .2, "t_forward_start": now + i + .21,
             "t_forwarded": now + i + .7, "t_end": now + i + .75, "model": "resnet-18@sha256:0123456789ab",
             "model_loaded": i == 0, "model_load_s": 0.0, "host": "ip-10-0-1-23", "pid": 4242, "attempt": 0,
             "task": i // 4, "t_task_start": now, "t_task_end": now + 4, "invocation": "f" * 32}) for i in range(4096)]
    packed = [status.pack(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    with tempfile.TemporaryDirectory() as tmp:
        writer = status.Writer(tmp + "/", "r", now, "f" * 32)
        writer.add(packed)
        file_bytes = os.path.getsize(writer.close())
    table = pa.concat_tables([status.unpack(b) for b in packed])
    return {"packed_bytes_per_shard_4_per_task": round(sum(len(b) for b in packed) / len(rows), 1),
            "arrow_bytes_per_shard": round(table.nbytes / len(rows), 1),
            "file_bytes_per_shard": round(file_bytes / len(rows), 1)}


def spark_per_task(n: int) -> dict:
    """Spark's own cost per task: ``n`` trivial Python tasks in one stage on local[2] (time per task, and the
    driver JVM's RSS growth while it holds the stage)."""
    import psutil
    from pyspark import SparkConf, SparkContext

    sc = SparkContext.getOrCreate(SparkConf().setMaster("local[2]").setAppName("scale-per-task")
                                  .set("spark.ui.enabled", "false").set("spark.ui.showConsoleProgress", "false"))
    sc.setLogLevel("ERROR")
    jvm = next(p for p in psutil.Process().children(recursive=True) if "java" in p.name())
    sc.parallelize(range(100), 100).map(lambda x: x).collect()  # workers started
    rss0, t0 = jvm.memory_info().rss, time.perf_counter()
    sc.parallelize(range(n), n).map(lambda x: x).collect()
    wall = time.perf_counter() - t0
    rss1 = jvm.memory_info().rss
    sc.stop()
    return {"tasks": n, "wall_s": round(wall, 2), "slot_ms_per_task": round(2000 * wall / n, 1),
            "driver_jvm_kb_per_task": round((rss1 - rss0) / 1024 / n, 2)}


def dry_run(index: str, model: dict, out: str) -> dict:
    args = ["--manifest", index, "--sym-url", model["sym"], "--param-url", model["params"], "--label-url",
            model["labels"], "--output", out, "--dry-run"]
    s = run_sampled(spark_submit_command("infer/main.py", args, ["spark.master=local[2]"]), spark_env())
    if s.returncode != 0:
        raise SystemExit(f"dry run failed ({s.returncode}):\n{s.stdout[-2000:]}\n{s.stderr[-3000:]}")
    line = next(ln for ln in s.stdout.splitlines() if "dry run" in ln)
    return {"wall_s": round(s.wall_s, 2), "peak_rss_tree_mb": s.peak_rss_mb.get("tree_total"),
            "peak_rss_mb": s.peak_rss_mb, "plan": re.sub(r": [0-9].*", "", line)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000000,100000000", help="images per synthetic manifest")
    p.add_argument("--out", default="docs/scale-figures.json", help="where the figures go")
    p.add_argument("--keep", action="store_true", help="keep the synthetic manifests (under /tmp)")
    p.add_argument("--spark-tasks", type=int, default=0, help="also measure Spark's per-task cost with this many "
                   "trivial tasks on local[2] (10000: ~8 minutes here)")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="shardinfer-scale-")
    results = {"cpu": _cpu(), "date": time.strftime("%Y-%m-%d"), "sizes": {}}
    try:
        model = {}
        for name, data in zoo_builder.build_model().items():
            path = os.path.join(root, "model", name)
            storage.write_bytes(path, data)
            model[{zoo_builder.SYMBOL_FILE: "sym", zoo_builder.PARAMS_FILE: "params",
                   zoo_builder.SYNSET_FILE: "labels"}[name]] = path
        results["status"] = status_sizes()
        print(f"status bytes per shard: {results['status']}", flush=True)
        for n in (int(x) for x in args.sizes.split(",")):
            folder = os.path.join(root, f"m{n}") + "/"
            t0 = time.time()
            index, manifest_id, parts, size = synthetic.write(n, folder)
            write_s = time.time() - t0
            m = read_manifest(index)
            plan = make_plan(m, np.array([[0, m.num_shards]]), None, 2)
            r = {"images": n, "shards": m.num_shards, "parts": parts, "synthetic_write_s": round(write_s, 2),
                 "manifest_bytes": size + os.path.getsize(index), "manifest_bytes_per_image": round(size / n, 3),
                 "index_bytes": os.path.getsize(index),
                 "index_bytes_per_part": round(os.path.getsize(index) / parts, 1),
                 "plan_pickled_bytes": len(pickle.dumps(plan)),
                 "task_read_4_shards": task_read(m, [m.num_shards // 2 + i for i in range(4)]),
                 "row_group_bytes": round(np.mean([pq.ParquetFile(m.parts[0].uri).metadata.row_group(g).total_byte_size
                                                   for g in range(4)]), 0)}
            r["dry_run"] = dry_run(index, model, os.path.join(root, "pred") + "/")
            results["sizes"][str(n)] = r
            print(f"{n:>12,} images: {m.num_shards:,} shards, {parts} parts, manifest {r['manifest_bytes'] / 2**20:.1f} "
                  f"MiB (written in {write_s:.1f}s); dry run {r['dry_run']['wall_s']}s, peak RSS of the spark-submit "
                  f"tree {r['dry_run']['peak_rss_tree_mb']:.0f} MB; {r['dry_run']['plan']}", flush=True)
            print(f"{'':>12}  a task's manifest read (4 shards): {r['task_read_4_shards']}", flush=True)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        if args.spark_tasks:
            results["spark_per_task"] = spark_per_task(args.spark_tasks)
            print(f"Spark's own cost per task: {results['spark_per_task']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"figures in {args.out} (CPU: {results['cpu']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
