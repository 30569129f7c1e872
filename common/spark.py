"""Spark start-up and what a job reads back from its submit: the SparkContext of ``spark-submit``,
the YARN executor-layout warning, the event log folder, properties files, the options that
reproduce a submit (for rerun commands) and how many times Spark tries a task."""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from typing import Optional


def spark_context(app_name: str):
    """The SparkContext of ``spark-submit`` (or an existing one); ``local[*]`` when none is configured.
    ``sc.shardinfer_started`` says whether this call started it (then :func:`stop_in_background` may stop it)."""
    from pyspark import SparkConf, SparkContext

    existing = SparkContext._active_spark_context is not None

    SparkContext._ensure_initialized()  # start the JVM first: only then does SparkConf see spark-submit's settings
    conf = SparkConf().setAppName(app_name)
    if not conf.contains("spark.master"):
        conf.setMaster("local[*]")
    ensure_event_log_dir(conf)
    warning = executor_layout_warning(dict(conf.getAll()))
    if warning:
        print(f"{app_name.split('-')[1] if '-' in app_name else app_name}: warning: {warning}", file=sys.stderr,
              flush=True)
    sc = SparkContext.getOrCreate(conf)
    sc.setLogLevel(os.environ.get("SHARDINFER_SPARK_LOG_LEVEL", "WARN"))
    setattr(sc, "shardinfer_started", not existing)  # an attribute of our own on Spark's object (not in its stubs)
    return sc


def stop_in_background(sc) -> Optional[threading.Thread]:
    """After a job's last Spark call: stop the SparkContext this job started on a thread of its own (the JVM's
    shutdown of its scheduler, block manager and event log then overlaps the job's report), or None for a
    context someone else started (a test's, a notebook's), which stays up.  Join the thread before exiting."""
    if not getattr(sc, "shardinfer_started", False):
        return None
    t = threading.Thread(target=sc.stop, name="shardinfer-spark-stop", daemon=True)
    t.start()
    return t


def import_in_background(*modules: str) -> None:
    """Start importing ``modules``, in order, on a daemon thread of this process (an executor's Python worker,
    which Spark reuses for the job's next tasks), skipping those imported already.  A failure is left to the
    task that needs the module, which raises it properly."""
    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return

    def run() -> None:
        for module in todo:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - the task that imports it reports it
                pass

    threading.Thread(target=run, name=f"shardinfer-import-{todo[0]}", daemon=True).start()


def executor_layout_warning(conf: dict[str, str]) -> Optional[str]:
    """Why this submit will run on far fewer cores than the cluster has, or None.

    On YARN, a job with dynamic allocation off and no ``spark.executor.instances``
    (``--num-executors``) gets 2 executors of ``spark.executor.cores`` (default 1), whatever the
    cluster's size, and nothing else says so.
    """
    master = conf.get("spark.master", "")
    if not master.startswith("yarn"):
        return None
    if conf.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true":
        return None
    if conf.get("spark.executor.instances"):
        return None
    cores = int(conf.get("spark.executor.cores", "1") or 1)
    return (f"dynamic allocation is off and spark.executor.instances is not set: YARN runs this job on 2 "
            f"executors of {cores} core{'s' if cores != 1 else ''} ({2 * cores} tasks at a time), however big the "
            f"cluster is. Turn spark.dynamicAllocation.enabled on (spark-defaults.conf and "
            f"deploy/emr/configurations.json do) or pass --num-executors")


def ensure_event_log_dir(conf) -> None:
    """Create a local ``spark.eventLog.dir`` (Spark refuses to start when it is missing)."""
    if conf.get("spark.eventLog.enabled", "false").lower() != "true":
        return
    target = conf.get("spark.eventLog.dir", "/tmp/spark-events")
    if target.startswith("file:"):
        target = target[len("file:"):]
        target = "/" + target.lstrip("/")
    if "://" not in target:
        os.makedirs(target, exist_ok=True)


# Settings Spark or spark-submit make up for each application: never part of a rerun command.
_RUNTIME_CONF = ("spark.app.", "spark.driver.host", "spark.driver.port", "spark.executor.id",
                 "spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions", "spark.hadoop.fs.s3a.vectored.",
                 "spark.rdd.compress", "spark.serializer.objectStreamReset", "spark.sql.artifact.isolation.enabled",
                 "spark.submit.", "spark.master", "spark.yarn.dist.", "spark.yarn.app.", "spark.yarn.secondary.",
                 "spark.yarn.isPython", "spark.files", "spark.jars", "spark.repl.", "spark.ui.proxy",
                 "spark.org.apache.hadoop.yarn.", "spark.driver.appUIAddress", "spark.yarn.tags")


def read_properties(path: str) -> dict[str, str]:
    """``key value`` lines of a Spark properties file (comments and blanks skipped); empty if it is missing."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*([^\s=:#!][^\s=:]*)\s*[=:\s]\s*(.*?)\s*$", line)
                if m:
                    out[m.group(1)] = m.group(2)
    except OSError:
        pass
    return out


def submit_options(sc, properties_file: str) -> list[str]:
    """The spark-submit options that reproduce this application's submit: ``--master``, ``--deploy-mode``,
    ``--py-files``, ``--properties-file`` (when that file exists) and a ``--conf`` for every setting the
    file does not already give (as the running SparkConf has it)."""
    conf = dict(sc.getConf().getAll())
    props = read_properties(properties_file)
    opts = ["--master", conf.get("spark.master", "local[*]")]
    if conf.get("spark.submit.deployMode", "client") != "client":
        opts += ["--deploy-mode", conf["spark.submit.deployMode"]]
    if conf.get("spark.submit.pyFiles"):
        opts += ["--py-files", conf["spark.submit.pyFiles"]]
    if props:
        opts += ["--properties-file", properties_file]
    for key in sorted(conf):
        if key.startswith(_RUNTIME_CONF) or props.get(key) == conf[key]:
            continue
        opts += ["--conf", f"{key}={conf[key]}"]
    return opts


def task_attempts(sc) -> int:
    """How many times Spark tries a task: ``spark.task.maxFailures``, or F of ``local[N,F]`` (1 in local mode)."""
    master = sc.master
    if master.startswith("local"):
        m = re.match(r"local\[[^,\]]+,\s*(\d+)\]", master)
        return int(m.group(1)) if m else 1
    return int(sc.getConf().get("spark.task.maxFailures", "4"))
