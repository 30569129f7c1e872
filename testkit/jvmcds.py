"""A class-data-sharing archive of Spark's driver classes, for the test suite's spark-submit JVMs.

Every ``spark-submit`` the tests start (and the session's own Spark) loads and verifies the same few thousand
classes from Spark's jars before it runs anything: a few CPU-seconds each, dozens of times a line.  The JVM's
dynamic CDS (JDK 13+) keeps those classes, already parsed and verified, in one memory-mapped file: a trivial job
run once with ``-XX:ArchiveClassesAtExit`` writes it, and every later driver JVM maps it
(``-XX:SharedArchiveFile``).  Measured here (2-core AMD EPYC, JDK 17): a trivial local job's spark-submit 8-9 ->
6 CPU-s.  A JVM whose classpath or build does not match the archive runs as it would without it (the JVM's
warning about that is switched off, so no test sees it in a job's output).

Tests only, through ``SPARK_SUBMIT_OPTS`` (tests/conftest.py): the jobs' own settings are untouched.
``python -m testkit.jvmcds`` builds the archive of this interpreter's pyspark and ``java`` (``make test`` does,
once per environment, before the lines start); it is kept beside the environment and rebuilt when either changes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

_JOB = """
from pyspark import SparkContext
sc = SparkContext("local[2]", "shardinfer-cds")
assert sc.parallelize(range(64), 2).mapPartitions(lambda it: [sum(it)]).collect()
sc.stop()
"""


def _java_version() -> str:
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=True).stderr
    m = re.search(r'version "([^"]+)"', out)
    return m.group(1) if m else "unknown"


def archive_path() -> str:
    """Where this environment's archive lives: named by pyspark's and Java's versions."""
    import pyspark

    return os.path.join(sys.prefix, f"spark-{pyspark.__version__}-java-{_java_version()}.jsa")


def options() -> Optional[str]:
    """The JVM options that map the archive, or None when it has not been built."""
    path = archive_path()
    if not os.path.exists(path):
        return None
    return f"-XX:SharedArchiveFile={path} -Xlog:cds=off -Xlog:cds+dynamic=off"


def build() -> str:
    """Build the archive unless it exists (written to a temporary name, then renamed).  Returns its path."""
    path = archive_path()
    if os.path.exists(path):
        return path
    tmp = f"{path}.{os.getpid()}.tmp"  # the JVM writes it at exit
    with tempfile.NamedTemporaryFile("w", suffix=".py") as job:
        job.write(_JOB)
        job.flush()
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                   SPARK_LOCAL_IP="127.0.0.1", SPARK_SUBMIT_OPTS=f"-XX:ArchiveClassesAtExit={tmp}")
        bin_dir = os.path.dirname(sys.executable)
        subprocess.run([os.path.join(bin_dir, "spark-submit"), job.name], env=env, check=True, capture_output=True)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(f"spark driver class archive: {build()}")
