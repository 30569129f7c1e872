"""`make demo`: the whole path on this machine, against a local S3-protocol server.

Starts moto's S3 server on 127.0.0.1 (free port), creates a bucket, uploads N CIFAR-like
PNGs, builds the test ResNet-18 into the bucket, runs the two spark-submit steps exactly
as README.md documents them, reads the predictions back and prints a summary.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow.parquet as pq  # noqa: E402

from common import storage  # noqa: E402
from testkit import zoo_builder  # noqa: E402
from testkit.localdev import ROOT, LocalS3, run_spark_submit, spark_submit_command, upload_cifar_like  # noqa: E402

BUCKET = "shardinfer-demo"


def _step(name: str, timings: dict, started: float) -> None:
    timings[name] = time.time() - started
    print(f"demo: {name} done in {timings[name]:.1f}s", flush=True)


def _submit(name: str, script: str, args: list[str], env: dict, logdir: str) -> None:
    """Run one spark-submit; show its own summary lines, keep Spark's log in a file."""
    shown = " ".join(shlex.quote(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a)
                     for a in spark_submit_command(script, args))
    print(f"demo: $ {shown}", flush=True)
    proc = run_spark_submit(script, args, env)
    log = os.path.join(logdir, f"{name}.log")
    with open(log, "w") as f:
        f.write(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith(("prepare:", "infer:")) and ": progress " not in line:
            print(f"    {line}", flush=True)
    if proc.returncode != 0:
        print(f"demo: {name} exited {proc.returncode}; full log: {log}", flush=True)
        if name == "prepare":
            raise SystemExit(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code of the infer step."""
    p = argparse.ArgumentParser(description="Run prepare + infer end to end on a local S3 server.")
    p.add_argument("--images", type=int, default=1000, help="how many CIFAR-like PNGs to generate (default 1000)")
    p.add_argument("--logdir", default=os.path.join(ROOT, "demo-out"), help="where Spark logs go (default demo-out/)")
    args = p.parse_args(argv)
    os.makedirs(args.logdir, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()

    with LocalS3() as s3:
        env = s3.env
        os.environ.update(env)
        print(f"demo: local S3 server at {s3.endpoint_url}", flush=True)
        s3.create_bucket(BUCKET)
        t = time.time()
        upload_cifar_like(f"s3://{BUCKET}/cifar10/test/", args.images, endpoint_url=s3.endpoint_url)
        _step(f"upload of {args.images} PNGs", timings, t)
        t = time.time()
        model = zoo_builder.write_model(f"s3://{BUCKET}/models/resnet-18/", endpoint_url=s3.endpoint_url)
        _step("test model build", timings, t)

        t = time.time()
        _submit("prepare", "prepare/main.py",
                ["--input", f"s3://{BUCKET}/cifar10/test/", "--output", f"s3://{BUCKET}/shards/cifar10-test/"],
                env, args.logdir)
        _step("prepare (spark-submit)", timings, t)

        t = time.time()
        _submit("infer", "infer/main.py",
                ["--manifest", f"s3://{BUCKET}/shards/cifar10-test/manifest.parquet",
                 "--sym-url", model["sym"], "--param-url", model["params"], "--label-url", model["labels"],
                 "--output", f"s3://{BUCKET}/predictions/"], env, args.logdir)
        _step("infer (spark-submit)", timings, t)
        infer_s = timings["infer (spark-submit)"]

        summaries = [o for o in storage.list_objects(f"s3://{BUCKET}/predictions/_runs/") if o.key.endswith("summary.json")]
        summary = json.loads(storage.read_bytes(f"s3://{BUCKET}/{summaries[0].key}"))
        rows = []
        # The server stops with the demo: keep the run's Parquet files (Hive layout) to query afterwards.
        predictions_dir = os.path.join(args.logdir, "predictions")
        shutil.rmtree(predictions_dir, ignore_errors=True)
        run_dir = os.path.join(predictions_dir, f"run_id={summary['run_id']}")
        os.makedirs(run_dir)
        for o in storage.list_objects(f"s3://{BUCKET}/predictions/run_id={summary['run_id']}/"):
            data = storage.read_bytes(f"s3://{BUCKET}/{o.key}")
            with open(os.path.join(run_dir, os.path.basename(o.key)), "wb") as f:
                f.write(data)
            rows += pq.read_table(io.BytesIO(data), columns=["key", "status", "top1_label"]).to_pylist()
        manifest_shards = len(list(storage.list_objects(f"s3://{BUCKET}/shards/cifar10-test/shards/")))
        # The server stops with the demo: keep a local copy of the run report.
        report_prefix = f"s3://{BUCKET}/predictions/_runs/{summary['run_id']}/report/"
        report_dir = os.path.join(args.logdir, "report")
        os.makedirs(report_dir, exist_ok=True)
        for o in storage.list_objects(report_prefix):
            with open(os.path.join(report_dir, os.path.basename(o.key)), "wb") as f:
                f.write(storage.read_bytes(f"s3://{BUCKET}/{o.key}"))

    top = Counter(r["top1_label"] for r in rows if r["status"] == "ok").most_common(5)
    print("\n=== shardinfer demo summary ===")
    print(f"images uploaded      {args.images}")
    print(f"shards               {manifest_shards}")
    print(f"rows written         {len(rows)} ({sum(r['status'] != 'ok' for r in rows)} image errors)")
    print(f"failed shards        {summary['shards_failed'] or 'none'}")
    print(f"infer images/s       {len(rows) / infer_s:.1f} (whole spark-submit, {infer_s:.1f}s); "
          f"{summary['images_per_s']} inside the job")
    print(f"output               {summary['output']}  (the server is stopped now; rerun to inspect)")
    print(f"run record           s3://{BUCKET}/predictions/_runs/{summary['run_id']}/")
    print("top-1 labels (5 most frequent; the test model's labels are made up):")
    for label, n in top:
        print(f"    {n:6d}  {label}")
    print("time:")
    for name, secs in timings.items():
        print(f"    {secs:7.1f}s  {name}")
    print(f"    {time.time() - t_all:7.1f}s  total")
    print(f"Spark logs: {os.path.relpath(args.logdir, ROOT)}/prepare.log, infer.log")
    print(f"run report: {os.path.relpath(report_dir, ROOT)}/index.html  (copied from {report_prefix})")
    local = os.path.relpath(predictions_dir, ROOT)
    print(f"predictions: {local}/run_id=*/part-*.parquet ({len(rows)} rows, Hive layout, kept after the server "
          "stopped); query them with:")
    print(f"    {query_line(local)}")
    return 0 if not summary["shards_failed"] else 1


def query_line(folder: str) -> str:
    """The one line that reads the kept predictions (DuckDB, installed by make setup)."""
    sql = (f"SELECT run_id, top1_label, count(*) AS images FROM read_parquet('{folder}/*/*.parquet', "
           "hive_partitioning=true) GROUP BY ALL ORDER BY images DESC LIMIT 5")
    return f'.venv/bin/python -c "import duckdb; duckdb.sql(\\"{sql}\\").show()"'


if __name__ == "__main__":
    sys.exit(main())
