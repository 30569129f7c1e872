"""infer: run the model over the shards of a manifest, in Spark tasks of a few shards, one Parquet file per shard.

    spark-submit --properties-file spark-defaults.conf infer/main.py \\
        --manifest s3://BUCKET/shards/cifar10-test/manifest.parquet \\
        --sym-url URL --param-url URL --label-url URL \\
        --output s3://BUCKET/predictions/ [--run-id ID] [--top-k 5] \\
        [--shards 3,17,40-45 | --only-missing | --only-failed] [--device cpu|gpu] \\
        [--precision fp32|bf16|int8 [--calibration-images 512] [--min-agreement 0.99]] \\
        [--shards-per-task N] [--dry-run] \\
        [--image-size 224] [--resize stretch|shorter-side-crop] [--mean R,G,B] [--std R,G,B] \\
        [--output-layer NAME] [--sse AES256|aws:kms [--sse-kms-key-id KEY]] \\
        [--glue-database DB --glue-table TABLE]

The driver reads the manifest index (never the shard rows), checks the model once (so a bad
URL or mismatched params fail before Spark starts), converts the model when a reduced
precision is asked for (infer/precision.py), plans task groups from shard id ranges
(infer/plan.py), and collects a compact status per shard, which it writes as one Parquet
file per invocation (common/status.py); tasks read their own shard rows, and predictions go
from each task straight to S3.  Run records: infer/runrecord.py.  Exit code 0 when every selected shard is ok, 1 when
any failed (their ids are printed) or a step after the first write failed (the line says what was written and
how to finish), 2 for bad arguments or inputs with nothing written (common/cli.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The driver's own MXNet work (model check, --precision conversion and agreement) may use every
# core: MXNet reads this once, when it is first imported (below).  Executors are unaffected:
# Spark sets OMP_NUM_THREADS in its Python workers from spark.task.cpus / spark.executorEnv.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

from common import glue, status, storage  # noqa: E402
from common.cli import (  # noqa: E402
    UsageError,
    Writes,
    add_common_arguments,
    encryption_from,
    endpoint_from,
    exit_process,
    first_line,
    run_cli,
)
from common.images import (  # noqa: E402
    CHANNEL_ORDERS,
    DECODES,
    DEFAULT_DECODE,
    INPUT_SIZE,
    RESIZE_MODES,
    Preprocessing,
    parse_size,
    parse_triple,
)
from common.manifest import Manifest, check_parts_listed, read_manifest  # noqa: E402
from common.model import ModelFiles, ModelSpec, check_model_head, fetch_model  # noqa: E402
from common.output import check_run_id, default_run_id, partition_dir, run_dir  # noqa: E402
from common.progress import Progress  # noqa: E402
from common.spark import spark_context, stop_in_background, submit_options, task_attempts  # noqa: E402
from infer import plan as plan_mod  # noqa: E402
from infer import precision, report, runrecord  # noqa: E402
from infer.task import InferSettings, run_group  # noqa: E402

PROG = "infer"
# The model is bound once with this static batch: 64x3x224x224 float32 is ~38 MB.
MODEL_BATCH = 64
# Tasks per Spark job: a billion images are ~3.9 M tasks at 4 shards each; in waves of this
# many the driver's scheduler state and the results it holds stay bounded (docs/scale.md).
TASKS_PER_JOB = 20_000
# The run report holds every shard's status in memory (~210 B each): written automatically up to
# 2 M shards (128 M images, ~0.4 GB); beyond, on demand with python -m infer.report.
REPORT_AUTO_MAX_SHARDS = 2_000_000


def build_parser() -> argparse.ArgumentParser:
    """The command line (docs/reference.md)."""
    p = argparse.ArgumentParser(prog=PROG, description="Run an MXNet image model over the shards of a manifest and "
                                "write one Parquet file of predictions per shard.")
    p.add_argument("--manifest", required=True, help="URI of manifest.parquet written by prepare")
    p.add_argument("--sym-url", required=True, help="model symbol, e.g. .../resnet-18-symbol.json (s3://, http(s)://, path)")
    p.add_argument("--param-url", required=True, help="model params, e.g. .../resnet-18-0000.params")
    p.add_argument("--label-url", default=None, help="class names, synset.txt format (one 'nXXXXXXXX name' or one "
                   "name per line); required unless --top-k 0")
    p.add_argument("--output", required=True, help="table location, e.g. s3://BUCKET/predictions/ "
                   "(files go to run_id=<id>/, run records to _runs/<id>/)")
    p.add_argument("--run-id", default=None, help="partition value for this run (default: derived from the "
                   "manifest id, the model and a non-fp32 precision, so a rerun fills in the same run)")
    p.add_argument("--top-k", type=int, default=5, help="classes kept per image, best first (default 5); 0 with "
                   "--output-layer: embeddings only (no labels, no softmax, top_k columns null)")
    p.add_argument("--image-size", default=str(INPUT_SIZE), help=f"model input S x S, or H x W as HxW, e.g. 48x192 "
                   f"(default {INPUT_SIZE}; import_onnx prints the size it read)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="stretch", help="stretch (default): resize to S x S; "
                   "shorter-side-crop: shorter side to round(S*256/224), then the centre S x S crop (HxW: the image "
                   "covers round(H*256/224) x round(W*256/224), then the centre H x W crop)")
    p.add_argument("--channel-order", choices=CHANNEL_ORDERS, default="rgb", help="the order the model takes its "
                   "colour channels in: rgb (default; PyTorch, timm, Keras) or bgr (Caffe-, OpenCV- and many "
                   "Paddle-trained models); --mean and --std are given in this order")
    p.add_argument("--mean", default="0,0,0", help="per-channel mean, in --channel-order, subtracted from 0..255 "
                   "pixels (default 0,0,0; a Gluon model zoo export wants 123.675,116.28,103.53)")
    p.add_argument("--std", default="1,1,1", help="per-channel divisor, in --channel-order, after the mean (default "
                   "1,1,1; Gluon: 58.395,57.12,57.375)")
    p.add_argument("--decode", choices=DECODES, default=DEFAULT_DECODE, help="fast (default): decode a large JPEG at "
                   "the smallest DCT scale (1/2-1/8) that still covers the resize, and box-reduce other large images "
                   "before it (docs/reference.md: measured agreement); exact: decode every pixel")
    p.add_argument("--output-layer", default=None, help="also write this internal output's values per image (e.g. "
                   "flatten0_output) in the embedding column; a wrong name lists the outputs there are")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--shards", default=None, help="only these manifest shard ids, e.g. 3,17,40-45")
    sel.add_argument("--only-missing", action="store_true", help="only shards whose Parquet file is absent from the run")
    sel.add_argument("--only-failed", action="store_true", help="only shards whose last recorded status is failed")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the model runs (default cpu); gpu: each "
                   "task binds the GPU Spark's GPU scheduling assigned it (spark.executor.resource.gpu.amount, "
                   "spark.task.resource.gpu.amount; deploy/emr/configurations-gpu.json), fp32 only")
    p.add_argument("--precision", choices=precision.PRECISIONS, default="fp32",
                   help="fp32 (default); bf16 (MXNet AMP) or int8 (oneDNN quantization, calibrated): converted once "
                   "on the driver, checked against fp32, stored under _runs/<run_id>/model/ for the executors")
    p.add_argument("--calibration-images", type=int, default=precision.DEFAULT_CALIBRATION_IMAGES,
                   help="images drawn from across the manifest to calibrate int8; as many again, disjoint, measure "
                   f"top-1 agreement with fp32 (default {precision.DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--min-agreement", type=float, default=precision.DEFAULT_MIN_AGREEMENT,
                   help="refuse a bf16/int8 model whose top-1 agrees with fp32 on fewer of the agreement images "
                   f"(default {precision.DEFAULT_MIN_AGREEMENT})")
    p.add_argument("--shards-per-task", type=int, default=None,
                   help="consecutive shards per Spark task, run as a pipeline (default 4 at fp32, 6 at bf16, 12 at "
                   "int8: a few seconds of model time; fewer when there are too few shards to keep every core busy)")
    p.add_argument("--dry-run", action="store_true", help="check the manifest and model, select and group the "
                   "shards, print the plan; write nothing and start no task")
    p.add_argument("--glue-database", default=None, help="with --glue-table: keep the table in the Glue Data "
                   "Catalog (Athena's): created with the database when absent, and this run's partition registered "
                   "once every shard of the manifest is done")
    p.add_argument("--glue-table", default=None, help="the Glue table over --output (see --glue-database)")
    p.add_argument("--force", action="store_true", help="overwrite part files that exist from different input "
                   "(another model or --top-k under the same --run-id); without it such a shard is a reported conflict")
    add_common_arguments(p)
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Argument checks that need no input.

    Raises:
        UsageError: the offending flag and value.
    """
    if args.top_k < 0:
        raise UsageError(f"--top-k must be at least 0, got {args.top_k}")
    if args.top_k == 0 and not args.output_layer:
        raise UsageError("--top-k 0 (no classes) needs --output-layer: there would be nothing to write")
    if args.top_k > 0 and not args.label_url:
        raise UsageError("--label-url is required (or --top-k 0 with --output-layer for embeddings only)")
    if args.output_layer and args.precision != "fp32":
        raise UsageError(f"--output-layer with --precision {args.precision}: converted models' internal outputs are "
                         "not float (int8 layers are quantized); run embeddings at fp32")
    if args.calibration_images < 1:
        raise UsageError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if not 0.0 <= args.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement must lie in 0..1, got {args.min_agreement}")
    if args.shards_per_task is not None and args.shards_per_task < 1:
        raise UsageError(f"--shards-per-task must be at least 1, got {args.shards_per_task}")
    if args.run_id:
        check_run_id(args.run_id)
    if bool(args.glue_database) != bool(args.glue_table):
        raise UsageError("--glue-database and --glue-table go together")
    if args.device == "gpu" and args.precision != "fp32":
        raise UsageError(f"--precision {args.precision} with --device gpu: bf16 and int8 are converted for the CPU "
                         "(oneDNN); run fp32 on a GPU")


def preprocessing(args: argparse.Namespace) -> Preprocessing:
    """The preprocessing of the flags.

    Raises:
        UsageError: a bad --image-size, --resize, --mean or --std (named).
    """
    return Preprocessing(parse_size(args.image_size), args.resize, parse_triple(args.mean, "--mean"),
                         parse_triple(args.std, "--std"), args.decode, args.channel_order)


def run_variant(args: argparse.Namespace, prep: Preprocessing) -> str:
    """What besides model, precision and --top-k shapes the output ("" for the zoo defaults with --decode exact,
    the contract of the runs made before --decode): it goes into the default run id and every part file's input
    digest."""
    parts = [] if prep.is_default else [prep.describe()]
    if prep.decode != "exact":
        parts.append(f"decode={prep.decode}")
    if args.output_layer:
        parts.append(f"layer={args.output_layer}")
    return ";".join(parts)


def model_for_executors(args: argparse.Namespace, files, spec: ModelSpec, record: Optional[dict], manifest, run_id: str,
                        endpoint: Optional[str], writing=lambda: None, encryption: Optional[storage.Encryption] = None
                        ) -> tuple[ModelSpec, Optional[dict]]:
    """The spec the executors load, and the conversion record for run.json (None at fp32); ``writing`` is
    called before a converted model is stored."""
    if args.precision == "fp32":
        return spec, None
    done = (record or {}).get("conversion")
    if done and done.get("precision") == args.precision:  # an earlier invocation of this run converted it
        stored = precision.stored_spec(done, spec)
        if storage.exists(stored.param_url, endpoint):
            print(f"{PROG}: --precision {args.precision}: reusing the run's model {done['model_dir']} "
                  f"(agreement {done['agreement']})", flush=True)
            return stored, done
    converted = precision.prepare_model(files, spec, args.precision, manifest, args.calibration_images,
                                        args.min_agreement, storage.join(run_dir(args.output, run_id), "model"),
                                        log=lambda m: print(f"{PROG}: {m}", flush=True), prep=preprocessing(args),
                                        writing=writing, encryption=encryption)
    return converted.spec, converted.record


def check_gpu_settings(conf) -> None:
    """``--device gpu`` needs Spark to hand each task a GPU (each task then binds the one it got).

    Raises:
        UsageError: the settings that are missing, named.
    """
    missing = [k for k in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount")
               if not conf.get(k, None)]
    if missing:
        raise UsageError(f"--device gpu needs Spark's GPU scheduling: {', '.join(missing)} not set (and a discovery "
                         "script, spark.executor.resource.gpu.discoveryScript, where the cluster manager does not "
                         "assign GPUs itself); see deploy/emr/configurations-gpu.json")


def run_waves(sc, plan: plan_mod.Plan, settings: InferSettings, counter, sink) -> None:
    """Run every group of ``plan``, at most :data:`TASKS_PER_JOB` tasks per Spark job, handing each
    job's packed statuses to ``sink`` (in shard order) as it ends.

    Two jobs are in flight at a time, so the next wave's tasks fill the cores as the current
    wave drains (Spark's FIFO scheduler starts them only when the first has no task waiting).
    """
    shared = sc.broadcast(plan)

    def wave(bounds: tuple[int, int]) -> list[bytes]:
        lo, hi = bounds
        task = partial(_group_task, shared=shared, settings=settings, counter=counter)
        return sc.parallelize(range(lo, hi), hi - lo).map(task).collect()

    waves = [(lo, min(plan.groups, lo + TASKS_PER_JOB)) for lo in range(0, plan.groups, TASKS_PER_JOB)]
    if len(waves) == 1:
        sink(wave(waves[0]))
        return
    with ThreadPoolExecutor(2, thread_name_prefix="shardinfer-wave") as pool:
        for result in pool.map(wave, waves):
            sink(result)


def _group_task(group: int, shared, settings: InferSettings, counter) -> bytes:
    return run_group(group, shared.value, settings, counter)


@dataclasses.dataclass(frozen=True)
class Job:
    """What the driver settles before Spark starts: inputs read and checked, the run named, the shards chosen."""

    endpoint: Optional[str]
    encryption: storage.Encryption
    prep: Preprocessing
    manifest: Manifest
    files: ModelFiles
    spec: ModelSpec  # pinned to the params' sha256: executors must load this very model
    model_id: str
    model_info: dict  # for run.json: how probabilities are made, the output layer, preprocessing
    variant: str  # see run_variant
    run_id: str
    record: Optional[dict]  # the run's run.json from an earlier invocation
    record_matches: bool
    ranges: np.ndarray  # the selected shard id ranges

    @property
    def selected(self) -> int:
        return plan_mod.count(self.ranges)


def resolve(args: argparse.Namespace) -> Job:
    """Check the arguments, read the manifest index and the model, name the run and select its shards:
    everything that can fail on bad input fails here, before Spark starts."""
    check_arguments(args)
    endpoint = endpoint_from(args)
    encryption = encryption_from(args)  # every object this run writes carries it
    prep = preprocessing(args)
    # seconds, not a minute of retries, for a typo in a bucket or endpoint
    storage.check_buckets([u for u in (args.manifest, args.output, args.sym_url, args.param_url, args.label_url) if u],
                          endpoint)
    manifest = read_manifest(args.manifest, endpoint)  # the index: a few bytes per part, never the keys
    if manifest.max_side and manifest.max_side < prep.min_side:
        print(f"{PROG}: warning: {args.manifest} was packed with --max-side {manifest.max_side}, below the "
              f"{prep.min_side} pixels this run's resize needs: its larger images reach the model enlarged",
              file=sys.stderr, flush=True)
    check_parts_listed(manifest, endpoint)  # every part there, at its size: one LIST per 1,000 parts
    spec = ModelSpec(args.sym_url, args.param_url, args.label_url or "", MODEL_BATCH, endpoint, device=args.device,
                     image_size=prep.size, output_layer=args.output_layer, classify=args.top_k > 0)
    files = fetch_model(spec)
    checked = check_model_head(files, spec)  # a bad model fails here, once, before any task starts
    model_info = {"probabilities": checked.head, "output_layer": args.output_layer,
                  "embedding_width": checked.embedding_width or None, "preprocessing": prep.record()}
    variant = run_variant(args, prep)
    spec = dataclasses.replace(spec, params_sha256=files.params_sha256)
    model_id = files.model_id(dataclasses.replace(spec, precision=args.precision))
    run_id = args.run_id or default_run_id(manifest.manifest_id, spec.name, files.params_sha256, args.precision, variant)
    record = runrecord.read_run_record(args.output, run_id, endpoint)
    record_matches = runrecord.check_run_record(record, args, run_id, manifest, model_id, model_info)
    return Job(endpoint, encryption, prep, manifest, files, spec, model_id, model_info, variant, run_id, record,
               record_matches, plan_mod.select(args, manifest, run_id, endpoint))


def print_dry_run(args: argparse.Namespace, job: Job) -> None:
    """The plan, grouped for this machine's cores (on a cluster Spark's parallelism decides)."""
    m = job.manifest
    plan = plan_mod.make_plan(m, job.ranges, args.shards_per_task, os.cpu_count() or 1, args.precision)
    print(f"{PROG}: dry run: manifest {m.manifest_id} (format {m.version}, {len(m.parts)} parts, {m.num_shards} "
          f"shards, {m.num_images} images), run_id={job.run_id}, model {job.model_id}: {plan.selected} of "
          f"{m.num_shards} shards in {len(plan.ranges)} ranges, {plan.groups} tasks of up to {plan.per_task} in "
          f"{math.ceil(plan.groups / TASKS_PER_JOB)} Spark jobs: {plan_mod.describe(plan)}; nothing written", flush=True)


def prepare_work(sc, args: argparse.Namespace, job: Job, writes: Writes) -> ModelSpec:
    """With Spark up and before any shard runs: GPU settings, every needed manifest part's sha256, the Glue
    table, the model the executors load (converted for a reduced precision) and run.json.  Returns that model.

    Every check that can refuse the input comes before the first write (the converted model's)."""
    if args.device == "gpu":
        check_gpu_settings(sc.getConf())
    # before anything is written; the workers meanwhile import what the tasks run (MXNet)
    plan_mod.verify_parts(sc, job.manifest, job.ranges, job.endpoint, warm="infer.task")
    if args.glue_table:  # a table of another shape is refused now, not after the run
        glue.catalog(lambda: glue.check_table(args.glue_database, args.glue_table, args.output))
    finish = (f"run the same infer command again (run_id={job.run_id}): it keeps every shard already written "
              "(one HEAD each) and does the rest")
    what = f"the run's files under {partition_dir(args.output, job.run_id)} and {run_dir(args.output, job.run_id)}/"
    spec, conversion = model_for_executors(args, job.files, job.spec, job.record, job.manifest, job.run_id, job.endpoint,
                                           writing=lambda: writes.begin(what, finish), encryption=job.encryption)
    writes.begin(what, finish)
    if args.glue_table:
        writes.begin(f"the Glue table {args.glue_database}.{args.glue_table} (created when absent)", finish)
        made = glue.catalog(lambda: glue.ensure_table(args.glue_database, args.glue_table, args.output))
        print(f"{PROG}: Glue table {args.glue_database}.{args.glue_table}: {made}", flush=True)
    if not job.record_matches or (conversion and conversion != (job.record or {}).get("conversion")):
        runrecord.write_run_record(args, job.run_id, job.manifest, job.model_id, conversion, job.endpoint,
                                   job.model_info, job.encryption)
    return spec


def task_settings(sc, args: argparse.Namespace, job: Job, spec: ModelSpec) -> InferSettings:
    """What every task of this invocation gets."""
    digest_extra = ";".join(x for x in ("" if args.precision == "fp32" else args.precision, job.variant) if x)
    return InferSettings(model=spec, output_prefix=args.output, run_id=job.run_id, manifest_id=job.manifest.manifest_id,
                         top_k=args.top_k, attempts=task_attempts(sc), endpoint_url=job.endpoint, force=args.force,
                         invocation=uuid.uuid4().hex, digest_extra=digest_extra, prep=job.prep,
                         encryption=job.encryption)


def finish(args: argparse.Namespace, job: Job, summary: dict, statuses: status.Writer, status_uri: Optional[str]) -> int:
    """After the last task: the summary lines, the report, athena.sql and the Glue partition of a complete run,
    and the failed shards with the command that reruns them.  Returns the exit code."""
    run_id, endpoint = job.run_id, job.endpoint
    failed = summary["shards_failed"]
    print(f"{PROG}: {statuses.shards - statuses.failed_count}/{statuses.shards} shards ok "
          f"({summary['shards_written']} written, {summary['shards_already_done']} already done), "
          f"{summary['images_written']} images written ({summary['image_errors']} image errors) "
          f"in {summary['elapsed_s']:.1f}s = {summary['images_per_s']} images/s", flush=True)
    print(f"{PROG}: output {summary['output']}", flush=True)
    if job.manifest.num_shards > REPORT_AUTO_MAX_SHARDS:  # the report reads every status: ~210 B per shard
        print(f"{PROG}: no automatic report for a manifest of over {REPORT_AUTO_MAX_SHARDS} shards; make it with "
              f"python -m infer.report --output {args.output} --run-id {run_id}", flush=True)
    else:
        try:
            print(f"{PROG}: report {report.write_report(args.output, run_id, endpoint, encryption=job.encryption)}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - a report problem never fails the run
            print(f"{PROG}: warning: no run report: {first_line(e)}", file=sys.stderr, flush=True)
    complete = not failed and runrecord.write_athena_sql(args, run_id, job.manifest, endpoint, job.encryption)
    if args.glue_table:
        where = f"Glue table {args.glue_database}.{args.glue_table}"
        if complete:
            done = glue.catalog(lambda: glue.register_partition(args.glue_database, args.glue_table, args.output,
                                                                run_id))
            print(f"{PROG}: {where}: partition run_id={run_id} {done}", flush=True)
        else:
            print(f"{PROG}: {where}: partition run_id={run_id} not registered: the run is not complete", flush=True)
    if not failed:
        return 0
    for sid in failed[:20]:
        print(f"{PROG}: shard {sid} failed: {summary['errors'][str(sid)]}", file=sys.stderr)
    count = summary["shards_failed_count"]
    more = f" ... ({count} in all)" if count > len(failed) else ""
    print(f"{PROG}: FAILED shards: {','.join(map(str, failed))}{more} (statuses in {status_uri}); "
          f"rerun them with:\n  {summary['rerun_failed']}", file=sys.stderr, flush=True)
    return 1


def run(args: argparse.Namespace, writes: Writes) -> int:
    """Run infer for parsed arguments; returns the exit code."""
    started = time.time()
    job = resolve(args)
    m = job.manifest
    if job.selected == 0:
        print(f"{PROG}: manifest {m.manifest_id}: run_id={job.run_id}; running 0 shards: nothing to do", flush=True)
        return 0
    if args.dry_run:
        print_dry_run(args, job)
        return 0
    sc = spark_context(f"shardinfer-infer-{job.run_id}")
    spec = prepare_work(sc, args, job, writes)
    plan = plan_mod.make_plan(m, job.ranges, args.shards_per_task, sc.defaultParallelism, args.precision)
    images = m.num_images if plan.selected == m.num_shards else min(m.num_images, plan.selected * m.batch_size)
    print(f"{PROG}: manifest {m.manifest_id}: {m.num_shards} shards, {m.num_images} images; run_id={job.run_id}; "
          f"model {job.model_id}; running {plan.selected} shards in {plan.groups} tasks of up to {plan.per_task}",
          flush=True)
    settings = task_settings(sc, args, job, spec)
    statuses = status.Writer(args.output, job.run_id, started, settings.invocation, job.endpoint, job.encryption)
    if m.num_shards <= REPORT_AUTO_MAX_SHARDS:  # the report's imports, while the driver waits for the tasks
        threading.Thread(target=report.warm_up, name="shardinfer-report-imports", daemon=True).start()
    with Progress(sc, PROG, plan.selected, images) as progress:
        run_waves(sc, plan, settings, progress.counter, statuses.add)
    status_uri = statuses.close()

    here = os.path.dirname(os.path.abspath(__file__))
    submit = submit_options(sc, os.path.join(os.path.dirname(here), "spark-defaults.conf"))
    stopping = stop_in_background(sc)  # Spark's last use: its shutdown overlaps the summary and the report
    summary = runrecord.summarise(statuses, args, job.run_id, m, job.model_id, time.time() - started, plan.groups,
                                  plan.per_task, submit, os.path.join(here, "main.py"))
    storage.write_bytes(storage.join(run_dir(args.output, job.run_id), "summary.json"),
                        json.dumps(summary, indent=1).encode(), job.endpoint, "application/json",
                        encryption=job.encryption)
    try:
        return finish(args, job, summary, statuses, status_uri)
    finally:
        if stopping is not None:
            stopping.join()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``spark-submit infer/main.py`` and for tests."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    exit_process(main())
