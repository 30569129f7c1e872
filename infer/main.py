"""infer: run the model over every shard of a manifest, one Spark task and one Parquet file per shard.

    spark-submit --properties-file spark-defaults.conf infer/main.py \\
        --manifest s3://BUCKET/shards/cifar10-test/manifest.parquet \\
        --sym-url URL --param-url URL --label-url URL \\
        --output s3://BUCKET/predictions/ [--run-id ID] [--top-k 5] \\
        [--shards 3,17,40-45 | --only-missing | --only-failed] [--device cpu|gpu]

The driver reads the manifest, checks the model once (so a bad URL or mismatched params
fail before Spark starts), and collects one small status record per shard; predictions go
from each task straight to S3.  Exit code 0 when every selected shard is ok, 1 when any
failed (their ids are printed), 2 for bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import time
import uuid
from functools import partial
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import athena, storage  # noqa: E402
from common.cli import (UsageError, add_common_arguments, endpoint_from, first_line, run_cli,  # noqa: E402
                        spark_context, task_attempts)
from common.manifest import Manifest, ShardEntry, manifest_from_bytes  # noqa: E402
from common.model import ModelSpec, check_model, fetch_model  # noqa: E402
from common.output import check_run_id, default_run_id, read_statuses, run_dir, run_record_key  # noqa: E402
from common.progress import Progress  # noqa: E402
from infer import report  # noqa: E402
from infer.task import InferSettings, run_shard  # noqa: E402

PROG = "infer"
# The model is bound once with this static batch: 64x3x224x224 float32 is ~38 MB.
MODEL_BATCH = 64


def build_parser() -> argparse.ArgumentParser:
    """The command line of DESIGN.md."""
    p = argparse.ArgumentParser(prog=PROG, description="Run an MXNet image model over the shards of a manifest and "
                                "write one Parquet file of predictions per shard.")
    p.add_argument("--manifest", required=True, help="URI of manifest.parquet written by prepare")
    p.add_argument("--sym-url", required=True, help="model symbol, e.g. .../resnet-18-symbol.json (s3://, http(s)://, path)")
    p.add_argument("--param-url", required=True, help="model params, e.g. .../resnet-18-0000.params")
    p.add_argument("--label-url", required=True, help="class names, synset.txt format (one 'nXXXXXXXX name' per line)")
    p.add_argument("--output", required=True, help="table location, e.g. s3://BUCKET/predictions/ "
                   "(files go to run_id=<id>/, run records to _runs/<id>/)")
    p.add_argument("--run-id", default=None, help="partition value for this run (default: derived from the "
                   "manifest id and the model, so a rerun fills in the same run)")
    p.add_argument("--top-k", type=int, default=5, help="classes kept per image, best first (default 5)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--shards", default=None, help="only these manifest shard ids, e.g. 3,17,40-45")
    sel.add_argument("--only-missing", action="store_true", help="only shards whose Parquet file is absent from the run")
    sel.add_argument("--only-failed", action="store_true", help="only shards whose last recorded status is failed")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite part files that exist from different input "
                   "(another model or --top-k under the same --run-id); without it such a shard is a reported conflict")
    add_common_arguments(p)
    return p


def parse_shard_ids(text: str, manifest: Manifest) -> list[int]:
    """``"3,17,40-45"`` -> sorted ids; every id must exist in the manifest.

    Raises:
        UsageError: bad syntax or an id outside the manifest (named).
    """
    ids: set[int] = set()
    last = len(manifest.entries) - 1
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"--shards: {part!r} is not an id or a range like 40-45")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UsageError(f"--shards: range {part!r} runs backwards")
        if hi > last:
            raise UsageError(f"--shards: {part!r} is outside the manifest {manifest.uri} (shard ids 0-{last})")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def present_shards(output: str, run_id: str, endpoint_url: Optional[str]) -> set[int]:
    """Shard ids whose part file exists in the run's partition."""
    prefix = storage.join(output, f"run_id={run_id}") + "/"
    found = set()
    try:
        for obj in storage.list_objects(prefix, endpoint_url):
            m = re.search(r"part-(\d+)\.parquet$", obj.key)
            if m and obj.size > 0:
                found.add(int(m.group(1)))
    except storage.NotFound:
        pass
    return found


def failed_shards(output: str, run_id: str, endpoint_url: Optional[str]) -> list[int]:
    """Shard ids whose recorded status is failed."""
    return [int(r["shard_id"]) for r in read_statuses(output, run_id, endpoint_url) if r.get("status") != "ok"]


def select_entries(args: argparse.Namespace, manifest: Manifest, run_id: str, endpoint_url: Optional[str]) -> list[ShardEntry]:
    """The manifest rows this invocation runs."""
    by_id = {e.shard_id: e for e in manifest.entries}
    if args.shards:
        return [by_id[i] for i in parse_shard_ids(args.shards, manifest)]
    if args.only_missing:
        present = present_shards(args.output, run_id, endpoint_url)
        return [e for e in manifest.entries if e.shard_id not in present]
    if args.only_failed:
        return [by_id[i] for i in failed_shards(args.output, run_id, endpoint_url) if i in by_id]
    return list(manifest.entries)


def check_run_record(args: argparse.Namespace, run_id: str, manifest: Manifest, model_id: str,
                     endpoint_url: Optional[str]) -> None:
    """A run belongs to one manifest and one model: refuse a mismatch, record a new run.

    Raises:
        UsageError: ``run_id`` already holds another manifest's or (without --force) another model's output.
    """
    uri = run_record_key(args.output, run_id)
    try:
        record = json.loads(storage.read_bytes(uri, endpoint_url))
    except storage.NotFound:
        record = None
    if record is not None:
        if record.get("manifest_id") != manifest.manifest_id:
            raise UsageError(f"--run-id {run_id} belongs to manifest {record.get('manifest_id')} "
                             f"({record.get('manifest')}), not {manifest.manifest_id} ({args.manifest}); "
                             "use another --run-id")
        if record.get("model") != model_id and not args.force:
            raise UsageError(f"--run-id {run_id} was made with model {record.get('model')}, not {model_id}; "
                             "use another --run-id (or --force to replace its files)")
        if record.get("top_k") != args.top_k and not args.force:
            raise UsageError(f"--run-id {run_id} was made with --top-k {record.get('top_k')}, not {args.top_k}")
        if record.get("model") == model_id:
            return
    elif args.only_failed:
        raise UsageError(f"--only-failed: run {run_id} has no record at {uri}; nothing to rerun")
    record = {"run_id": run_id, "manifest": args.manifest, "manifest_id": manifest.manifest_id, "model": model_id,
              "sym_url": args.sym_url, "param_url": args.param_url, "label_url": args.label_url, "top_k": args.top_k,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(uri, json.dumps(record, indent=1).encode(), endpoint_url, "application/json")


def rerun_command(args: argparse.Namespace, run_id: str) -> str:
    """The exact command that reruns this run's failed shards."""
    cmd = ["spark-submit", "--properties-file", "spark-defaults.conf", "infer/main.py", "--manifest", args.manifest,
           "--sym-url", args.sym_url, "--param-url", args.param_url, "--label-url", args.label_url,
           "--output", args.output, "--run-id", run_id]
    if args.top_k != 5:
        cmd += ["--top-k", str(args.top_k)]
    if args.device != "cpu":
        cmd += ["--device", args.device]
    if args.s3_endpoint_url:
        cmd += ["--s3-endpoint-url", args.s3_endpoint_url]
    return shlex.join(cmd + ["--only-failed"])


def summarise(statuses: list[dict], args: argparse.Namespace, run_id: str, manifest: Manifest, model_id: str,
              elapsed: float) -> dict:
    """The run summary printed at the end and stored as ``_runs/<run_id>/summary.json``."""
    failed = sorted((s for s in statuses if s["status"] != "ok"), key=lambda s: s["shard_id"])
    written = [s for s in statuses if s.get("outcome") == "written"]
    rows = sum(s.get("rows", 0) for s in written)
    return {
        "run_id": run_id,
        "manifest": args.manifest,
        "manifest_id": manifest.manifest_id,
        "model": model_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards_selected": len(statuses),
        "shards_written": len(written),
        "shards_already_done": sum(1 for s in statuses if s["status"] == "ok" and s.get("outcome") != "written"),
        "shards_failed": [s["shard_id"] for s in failed],
        "errors": {str(s["shard_id"]): s.get("error", "") for s in failed},
        "images_written": rows,
        "image_errors": sum(s.get("rows_error", 0) for s in written),
        "model_loads": sum(1 for s in statuses if s.get("model_loaded")),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(rows / elapsed, 3) if elapsed > 0 else None,
        "output": storage.join(args.output, f"run_id={run_id}") + "/",
        "rerun_failed": rerun_command(args, run_id) if failed else None,
    }


def write_athena_sql(args: argparse.Namespace, run_id: str, manifest: Manifest, endpoint_url: Optional[str]) -> None:
    """Once every shard of the manifest has its part file, leave the Athena statements in ``_runs/<run_id>/``."""
    present = present_shards(args.output, run_id, endpoint_url)
    missing = [e.shard_id for e in manifest.entries if e.shard_id not in present]
    if missing:
        print(f"{PROG}: run {run_id} is not complete yet ({len(missing)} of {len(manifest.entries)} shards missing); "
              "athena.sql is written when every shard is done", flush=True)
        return
    uri = storage.join(run_dir(args.output, run_id), "athena.sql")
    storage.write_bytes(uri, athena.run_statements(args.output, run_id).encode(), endpoint_url, "text/plain")
    print(f"{PROG}: run complete: Athena statements in {uri}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run infer for parsed arguments; returns the exit code."""
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.run_id:
        check_run_id(args.run_id)
    endpoint = endpoint_from(args)
    started = time.time()
    # seconds, not a minute of retries, for a typo in a bucket or endpoint
    storage.check_buckets((args.manifest, args.output, args.sym_url, args.param_url, args.label_url), endpoint)
    manifest = manifest_from_bytes(storage.read_bytes(args.manifest, endpoint), args.manifest)
    spec = ModelSpec(args.sym_url, args.param_url, args.label_url, MODEL_BATCH, endpoint, device=args.device)
    files = fetch_model(spec)
    check_model(files, spec)  # a bad model fails here, once, before any task starts
    spec = dataclasses.replace(spec, params_sha256=files.params_sha256)  # executors must load this very model
    model_id = files.model_id(spec)
    run_id = args.run_id or default_run_id(manifest.manifest_id, spec.name, files.params_sha256)
    check_run_record(args, run_id, manifest, model_id, endpoint)
    entries = select_entries(args, manifest, run_id, endpoint)
    print(f"{PROG}: manifest {manifest.manifest_id}: {len(manifest.entries)} shards, {manifest.num_images} images; "
          f"run_id={run_id}; running {len(entries)} shards", flush=True)
    if not entries:
        print(f"{PROG}: nothing to do", flush=True)
        return 0

    sc = spark_context(f"shardinfer-infer-{run_id}")
    settings = InferSettings(spec, args.output, run_id, manifest.manifest_id, args.top_k, task_attempts(sc), endpoint,
                             args.force, invocation=uuid.uuid4().hex)
    with Progress(sc, PROG, len(entries), sum(e.num_records for e in entries)) as progress:
        statuses = (sc.parallelize(entries, len(entries))
                    .map(partial(run_shard, settings=settings, counter=progress.counter)).collect())

    summary = summarise(statuses, args, run_id, manifest, model_id, time.time() - started)
    storage.write_bytes(storage.join(run_dir(args.output, run_id), "summary.json"),
                        json.dumps(summary, indent=1).encode(), endpoint, "application/json")
    failed = summary["shards_failed"]
    print(f"{PROG}: {len(statuses) - len(failed)}/{len(statuses)} shards ok "
          f"({summary['shards_written']} written, {summary['shards_already_done']} already done), "
          f"{summary['images_written']} images written ({summary['image_errors']} image errors) "
          f"in {summary['elapsed_s']:.1f}s = {summary['images_per_s']} images/s", flush=True)
    print(f"{PROG}: output {summary['output']}", flush=True)
    try:
        print(f"{PROG}: report {report.write_report(args.output, run_id, endpoint)}", flush=True)
    except Exception as e:  # noqa: BLE001 - a report problem never fails the run
        print(f"{PROG}: warning: no run report: {first_line(e)}", file=sys.stderr, flush=True)
    if not failed:
        write_athena_sql(args, run_id, manifest, endpoint)
    if failed:
        for sid in failed:
            print(f"{PROG}: shard {sid} failed: {summary['errors'][str(sid)]}", file=sys.stderr)
        print(f"{PROG}: FAILED shards: {','.join(map(str, failed))} (records under "
              f"{run_dir(args.output, run_id)}/shards/); rerun them with:\n  {summary['rerun_failed']}",
              file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``spark-submit infer/main.py`` and for tests."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
