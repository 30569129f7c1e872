"""What both jobs' command lines share: common flags, Spark start-up, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

from common.images import BadImageError
from common.manifest import ManifestError
from common.model import ModelError
from common.shard import ShardFormatError
from common.storage import StorageError

# Errors the user can act on: printed as one line naming the input, no traceback.
USER_ERRORS = (StorageError, ManifestError, ModelError, ShardFormatError, BadImageError, ValueError)


class UsageError(ValueError):
    """A bad combination of arguments, found before Spark starts."""


def add_common_arguments(p: argparse.ArgumentParser, sse: bool = True) -> None:
    """``--s3-endpoint-url``, ``--verbose`` and (for steps that write) ``--sse``, ``--sse-kms-key-id``."""
    if sse:
        p.add_argument("--sse", choices=("AES256", "aws:kms"), default=None,
                       help="server-side encryption for every object this step writes (default: none asked for; "
                       "the bucket's default encryption applies)")
        p.add_argument("--sse-kms-key-id", default=None,
                       help="with --sse aws:kms: the KMS key (id, ARN or alias); default: the account's aws/s3 key")
    p.add_argument(
        "--s3-endpoint-url",
        default=None,
        help="S3-compatible endpoint (default: the AWS_ENDPOINT_URL variable, else AWS). "
        "Credentials always come from boto3's default chain, never from the command line.",
    )
    p.add_argument("--verbose", action="store_true", help="show Python tracebacks and INFO logs")


def encryption_from(args: argparse.Namespace):
    """The :class:`common.storage.Encryption` of the flags, now in force for this process's writes.

    Raises:
        UsageError: ``--sse-kms-key-id`` without ``--sse aws:kms``.
    """
    from common import storage

    try:
        enc = storage.Encryption(getattr(args, "sse", None), getattr(args, "sse_kms_key_id", None))
    except ValueError as e:
        raise UsageError(str(e)) from e
    storage.use_encryption(enc)
    return enc


def endpoint_from(args: argparse.Namespace) -> Optional[str]:
    """The endpoint executors must use: the flag, else ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return args.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def spark_context(app_name: str):
    """The SparkContext of ``spark-submit`` (or an existing one); ``local[*]`` when none is configured."""
    from pyspark import SparkConf, SparkContext

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
    return sc


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


def run_cli(prog: str, body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Optional[Sequence[str]]) -> int:
    """Parse ``argv``, run ``body``, and turn known errors into ``prog: error: …`` and exit code 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{prog}: %(levelname)s %(message)s")
    try:
        return body(args)
    except USER_ERRORS as e:
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a Spark job that failed as a whole
        if type(e).__name__ != "Py4JJavaError":
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: Spark job failed: {python_cause(str(e))}", file=sys.stderr)
        return 1


def exit_process(code: int) -> NoReturn:
    """End a job's process with ``code`` once its work is done, without the interpreter's teardown of
    native libraries.

    pyarrow's C++ thread pools sometimes abort that teardown (``terminate called without an active
    exception``, exit 134) after the job succeeded — apache/arrow#34314; here one run in three of a
    plain ``pq.read_table`` script on a loaded machine — and a step runner (EMR) then marks a
    finished job FAILED.  So: stop Spark, flush the logs and streams, and leave with ``os._exit``,
    as Spark's own Python workers do.
    """
    try:
        if "pyspark" in sys.modules:
            from pyspark import SparkContext

            if SparkContext._active_spark_context is not None:
                SparkContext._active_spark_context.stop()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def python_cause(java_message: str) -> str:
    """The cause inside a Spark failure's pages of stack trace: the Python exception if any, else the Java one."""
    lines = [ln.strip().removeprefix(": ") for ln in java_message.splitlines()]
    causes = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.$]*(Error|Exception)\b[^ ]*: ", ln)
              and not ln.startswith(("py4j", "Caused by", "org.apache.spark.SparkException", "Traceback"))]
    python = [ln for ln in causes if not ln.startswith(("java.", "org.", "scala."))]
    if python:
        return python[-1]
    return causes[0] if causes else (lines[0] if lines else "unknown error")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (Java and MXNet errors run to pages)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
