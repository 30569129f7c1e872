"""`make yarn-check`: prepare and infer on a real YARN (Hadoop's test cluster on 127.0.0.1).

What it shows, from Spark's own event logs:

1. **the trap** — infer submitted with dynamic allocation off and no executor count (what
   ``--properties-file spark-defaults.conf`` gave before dynamic allocation was turned on):
   YARN runs it on 2 executors of 1 core, however big the cluster is, and the job says so;
2. **the fix** — the same infer with ``deploy/emr/configurations.json``'s ``spark-defaults``
   (dynamic allocation, 4-core executors): executors until the cluster is full.

prepare runs first with the repository's ``spark-defaults.conf``. Every submit is the EMR
step's command line (``--master yarn --deploy-mode client --py-files shardinfer.zip``,
entry scripts from ``make dist``); what differs from EMR is only what this machine lacks:
the interpreter (this one instead of the bootstrap's /opt/shardinfer/venv), Spark's jars
(``spark.yarn.jars`` pointing at the local pyspark instead of EMR's), the local S3 server's
endpoint and fake credentials given to executors (EMR nodes have an instance profile).

Prints a table and writes the figures as JSON (``--out``); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import storage  # noqa: E402
from common.spark import read_properties  # noqa: E402
from testkit import zoo_builder  # noqa: E402
from testkit.localdev import DEMO_CREDENTIALS, LocalS3, make_dist, upload_cifar_like, venv_bin  # noqa: E402
from testkit.nodeenv import NodeEnv  # noqa: E402
from testkit.yarn import TEST_JVM_OPTIONS_VAR, YarnCluster  # noqa: E402

BUCKET = "shardinfer-yarn"
CONFIGURATIONS = ROOT / "deploy" / "emr" / "configurations.json"


def emr_classification(name: str, path: pathlib.Path = CONFIGURATIONS) -> dict[str, str]:
    """The properties of one classification (``spark-defaults``, ``capacity-scheduler``) of an EMR file."""
    for c in json.loads(path.read_text()):
        if c.get("Classification") == name:
            return dict(c.get("Properties", {}))
    raise ValueError(f"{path}: no {name} classification")


def executors_that_fit(nodes: int, vcores: int, executor_cores: int) -> int:
    """Executors of ``executor_cores`` a YARN that counts vcores places (the client-mode AM takes 1 on one node)."""
    return (vcores - 1) // executor_cores + (nodes - 1) * (vcores // executor_cores)


def event_log_figures(path: str) -> dict:
    """Executors, cores and task concurrency of one application, from its Spark event log."""
    executors: dict[str, int] = {}
    starts, ends = [], []
    failures: dict[str, int] = {}
    removed = 0
    app_id = None
    # Spark 4 writes a folder (eventlog_v2_<app>/events_<n>_<app>, rolled), Spark 3.5 one file.
    files = ([os.path.join(path, n) for n in sorted((n for n in os.listdir(path) if n.startswith("events_")),
                                                    key=lambda n: int(n.split("_")[1]))]
             if os.path.isdir(path) else [path])
    for name in files:
        with open(name) as f:
            lines = f.readlines()
        for line in lines:
            e = json.loads(line)
            kind = e.get("Event")
            if kind == "SparkListenerApplicationStart":
                app_id = e.get("App ID")
            elif kind == "SparkListenerExecutorAdded":
                executors[e["Executor ID"]] = int(e["Executor Info"]["Total Cores"])
            elif kind == "SparkListenerExecutorRemoved":
                removed += 1
            elif kind == "SparkListenerTaskEnd":
                reason = (e.get("Task End Reason") or {}).get("Reason", "Success")
                if reason != "Success":
                    failures[reason] = failures.get(reason, 0) + 1
                # on the executor: launch + deserialisation + run (the driver's Finish Time also
                # counts fetching the result, which overlaps the slot's next task)
                info, metrics = e["Task Info"], e.get("Task Metrics") or {}
                starts.append(info["Launch Time"])
                busy = metrics.get("Executor Deserialize Time", 0) + metrics.get("Executor Run Time", 0)
                ends.append(info["Launch Time"] + busy if metrics else info["Finish Time"])
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    return {"app_id": app_id, "executors": len(executors), "cores_per_executor": sorted(set(executors.values())),
            "total_cores": sum(executors.values()), "tasks": len(starts), "max_concurrent_tasks": peak,
            "failed_task_attempts": failures, "executors_removed": removed}


class WorkerRss:
    """Peak RSS of the PySpark worker processes under one process (the YARN cluster's), every 0.5 s."""

    def __init__(self, root_pid: int) -> None:
        """Prepare (not start) the sampler."""
        self.root_pid = root_pid
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            try:
                kids = psutil.Process(self.root_pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for p in kids:
                try:
                    cmd = " ".join(p.cmdline())
                    if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                        self.peak[p.pid] = max(self.peak.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass

    def __enter__(self) -> "WorkerRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _pyspark_home() -> str:
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def _test_jvm_options() -> dict[str, str]:
    """The containers' JVM options when the tests set them (tests/conftest.py): Spark's administrator defaults,
    which EMR's and the user's extraJavaOptions add to rather than replace."""
    opts = os.environ.get(TEST_JVM_OPTIONS_VAR)
    if not opts:
        return {}
    return {"spark.driver.defaultJavaOptions": opts, "spark.executor.defaultJavaOptions": opts,
            "spark.yarn.am.extraJavaOptions": opts}


def submit(cluster: YarnCluster, props: dict[str, str], workdir: str, name: str, script: str, args: list[str],
           s3_env: dict[str, str], dist: pathlib.Path, deploy_mode: str = "client",
           node: Optional[NodeEnv] = None) -> dict:
    """One ``spark-submit --master yarn --deploy-mode <mode>`` with these properties; its figures.

    ``node``: run spark-submit, the driver and the executors in this node environment
    (testkit.nodeenv) instead of this interpreter's.
    """
    python = node.python if node else sys.executable
    events = os.path.join(workdir, "events", name)
    os.makedirs(events, exist_ok=True)
    props = {**props,
             # what this machine has instead of EMR's: the interpreter, Spark's jars, S3 endpoint and credentials
             "spark.pyspark.python": python, "spark.pyspark.driver.python": python,
             "spark.yarn.jars": "local:" + os.path.join(node.pyspark_home if node else _pyspark_home(), "jars", "*"),
             "spark.eventLog.enabled": "true", "spark.eventLog.dir": "file://" + events,
             "spark.eventLog.compress": "false",  # Spark 4 compresses with zstd, which Python 3.11 cannot read
             **{f"spark.executorEnv.{k}": v for k, v in s3_env.items()},
             **{f"spark.yarn.appMasterEnv.{k}": v for k, v in s3_env.items()},
             **_test_jvm_options()}
    prop_file = os.path.join(workdir, f"{name}.conf")
    with open(prop_file, "w") as f:
        f.writelines(f"{k} {v}\n" for k, v in props.items())
    cmd = [node.spark_submit if node else venv_bin("spark-submit"), "--master", "yarn", "--deploy-mode", deploy_mode,
           "--properties-file", prop_file, "--py-files", str(dist / "shardinfer.zip"), str(dist / script), *args]
    env = cluster.env({**os.environ, **s3_env, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": python,
                       "PYSPARK_DRIVER_PYTHON": python})
    env.pop("PYTHONPATH", None)  # the code comes from --py-files, as on a cluster
    if node:
        env.pop("SPARK_HOME", None)  # the node's own Spark, not the one this process may have started
    t = time.time()
    with WorkerRss(cluster.proc.pid) as rss:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - t
    with open(os.path.join(workdir, f"{name}.log"), "w") as f:
        f.write(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    logs = [os.path.join(events, n) for n in os.listdir(events)]
    figures = event_log_figures(logs[0]) if len(logs) == 1 else {"event_logs": len(logs)}
    warned = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ": warning: dynamic allocation is off" in ln]
    status = re.findall(r"User application exited with status (\d+)", proc.stderr)
    return {"name": name, "deploy_mode": deploy_mode, "rc": proc.returncode, "wall_s": round(wall, 1), **figures,
            "driver_exit_status_reported": int(status[0]) if status else None,
            "driver_stdout_in_containers": _driver_lines(workdir, proc.stderr) if deploy_mode == "cluster" else None,
            "executor_settings": {k: props[k] for k in sorted(props) if k.startswith(("spark.dynamicAllocation.enabled",
                                                                                      "spark.executor.cores",
                                                                                      "spark.executor.memory",
                                                                                      "spark.executor.instances"))},
            "python_worker_peak_rss_mb": round(max(rss.peak.values(), default=0) / 2**20),
            "python_workers_seen": len(rss.peak), "layout_warning": warned[0] if warned else None,
            "log": os.path.join(workdir, f"{name}.log")}


def _driver_lines(workdir: str, stderr: str) -> dict[str, str]:
    """In cluster mode: the driver's own lines, per application-master container (YARN's container logs)."""
    app = re.search(r"(application_\d+_\d+)", stderr)
    out = {}
    if app:
        suffix = app.group(1)[len("application_"):]
        for root, _, files in os.walk(workdir):
            name = os.path.basename(root)
            if "stdout" in files and name.startswith(f"container_{suffix}_") and name.endswith("_000001"):
                with open(os.path.join(root, "stdout"), errors="replace") as f:
                    out[name] = f.read().strip()
    return out


def run(workdir: str, images: int = 1024, nodes: int = 2, node_memory_mb: int = 16384, node_vcores: int = 5,
        memory_only_scheduler: bool = False, infer_extra: tuple[str, ...] = ()) -> dict:
    """Start S3 + YARN, run prepare, infer (trap) and infer (fix); the figures.

    The nodes have more memory than vcores for 4-core executors of 5 GiB (16 GiB, 5 vcores,
    like an m-family instance): a YARN that places containers by memory alone (YARN's and
    EMR's default calculator) would run 3 such executors per node, 12 tasks on 5 vcores.
    configurations.json's capacity-scheduler classification (the dominant-resource
    calculator) is given to this cluster as EMR would, so executors stop at the vcores.
    ``infer_extra``: more infer flags.
    """
    scheduler = {} if memory_only_scheduler else emr_classification("capacity-scheduler")
    os.makedirs(workdir, exist_ok=True)
    dist = pathlib.Path(workdir) / "dist"
    make_dist(dist)
    with LocalS3() as s3:
        s3.create_bucket(BUCKET)
        upload_cifar_like(f"s3://{BUCKET}/images/", images, endpoint_url=s3.endpoint_url)
        model = zoo_builder.write_model(f"s3://{BUCKET}/models/resnet-18/", endpoint_url=s3.endpoint_url)
        with YarnCluster(workdir, nodes=nodes, memory_mb=node_memory_mb, vcores=node_vcores,
                         extra_conf=scheduler) as cluster:
            prepare = submit(cluster, read_properties(str(ROOT / "spark-defaults.conf")), workdir, "prepare",
                             "prepare/main.py", ["--input", f"s3://{BUCKET}/images/", "--output",
                                                 f"s3://{BUCKET}/shards/"], s3.env, dist)
            runs = [prepare, *trap_and_fix(cluster, workdir, dist, s3.env, f"s3://{BUCKET}/shards/manifest.parquet",
                                           model, f"s3://{BUCKET}/predictions/", infer_extra=infer_extra)]
        return figures_of(cluster, runs, images, nodes, node_vcores, scheduler)


def trap_and_fix(cluster: YarnCluster, workdir: str, dist: pathlib.Path, s3_env: dict[str, str], manifest: str,
                 model: dict[str, str], output: str, node: Optional[NodeEnv] = None,
                 infer_extra: tuple[str, ...] = ()) -> list[dict]:
    """Over a prepared manifest: infer with the trap's settings (run_id yarn-trap), with configurations.json's
    (yarn-emr), and in cluster mode over a manifest that does not exist; each run's figures, with the images
    and failed shards of its summary.  ``node``: driver and executors in that node environment."""
    emr_defaults = emr_classification("spark-defaults")
    args = ["--manifest", manifest, "--sym-url", model["sym"], "--param-url", model["params"],
            "--label-url", model["labels"], "--output", output, "--shards-per-task", "1", *infer_extra]
    trap = {**read_properties(str(ROOT / "spark-defaults.conf")), "spark.dynamicAllocation.enabled": "false"}
    runs = [submit(cluster, trap, workdir, "infer-trap", "infer/main.py", args + ["--run-id", "yarn-trap"], s3_env,
                   dist, node=node),
            submit(cluster, emr_defaults, workdir, "infer-emr-configurations", "infer/main.py",
                   args + ["--run-id", "yarn-emr"], s3_env, dist, node=node),
            # cluster mode, bad input: where the driver's line lands, what the step's exit code is, one attempt
            submit(cluster, emr_defaults, workdir, "infer-cluster-mode-bad-input", "infer/main.py",
                   ["--manifest", manifest.rsplit("/", 1)[0] + "/no-such/manifest.parquet", *args[2:]], s3_env,
                   dist, deploy_mode="cluster", node=node)]
    for r, run_id in zip(runs, ("yarn-trap", "yarn-emr")):
        summary = json.loads(storage.read_bytes(f"{output}_runs/{run_id}/summary.json", s3_env["AWS_ENDPOINT_URL"]))
        r["images"], r["shards_failed"] = summary.get("images_written"), summary.get("shards_failed")
        r["model_loads"] = summary.get("model_loads")
        r["images_per_s"] = summary.get("images_per_s")
    return runs


def figures_of(cluster: YarnCluster, runs: list[dict], images: int, nodes: int, node_vcores: int,
               scheduler: dict[str, str]) -> dict:
    """The figures of a check: the cluster as its nodes report it, the runs, and the executor cores
    configurations.json's spark-defaults should reach on it (one task per shard)."""
    capabilities = cluster.node_capabilities()
    cores = int(emr_classification("spark-defaults")["spark.executor.cores"])
    shards = -(-images // 64)
    fit = min(executors_that_fit(nodes, node_vcores, cores), -(-shards // cores))
    return {"cluster": {"nodes": len(capabilities), "node_memory_mb": capabilities[0][0] if capabilities else None,
                        "node_vcores": capabilities[0][1] if capabilities else None, "hadoop": "3.4.1 (MiniYARNCluster)",
                        **scheduler},
            "images": images, "expected_executor_cores_with_emr_configurations": fit * cores, "runs": runs}


def problems(figures: dict) -> list[str]:
    """What is wrong with a yarn-check's figures (empty when the trap and the fix show as they should)."""
    out = []
    runs = {r["name"]: r for r in figures["runs"]}
    for r in runs.values():
        if r["rc"] != 0 and r["deploy_mode"] == "client":
            out.append(f"{r['name']} exited {r['rc']} (log: {r['log']})")
    trap, fix = runs.get("infer-trap", {}), runs.get("infer-emr-configurations", {})
    if trap.get("executors") != 2 or trap.get("total_cores") != 2:
        out.append(f"trap: expected 2 executors of 1 core, got {trap.get('executors')} / {trap.get('total_cores')}")
    if not trap.get("layout_warning"):
        out.append("trap: infer did not warn about the 2-executor layout")
    expected = figures["expected_executor_cores_with_emr_configurations"]
    if fix.get("total_cores") != expected:
        out.append(f"fix: {fix.get('total_cores')} executor cores; the cluster's vcores fit {expected}")
    if fix.get("layout_warning"):
        out.append("fix: infer warned although dynamic allocation is on")
    bad = runs.get("infer-cluster-mode-bad-input", {})
    lines = list((bad.get("driver_stdout_in_containers") or {}).values())
    if bad.get("rc") != 1 or bad.get("driver_exit_status_reported") != 2:
        out.append(f"cluster mode, bad input: spark-submit exited {bad.get('rc')}, driver status "
                   f"{bad.get('driver_exit_status_reported')} (expected 1 and 2)")
    if len(lines) != 1 or "infer: error: s3://" not in lines[0]:
        out.append(f"cluster mode, bad input: expected the driver's one-line error in one AM container, got {lines}")
    for r in (trap, fix):
        if r and (r.get("shards_failed") or r.get("images") != figures["images"]):
            out.append(f"{r['name']}: {r.get('images')} images, failed shards {r.get('shards_failed')}")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """Command line of ``make yarn-check``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--workdir", default=None, help="kept for inspection (default: a temporary folder)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--memory-only-scheduler", action="store_true",
                   help="leave out configurations.json's capacity-scheduler (YARN's default calculator): shows "
                        "executors placed by memory alone, more task slots than vcores (the check then fails)")
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="shardinfer-yarn-")
    # this program's own clients of the local S3 server sign with its fake credentials (the endpoint is passed)
    for k, v in DEMO_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    figures = run(workdir, images=args.images, memory_only_scheduler=args.memory_only_scheduler)
    print(f"YARN test cluster: {figures['cluster']}")
    print(f"{'run':<30} {'rc':>3} {'executors':>9} {'cores':>5} {'max tasks':>9} {'wall s':>7} {'img/s':>6} "
          f"{'worker RSS MB':>13}")
    for r in figures["runs"]:
        print(f"{r['name']:<30} {r['rc']:>3} {r.get('executors', '?'):>9} {r.get('total_cores', '?'):>5} "
              f"{r.get('max_concurrent_tasks', '?'):>9} {r['wall_s']:>7} {str(r.get('images_per_s', '')):>6} "
              f"{r['python_worker_peak_rss_mb']:>13}")
        if r.get("layout_warning"):
            print(f"    {r['layout_warning']}")
        for container, text in (r.get("driver_stdout_in_containers") or {}).items():
            print(f"    driver (YARN container {container}) stdout: {text}")
        if r.get("driver_exit_status_reported") is not None:
            print(f"    spark-submit exited {r['rc']}; YARN's diagnostics: user application exited with status "
                  f"{r['driver_exit_status_reported']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)
    bad = problems(figures)
    for b in bad:
        print(f"yarn-check: FAILED: {b}", file=sys.stderr)
    print(f"logs and event logs: {workdir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
