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
from typing import Any, Callable, NoReturn, Optional, Sequence

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


def endpoint_from(args: argparse.Namespace) -> Optional[str]:
    """The endpoint executors must use: the flag, else ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return args.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


# The exit codes, for every command (README "Exit codes").
DONE = 0
NOT_DONE = 1  # the job ran and part of it is not done: failed shards, the junk guard, a failure after a write
BAD_INPUT = 2  # bad arguments or inputs, one line naming the input, and nothing written


class Writes:
    """What a command has begun to write, so that its exit code tells the truth.

    A command calls :meth:`begin` just before each kind of write (and never before a check that can still
    refuse its input): a user error before the first ``begin`` is exit 2, "nothing written"; any failure
    after it is exit 1, with a line saying what may have been written and how to finish.
    """

    def __init__(self) -> None:
        self.what: list[str] = []
        self.finish = ""

    def begin(self, what: str, finish: str) -> None:
        """From here on ``what`` may be written; ``finish`` says how to complete the work if a later step fails."""
        if what not in self.what:
            self.what.append(what)
        self.finish = finish

    @property
    def started(self) -> bool:
        """Whether anything may have been written."""
        return bool(self.what)

    def report(self, prog: str) -> int:
        """After a failure: print what may be written and how to finish; the exit code."""
        if not self.started:
            return BAD_INPUT
        print(f"{prog}: written before the failure: {'; '.join(self.what)}; to finish: {self.finish}",
              file=sys.stderr, flush=True)
        return NOT_DONE


def run_cli(prog: str, body: Callable[[Any, Writes], int], parser: argparse.ArgumentParser,
            argv: Optional[Sequence[str]], settings: Optional[Callable[[argparse.Namespace], Any]] = None) -> int:
    """Parse ``argv`` and run ``body(args, writes)``; a failure becomes one line and an honest exit code.

    With ``settings`` (a job's ``Config.from_args``), ``body`` gets the job's settings object built from the
    parsed flags instead of them; its checks raise user errors before anything is written (exit 2).

    A user error (:data:`common.errors.USER_ERRORS`) is ``prog: error: …``: exit 2 when nothing was written
    yet, else exit 1 with what was written and how to finish (:class:`Writes`).  A Spark job that failed as a
    whole is exit 1.  Anything else is a bug: ``prog: internal error: …`` with where its traceback went
    (a file, or printed with ``--verbose``), exit 1 — never 2.
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{prog}: %(levelname)s %(message)s")
    writes = Writes()
    try:
        return body(settings(args) if settings else args, writes)
    except USER_ERRORS as e:
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr, flush=True)
        return writes.report(prog)
    except Exception as e:  # noqa: BLE001 - every other failure is reported, not a traceback on the console
        if type(e).__name__ == "Py4JJavaError":  # a Spark job that failed as a whole
            if args.verbose:
                traceback.print_exc()
            print(f"{prog}: error: Spark job failed: {python_cause(str(e))}", file=sys.stderr, flush=True)
        else:
            print(f"{prog}: internal error: {type(e).__name__}: {first_line(e)} ({_keep_traceback(prog, args.verbose)})",
                  file=sys.stderr, flush=True)
        writes.report(prog)
        return NOT_DONE


def _keep_traceback(prog: str, verbose: bool) -> str:
    """Print the current exception's traceback (``--verbose``) or keep it in a file; says where it went."""
    if verbose:
        traceback.print_exc()
        return "traceback above"
    import tempfile
    import time

    text = traceback.format_exc()
    try:
        fd, path = tempfile.mkstemp(prefix=f"shardinfer-{prog.split()[-1].replace('.', '-')}-"
                                    f"{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".traceback.txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return f"a bug: traceback in {path}, or rerun with --verbose"
    except OSError:
        traceback.print_exc()
        return "a bug: traceback above"


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
