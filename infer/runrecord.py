"""infer's run records under ``<output>/_runs/<run_id>/``: run.json (what the run is), summary.json
(what one invocation did, with the command that reruns its failures) and athena.sql.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Optional

import pyarrow.compute as pc

from common import athena, status, storage
from common.cli import UsageError
from common.images import DEFAULT_PREPROCESSING
from common.manifest import Manifest
from common.output import partition_dir, run_dir, run_record_key
from infer.settings import InferConfig, build_parser

PROG = "infer"


def read_run_record(output: str, run_id: str, endpoint_url: storage.Endpoint) -> Optional[dict]:
    """``run.json`` of the run, or None for a new run."""
    try:
        return json.loads(storage.read_bytes(run_record_key(output, run_id), endpoint_url))
    except storage.NotFound:
        return None


def check_run_record(record: Optional[dict], args: InferConfig, run_id: str, manifest: Manifest,
                     model_id: str, model_info: Optional[dict] = None) -> bool:
    """A run belongs to one manifest, one model (and precision) and one --top-k: refuse a mismatch.

    Returns:
        True when ``record`` describes this very work (nothing to rewrite).

    Raises:
        UsageError: ``run_id`` already holds another manifest's or (without --force) another model's output.
    """
    if record is None:
        if args.only_failed:
            raise UsageError(f"--only-failed: run {run_id} has no record at {run_record_key(args.output, run_id)}; "
                             "nothing to rerun")
        return False
    if record.get("manifest_id") != manifest.manifest_id:
        raise UsageError(f"--run-id {run_id} belongs to manifest {record.get('manifest_id')} "
                         f"({record.get('manifest')}), not {manifest.manifest_id} ({args.manifest}); use another --run-id")
    if record.get("model") != model_id and not args.force:
        raise UsageError(f"--run-id {run_id} was made with model {record.get('model')}, not {model_id}; "
                         "use another --run-id (or --force to replace its files)")
    if record.get("top_k") != args.top_k and not args.force:
        raise UsageError(f"--run-id {run_id} was made with --top-k {record.get('top_k')}, not {args.top_k}")
    same_shape = True
    for key in ("preprocessing", "output_layer"):  # runs from before these settings had the defaults
        was = record.get(key)
        if key == "preprocessing":  # runs from before it was recorded had the defaults; from before --decode, exact
            was = {**DEFAULT_PREPROCESSING.record(), "decode": "exact", **(was or {})}
        now = (model_info or {}).get(key, DEFAULT_PREPROCESSING.record() if key == "preprocessing" else None)
        if was != now:
            same_shape = False
            if not args.force:
                hint = (f" (--decode {was['decode']} continues it)" if key == "preprocessing" and isinstance(now, dict)
                        and {**was, "decode": now.get("decode")} == now else "")
                raise UsageError(f"--run-id {run_id} was made with {key} {was}, not {now}{hint}; use another --run-id "
                                 "(or --force to replace its files)")
    return record.get("model") == model_id and record.get("top_k") == args.top_k and same_shape


def write_run_record(args: InferConfig, run_id: str, manifest: Manifest, model_id: str,
                     conversion: Optional[dict], endpoint_url: storage.Endpoint, model_info: Optional[dict] = None,
                     encryption: Optional[storage.Encryption] = None) -> None:
    """Write ``run.json``: manifest, model, precision (with its samples, agreement and CPU), --top-k, the
    preprocessing, how probabilities are made, and the output layer."""
    record = {"run_id": run_id, "manifest": args.manifest, "manifest_id": manifest.manifest_id, "model": model_id,
              "sym_url": args.sym_url, "param_url": args.param_url, "label_url": args.label_url, "top_k": args.top_k,
              "precision": args.precision, "conversion": conversion, **(model_info or {}),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(run_record_key(args.output, run_id), json.dumps(record, indent=1).encode(), endpoint_url,
                        "application/json", encryption=encryption)


# Flags the rerun command sets itself (the run and the selection) or leaves out (they change no output).
_NOT_PASSED_ON = {"--run-id", "--shards", "--only-missing", "--only-failed", "--dry-run", "--verbose", "--help"}


def rerun_command(args: InferConfig, run_id: str, submit: Optional[list[str]] = None,
                  script: str = "infer/main.py") -> str:
    """The exact command that reruns this run's failed shards: ``submit`` are the spark-submit options of
    the running application (:func:`common.spark.submit_options`; the documented defaults without it).

    Derived from infer's parser and settings: every flag whose value differs from its parser's default is passed
    on as given, so a new flag needs no line here (tests/test_rerun.py parses the command back)."""
    cmd = ["spark-submit", *(submit or ["--properties-file", "spark-defaults.conf"]), script]
    for action in build_parser()._actions:  # argparse's own list of the parser's options
        if not action.option_strings or action.option_strings[0] in _NOT_PASSED_ON:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1]  # the long form
        cmd += [flag] if action.nargs == 0 else [flag, str(value)]
    return shlex.join(cmd + ["--run-id", run_id, "--only-failed"])


def summarise(statuses: status.Writer, args: InferConfig, run_id: str, manifest: Manifest, model_id: str,
              elapsed: float, groups: int, per_task: int, submit: Optional[list[str]] = None,
              script: str = "infer/main.py", files_prefix: Optional[str] = None) -> dict:
    """The run summary printed at the end and stored as ``_runs/<run_id>/summary.json``, from the
    counts the status writer kept.  At most 1,000 failed shards are listed with their errors:
    the status file (``status_file``) has them all."""
    return {
        "run_id": run_id,
        "manifest": args.manifest,
        "manifest_id": manifest.manifest_id,
        "model": model_id,
        "precision": args.precision,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards_selected": statuses.shards,
        "tasks": groups,
        "shards_per_task": per_task,
        "shards_written": statuses.written,
        "shards_already_done": statuses.already,
        "shards_failed_count": statuses.failed_count,
        "shards_failed": sorted(statuses.failed),
        "errors": {str(i): statuses.errors[i] for i in sorted(statuses.failed)},
        "images_written": statuses.images,
        "image_errors": statuses.image_errors,
        "model_loads": statuses.model_loads,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(statuses.images / elapsed, 3) if elapsed > 0 else None,
        "output": partition_dir(files_prefix or args.output, run_id),
        "status_file": statuses.uri if statuses.shards else None,
        "rerun_failed": rerun_command(args, run_id, submit, script) if statuses.failed_count else None,
    }


def write_athena_sql(args: InferConfig, run_id: str, manifest: Manifest, endpoint_url: storage.Endpoint,
                     encryption: Optional[storage.Encryption] = None) -> bool:
    """Once every shard of the manifest is ok (latest statuses of all invocations), leave the Athena
    statements in ``_runs/<run_id>/``; returns whether the run is complete."""
    latest = status.read_latest(args.output, run_id, endpoint_url, ["status"])
    ok = int(pc.sum(pc.equal(latest.column("status"), "ok")).as_py() or 0)
    if ok < manifest.num_shards:
        print(f"{PROG}: run {run_id} is not complete yet ({manifest.num_shards - ok} of {manifest.num_shards} shards "
              "not done); athena.sql is written when every shard is done", flush=True)
        return False
    uri = storage.join(run_dir(args.output, run_id), "athena.sql")
    storage.write_bytes(uri, athena.run_statements(args.output, run_id).encode(), endpoint_url, "text/plain",
                        encryption=encryption)
    print(f"{PROG}: run complete: Athena statements in {uri}", flush=True)
    return True
