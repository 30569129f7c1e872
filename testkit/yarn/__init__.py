"""Hadoop's own YARN test cluster on 127.0.0.1, for running the jobs with ``--master yarn``.

``MiniYARNCluster`` (Maven artifact ``org.apache.hadoop:hadoop-minicluster``, pinned in
``testkit/yarn/pom.xml``) started through ``org.apache.hadoop.mapreduce.MiniHadoopClusterManager``:
a ResourceManager and N NodeManagers in one JVM, local file system instead of HDFS (Spark's
staging directory is then a local folder every NodeManager here can read).  ``fetch_jars``
runs Maven once (``mvn dependency:copy-dependencies``, ~105 MB into
``testkit/yarn/target/dependency``); ``YarnCluster`` starts and stops the cluster and writes
the ``HADOOP_CONF_DIR`` a ``spark-submit --master yarn`` needs.

The NodeManagers are set up the way EMR sets its own: the virtual-memory check off (MXNet's
Python workers reserve far more address space than they use), the physical-memory check on
(a container over its memory is killed, as on EMR), memory and vcores per node given here.

Tooling for tests and ``make yarn-check`` only; the jobs never import it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from typing import Optional

from testkit.localdev import free_port
from testkit.server import ServerProcess, maven_copy_dependencies

HERE = os.path.dirname(os.path.abspath(__file__))
# The environment variable tests/conftest.py sets to the short-lived test JVMs' options (C1, serial GC): the
# cluster's own JVMs and each application's containers get them.
TEST_JVM_OPTIONS_VAR = "SHARDINFER_TEST_JVM_OPTIONS"
JARS = os.path.join(HERE, "target", "dependency")

# Hadoop 3.4 on Java 17 reflects into java.base (Guice's cglib, Jersey).
_OPENS = [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in
          ("java.lang", "java.lang.reflect", "java.util", "java.util.concurrent", "java.io", "java.net",
           "java.nio", "sun.nio.ch")]


class YarnUnavailable(RuntimeError):
    """Java or Maven is missing, or the Hadoop jars could not be fetched."""


def fetch_jars(quiet: bool = True) -> str:
    """The Hadoop minicluster's jars (Maven, once; a no-op when present). Returns their folder."""
    if os.path.isdir(JARS) and any(n.startswith("hadoop-minicluster-") for n in os.listdir(JARS)):
        return JARS
    maven_copy_dependencies(os.path.join(HERE, "pom.xml"), "Hadoop's test cluster", YarnUnavailable,
                            "-DincludeScope=runtime", quiet=quiet)
    return JARS


_SITE = """<?xml version="1.0"?>
<configuration>
{}
</configuration>
"""


def _site(props: dict[str, str]) -> str:
    return _SITE.format("\n".join(f"  <property><name>{k}</name><value>{v}</value></property>"
                                  for k, v in props.items()))


class YarnCluster(ServerProcess):
    """ResourceManager + ``nodes`` NodeManagers of ``memory_mb`` / ``vcores`` each; a context manager.

    ``conf_dir`` is the ``HADOOP_CONF_DIR`` for clients; ``env`` adds it to an environment.
    """

    def __init__(self, workdir: str, nodes: int = 2, memory_mb: int = 8192, vcores: int = 4,
                 start_timeout: float = 180, extra_conf: Optional[dict[str, str]] = None):
        """Configure (not start); every port is picked free on 127.0.0.1.

        ``extra_conf``: more server settings, e.g. the capacity scheduler's resource calculator.
        """
        self.workdir = os.path.abspath(workdir)
        self.nodes, self.memory_mb, self.vcores, self.start_timeout = nodes, memory_mb, vcores, start_timeout
        self.rm_port = free_port()
        self.conf_dir = os.path.join(self.workdir, "hadoop-conf")
        self.log_path = os.path.join(self.workdir, "yarn-cluster.log")
        self.proc: Optional[subprocess.Popen] = None
        rm = "127.0.0.1"
        self.server_conf = {
            "yarn.resourcemanager.hostname": rm,
            "yarn.resourcemanager.scheduler.address": f"{rm}:{free_port()}",
            "yarn.resourcemanager.resource-tracker.address": f"{rm}:{free_port()}",
            "yarn.resourcemanager.admin.address": f"{rm}:{free_port()}",
            "yarn.resourcemanager.webapp.address": f"{rm}:{free_port()}",
            "mapreduce.jobhistory.webapp.address": f"{rm}:{free_port()}",
            "mapreduce.jobhistory.admin.address": f"{rm}:{free_port()}",
            "yarn.nodemanager.resource.memory-mb": str(memory_mb),
            "yarn.minicluster.yarn.nodemanager.resource.memory-mb": str(memory_mb),
            "yarn.nodemanager.resource.cpu-vcores": str(vcores),
            "yarn.scheduler.maximum-allocation-mb": str(memory_mb),
            "yarn.scheduler.maximum-allocation-vcores": str(vcores),
            "yarn.nodemanager.vmem-check-enabled": "false",
            "yarn.nodemanager.pmem-check-enabled": "true",
            **(extra_conf or {}),
        }

    def start(self) -> "YarnCluster":
        """Start the cluster and wait until the ResourceManager answers and every node registered."""
        jars = fetch_jars()
        if shutil.which("java") is None:
            raise YarnUnavailable("java is needed for Hadoop's test cluster (scripts/check_java.sh says which)")
        os.makedirs(self.conf_dir, exist_ok=True)
        jvm = os.environ.get(TEST_JVM_OPTIONS_VAR, "").split()
        args = ["java", "-Xmx1g", *jvm, *_OPENS, "-cp", os.path.join(jars, "*"),
                "org.apache.hadoop.mapreduce.MiniHadoopClusterManager", "-nodfs",
                "-nodemanagers", str(self.nodes), "-rmport", str(self.rm_port), "-jhsport", str(free_port())]
        for k, v in self.server_conf.items():
            args += ["-D", f"{k}={v}"]
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE, start_new_session=True)
        self._write_client_conf()
        self._wait_started()
        return self

    def _write_client_conf(self) -> None:
        client = {"yarn.resourcemanager.address": f"127.0.0.1:{self.rm_port}",
                  **{k: v for k, v in self.server_conf.items() if k.startswith("yarn.resourcemanager.")}}
        with open(os.path.join(self.conf_dir, "yarn-site.xml"), "w") as f:
            f.write(_site(client))
        with open(os.path.join(self.conf_dir, "core-site.xml"), "w") as f:
            f.write(_site({"fs.defaultFS": "file:///"}))

    def _wait_started(self) -> None:
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise YarnUnavailable(f"the YARN test cluster exited with {self.proc.returncode}; "
                                      f"its log: {self.log_path}\n{self.log_tail()}")
            log = self._log()
            if "Started MiniMRCluster" in log and len(self.node_capabilities(log)) >= self.nodes:
                return
            time.sleep(0.5)
        self.stop()
        raise YarnUnavailable(f"the YARN test cluster did not start in {self.start_timeout:.0f}s; "
                              f"its log: {self.log_path}\n{self.log_tail()}")

    def node_capabilities(self, log: Optional[str] = None) -> list[tuple[int, int]]:
        """(memory MB, vcores) of each NodeManager that registered with the ResourceManager (from its log)."""
        return [(int(m), int(v)) for m, v in
                re.findall(r"registered with capability: <memory:(\d+), vCores:(\d+)>", log or self._log())]

    def env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        """``base`` (or a copy of os.environ) with HADOOP_CONF_DIR/YARN_CONF_DIR pointing at this cluster."""
        env = dict(os.environ if base is None else base)
        env.update(HADOOP_CONF_DIR=self.conf_dir, YARN_CONF_DIR=self.conf_dir)
        return env
