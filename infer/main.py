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
        [--glue-database DB --glue-table TABLE | --iceberg-table DB.TABLE]

The driver reads the manifest index (never the shard rows), checks the model once (so a bad
URL or mismatched params fail before Spark starts), converts the model when a reduced
precision is asked for (infer/precision.py), plans task groups from shard id ranges
(infer/plan.py), and collects a compact status per shard, which it writes as one Parquet
file per invocation (common/status.py); tasks read their own shard rows, and predictions go
from each task straight to S3 (with --iceberg-table, under the Iceberg table's data folder, committed by the
driver in one snapshot from the statistics the tasks report: infer/iceberg_table.py).  Run records: infer/runrecord.py.  Exit code 0 when every selected shard is ok, 1 when
any failed (their ids are printed) or a step after the first write failed (the line says what was written and
how to finish), 2 for bad arguments or inputs with nothing written (common/cli.py).
"""

from __future__ import annotations

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

from common import glue, iceberg, status, storage  # noqa: E402
from common.cli import UsageError, Writes, exit_process, first_line, run_cli  # noqa: E402
from common.manifest import Manifest, check_parts_listed, read_manifest  # noqa: E402
from common.model_files import ModelFiles, ModelSpec, fetch_model  # noqa: E402
from common.model_graph import check_model_head  # noqa: E402
from common.output import default_run_id, partition_dir, run_dir  # noqa: E402
from common.progress import Progress  # noqa: E402
from common.spark import spark_context, stop_in_background, submit_options, task_attempts  # noqa: E402
from infer import iceberg_table, precision, report, runrecord  # noqa: E402
from infer import plan as plan_mod  # noqa: E402
from infer.settings import PROG, InferConfig, build_parser  # noqa: E402
from infer.task import InferSettings, run_group  # noqa: E402

# The model is bound once with this static batch: 64x3x224x224 float32 is ~38 MB.
MODEL_BATCH = 64
# Tasks per Spark job: a billion images are ~3.9 M tasks at 4 shards each; in waves of this
# many the driver's scheduler state and the results it holds stay bounded (docs/scale.md).
TASKS_PER_JOB = 20_000
# The run report holds every shard's status in memory (~210 B each): written automatically up to
# 2 M shards (128 M images, ~0.4 GB); beyond, on demand with python -m infer.report.
REPORT_AUTO_MAX_SHARDS = 2_000_000


def model_for_executors(config: InferConfig, files, spec: ModelSpec, record: Optional[dict], manifest, run_id: str,
                        endpoint: storage.Endpoint, writing=lambda: None, encryption: Optional[storage.Encryption] = None
                        ) -> tuple[ModelSpec, Optional[dict]]:
    """The spec the executors load, and the conversion record for run.json (None at fp32); ``writing`` is
    called before a converted model is stored."""
    if config.precision == "fp32":
        return spec, None
    done = (record or {}).get("conversion")
    if done and done.get("precision") == config.precision:  # an earlier invocation of this run converted it
        stored = precision.stored_spec(done, spec)
        if storage.exists(stored.param_url, endpoint):
            print(f"{PROG}: --precision {config.precision}: reusing the run's model {done['model_dir']} "
                  f"(agreement {done['agreement']})", flush=True)
            return stored, done
    converted = precision.prepare_model(files, spec, config.precision, manifest, config.calibration_images,
                                        config.min_agreement, storage.join(run_dir(config.output, run_id), "model"),
                                        log=lambda m: print(f"{PROG}: {m}", flush=True), prep=config.prep,
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

    manifest: Manifest
    files: ModelFiles
    spec: ModelSpec  # pinned to the params' sha256: executors must load this very model
    model_id: str
    model_info: dict  # for run.json: how probabilities are made, the output layer, preprocessing
    run_id: str
    record: Optional[dict]  # the run's run.json from an earlier invocation
    record_matches: bool
    ranges: np.ndarray  # the selected shard id ranges
    files_prefix: str  # where the part files go: --output, or the Iceberg table's data folder
    iceberg: Optional[iceberg_table.Target] = None
    in_table: Optional[np.ndarray] = None  # --iceberg-table: mask of the run's shards already committed

    @property
    def selected(self) -> int:
        return plan_mod.count(self.ranges)


def resolve(config: InferConfig) -> Job:
    """Check the arguments, read the manifest index and the model, name the run and select its shards:
    everything that can fail on bad input fails here, before Spark starts."""
    endpoint = config.store  # endpoint and retries of every request of the run
    prep = config.prep
    # seconds, not a minute of retries, for a typo in a bucket or endpoint
    storage.check_buckets([u for u in (config.manifest, config.output, config.sym_url, config.param_url, config.label_url) if u],
                          endpoint)
    manifest = read_manifest(config.manifest, endpoint)  # the index: a few bytes per part, never the keys
    if manifest.max_side and manifest.max_side < prep.min_side:
        print(f"{PROG}: warning: {config.manifest} was packed with --max-side {manifest.max_side}, below the "
              f"{prep.min_side} pixels this run's resize needs: its larger images reach the model enlarged",
              file=sys.stderr, flush=True)
    check_parts_listed(manifest, endpoint)  # every part there, at its size: one LIST per 1,000 parts
    spec = ModelSpec(config.sym_url, config.param_url, config.label_url or "", MODEL_BATCH, endpoint, device=config.device,
                     image_size=prep.size, output_layer=config.output_layer, classify=config.top_k > 0)
    files = fetch_model(spec)
    checked = check_model_head(files, spec)  # a bad model fails here, once, before any task starts
    model_info = {"probabilities": checked.head, "output_layer": config.output_layer,
                  "embedding_width": checked.embedding_width or None, "preprocessing": prep.record()}
    spec = dataclasses.replace(spec, params_sha256=files.params_sha256)
    model_id = files.model_id(dataclasses.replace(spec, precision=config.precision))
    run_id = config.run_id or default_run_id(manifest.manifest_id, spec.name, files.params_sha256, config.precision, config.variant)
    record = runrecord.read_run_record(config.output, run_id, endpoint)
    record_matches = runrecord.check_run_record(record, config, run_id, manifest, model_id, model_info)
    if not config.iceberg_table:
        return Job(manifest, files, spec, model_id, model_info, run_id, record, record_matches,
                   plan_mod.select(config, manifest, run_id, endpoint), config.output)
    # --iceberg-table: the table checked (read only), and the run's shards it holds left out of the selection
    target = iceberg_table.find_table(config.iceberg_table, config.output, endpoint)
    in_table = iceberg_table.committed_mask(target.table, config.output, run_id, manifest.num_shards, endpoint)
    ranges = plan_mod.select(config, manifest, run_id, endpoint, target.files_prefix)
    left = plan_mod.subtract(ranges, in_table)
    if plan_mod.count(left) < plan_mod.count(ranges):
        print(f"{PROG}: --iceberg-table {target.ident}: {plan_mod.count(ranges) - plan_mod.count(left)} of the selected "
              f"shards are in the table already (run_id={run_id}): left out", flush=True)
    return Job(manifest, files, spec, model_id, model_info, run_id, record, record_matches, left, target.files_prefix,
               target, in_table)


def print_dry_run(config: InferConfig, job: Job) -> None:
    """The plan, grouped for this machine's cores (on a cluster Spark's parallelism decides)."""
    m = job.manifest
    plan = plan_mod.make_plan(m, job.ranges, config.shards_per_task, os.cpu_count() or 1, config.precision)
    print(f"{PROG}: dry run: manifest {m.manifest_id} (format {m.version}, {len(m.parts)} parts, {m.num_shards} "
          f"shards, {m.num_images} images), run_id={job.run_id}, model {job.model_id}: {plan.selected} of "
          f"{m.num_shards} shards in {len(plan.ranges)} ranges, {plan.groups} tasks of up to {plan.per_task} in "
          f"{math.ceil(plan.groups / TASKS_PER_JOB)} Spark jobs: {plan_mod.describe(plan)}; nothing written", flush=True)


def prepare_work(sc, config: InferConfig, job: Job, writes: Writes) -> ModelSpec:
    """With Spark up and before any shard runs: GPU settings, every needed manifest part's sha256, the Glue
    table, the model the executors load (converted for a reduced precision) and run.json.  Returns that model.

    Every check that can refuse the input comes before the first write (the converted model's)."""
    if config.device == "gpu":
        check_gpu_settings(sc.getConf())
    # before anything is written; the workers meanwhile import what the tasks run (MXNet)
    plan_mod.verify_parts(sc, job.manifest, job.ranges, config.store, warm=("infer.task", "mxnet"))
    if config.glue_table:  # a table of another shape is refused now, not after the run
        glue.catalog(lambda: glue.check_table(config.glue_database, config.glue_table, config.output))
    finish = (f"run the same infer command again (run_id={job.run_id}): it keeps every shard already written "
              "(one HEAD each) and does the rest")
    what = f"the run's files under {partition_dir(job.files_prefix, job.run_id)} and {run_dir(config.output, job.run_id)}/"
    spec, conversion = model_for_executors(config, job.files, job.spec, job.record, job.manifest, job.run_id, config.store,
                                           writing=lambda: writes.begin(what, finish), encryption=config.store.encryption)
    writes.begin(what, finish)
    if config.glue_table:
        writes.begin(f"the Glue table {config.glue_database}.{config.glue_table} (created when absent)", finish)
        made = glue.catalog(lambda: glue.ensure_table(config.glue_database, config.glue_table, config.output))
        print(f"{PROG}: Glue table {config.glue_database}.{config.glue_table}: {made}", flush=True)
    if job.iceberg is not None:
        writes.begin(f"the Iceberg table {job.iceberg.ident} (created when absent at {job.iceberg.location})", finish)
        made = iceberg_table.ensure_table(job.iceberg, config.store)
        print(f"{PROG}: Iceberg table {job.iceberg.ident} at {job.iceberg.location}: {made}", flush=True)
    if not job.record_matches or (conversion and conversion != (job.record or {}).get("conversion")):
        runrecord.write_run_record(config, job.run_id, job.manifest, job.model_id, conversion, config.store,
                                   job.model_info, config.store.encryption)
    return spec


def task_settings(sc, config: InferConfig, job: Job, spec: ModelSpec) -> InferSettings:
    """What every task of this invocation gets."""
    digest_extra = ";".join(x for x in ("" if config.precision == "fp32" else config.precision, config.variant) if x)
    target = None
    if job.iceberg is not None:
        table = job.iceberg.table
        target = iceberg.FileTarget.of(table.schema(), table.properties)
    return InferSettings(model=spec, output_prefix=job.files_prefix, run_id=job.run_id,
                         manifest_id=job.manifest.manifest_id, top_k=config.top_k, attempts=task_attempts(sc),
                         store=config.store, force=config.force, invocation=uuid.uuid4().hex, digest_extra=digest_extra,
                         prep=config.prep, iceberg=target)


def finish(config: InferConfig, job: Job, summary: dict, statuses: status.Writer, status_uri: Optional[str]) -> int:
    """After the last task: the summary lines, the report, athena.sql and the Glue partition of a complete run,
    and the failed shards with the command that reruns them.  Returns the exit code."""
    run_id, endpoint = job.run_id, config.store
    failed = summary["shards_failed"]
    print(f"{PROG}: {statuses.shards - statuses.failed_count}/{statuses.shards} shards ok "
          f"({summary['shards_written']} written, {summary['shards_already_done']} already done), "
          f"{summary['images_written']} images written ({summary['image_errors']} image errors) "
          f"in {summary['elapsed_s']:.1f}s = {summary['images_per_s']} images/s", flush=True)
    print(f"{PROG}: output {summary['output']}", flush=True)
    if job.manifest.num_shards > REPORT_AUTO_MAX_SHARDS:  # the report reads every status: ~210 B per shard
        print(f"{PROG}: no automatic report for a manifest of over {REPORT_AUTO_MAX_SHARDS} shards; make it with "
              f"python -m infer.report --output {config.output} --run-id {run_id}", flush=True)
    else:
        try:
            print(f"{PROG}: report {report.write_report(config.output, run_id, endpoint, encryption=config.store.encryption)}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - a report problem never fails the run
            print(f"{PROG}: warning: no run report: {first_line(e)}", file=sys.stderr, flush=True)
    complete = (not failed and job.iceberg is None
                and runrecord.write_athena_sql(config, run_id, job.manifest, endpoint, config.store.encryption))
    if config.glue_table:
        where = f"Glue table {config.glue_database}.{config.glue_table}"
        if complete:
            done = glue.catalog(lambda: glue.register_partition(config.glue_database, config.glue_table, config.output,
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


def commit_iceberg(committer: iceberg_table.Committer, statuses: status.Writer) -> dict:
    """Commit the invocation's new files to the Iceberg table in one snapshot; what it did, for summary.json."""
    snapshot = committer.commit(failed=statuses.failed_count)
    done = {"table": committer.ident, "snapshot_id": snapshot, "files_added": committer.files,
            "rows_added": committer.rows, "manifests": len(committer.manifests)}
    if snapshot is None:
        print(f"{PROG}: Iceberg table {committer.ident}: nothing new to commit for run_id={committer.run_id}", flush=True)
    else:
        failed = (f"; {statuses.failed_count} failed shards are not in it (rerun them with --only-failed)"
                  if statuses.failed_count else "")
        print(f"{PROG}: Iceberg table {committer.ident}: snapshot {snapshot} adds {committer.files} files "
              f"({committer.rows} rows) of run_id={committer.run_id}{failed}", flush=True)
    return done


def run(config: InferConfig, writes: Writes) -> int:
    """Run infer for parsed arguments; returns the exit code."""
    started = time.time()
    job = resolve(config)
    m = job.manifest
    if job.selected == 0:
        print(f"{PROG}: manifest {m.manifest_id}: run_id={job.run_id}; running 0 shards: nothing to do", flush=True)
        return 0
    if config.dry_run:
        print_dry_run(config, job)
        return 0
    sc = spark_context(f"shardinfer-infer-{job.run_id}")
    spec = prepare_work(sc, config, job, writes)
    plan = plan_mod.make_plan(m, job.ranges, config.shards_per_task, sc.defaultParallelism, config.precision)
    images = m.num_images if plan.selected == m.num_shards else min(m.num_images, plan.selected * m.batch_size)
    print(f"{PROG}: manifest {m.manifest_id}: {m.num_shards} shards, {m.num_images} images; run_id={job.run_id}; "
          f"model {job.model_id}; running {plan.selected} shards in {plan.groups} tasks of up to {plan.per_task}",
          flush=True)
    settings = task_settings(sc, config, job, spec)
    statuses = status.Writer(config.output, job.run_id, started, settings.invocation, config.store, config.store.encryption)
    if m.num_shards <= REPORT_AUTO_MAX_SHARDS:  # the report's imports, while the driver waits for the tasks
        threading.Thread(target=report.warm_up, name="shardinfer-report-imports", daemon=True).start()
    committer = None
    if job.iceberg is not None:
        committer = iceberg_table.Committer(job.iceberg, config.output, job.run_id, settings.invocation, m.manifest_id,
                                             m.num_shards, config.store, job.in_table)

    def sink(results: list[tuple[bytes, list]]) -> None:
        statuses.add([packed for packed, _ in results])
        if committer is not None:
            committer.add([f for _, files in results for f in files])

    with Progress(sc, PROG, plan.selected, images) as progress:
        run_waves(sc, plan, settings, progress.counter, sink)
    status_uri = statuses.close()
    committed = commit_iceberg(committer, statuses) if committer is not None else None

    here = os.path.dirname(os.path.abspath(__file__))
    submit = submit_options(sc, os.path.join(os.path.dirname(here), "spark-defaults.conf"))
    stopping = stop_in_background(sc)  # Spark's last use: its shutdown overlaps the summary and the report
    summary = runrecord.summarise(statuses, config, job.run_id, m, job.model_id, time.time() - started, plan.groups,
                                  plan.per_task, submit, os.path.join(here, "main.py"), job.files_prefix)
    if committed is not None:
        summary["iceberg"] = committed
    storage.write_bytes(storage.join(run_dir(config.output, job.run_id), "summary.json"),
                        json.dumps(summary, indent=1).encode(), config.store, "application/json",
                        encryption=config.store.encryption)
    try:
        return finish(config, job, summary, statuses, status_uri)
    finally:
        if stopping is not None:
            stopping.join()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``spark-submit infer/main.py`` and for tests."""
    return run_cli(PROG, run, build_parser(), argv, settings=InferConfig.from_args)


if __name__ == "__main__":
    exit_process(main())
