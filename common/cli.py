"""What every command line shares: common flags, one-line errors and the way a job ends.

Spark start-up and the submit's settings are in :mod:`common.spark`; the error classes in
:mod:`common.errors` (so a command that never starts Spark or MXNet does not import them).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

from common.errors import USER_ERRORS, UsageError  # noqa: F401 - UsageError: the jobs raise it from here


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
