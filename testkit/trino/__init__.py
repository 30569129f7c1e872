"""Trino (Athena engine v3's engine) on 127.0.0.1, reading the Glue catalog and S3 of the local moto server.

The server is Trino 476 (``io.trino:trino-server-core``, the Hive connector ``io.trino:trino-hive`` and the
Iceberg connector ``io.trino:trino-iceberg``, pinned in ``testkit/trino/pom.xml``): ``fetch`` runs Maven once
(~0.8 GB into ``testkit/trino/target``) and unpacks them into ``target/trino-server-476`` with the connectors as
``plugin/hive`` and ``plugin/iceberg``.  Trino 476
needs Java 24 or later, which is not Spark's Java: ``find_java`` looks for one (``TRINO_JAVA_HOME``,
``JAVA_HOME``, ``java`` on PATH, then the usual JDK folders) and says what to install when there is none.

``TrinoServer`` starts one single-node server (coordinator and worker) with two catalogs: ``glue``, the
Hive connector over ``hive.metastore=glue`` at the moto endpoint, S3 through Trino's native file system
at the same endpoint, partition projection on (as Athena has it); and ``iceberg``, the Iceberg connector over
the same Glue catalog and S3 (``iceberg.catalog.type=glue``), for the tables of ``infer --iceberg-table``.  ``query`` runs one statement over
Trino's HTTP protocol (the ``trino`` Python client) and returns its rows.

Tooling for the tests only; the jobs never import it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
import time
import zipfile
from typing import Optional, Sequence

from testkit.localdev import free_port
from testkit.server import ServerProcess, maven_copy_dependencies

VERSION = "476"
JAVA_MAJOR = 24
HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "target")
DOWNLOADS = os.path.join(TARGET, "dependency")
SERVER = os.path.join(TARGET, f"trino-server-{VERSION}")
CATALOG = "glue"
ICEBERG_CATALOG = "iceberg"
PLUGINS = ("hive", "iceberg")
# Where JDKs are installed on Debian/Ubuntu, by SDKMAN, by the Temurin and Corretto packages, and on macOS.
_JDK_GLOBS = ("/usr/lib/jvm/*", "/usr/java/*", "/opt/java/*", "/opt/*jdk*", os.path.expanduser("~/.sdkman/candidates/java/*"),
              os.path.expanduser("~/.jdks/*"), "/Library/Java/JavaVirtualMachines/*/Contents/Home")


class TrinoUnavailable(RuntimeError):
    """No Java 24+, no Maven, or the Trino artifacts could not be fetched."""


def java_major(java: str) -> Optional[int]:
    """The major version of a ``java`` binary, or None when it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """A Java home of version 24 or later (the newest found). Raises TrinoUnavailable naming what to install."""
    homes = [os.environ.get("TRINO_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    on_path = shutil.which("java")
    if on_path:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(on_path))))
    for pattern in _JDK_GLOBS:
        homes += sorted(glob.glob(pattern))
    found = []
    for home in dict.fromkeys(h for h in homes if h):
        java = os.path.join(home, "bin", "java")
        if os.access(java, os.X_OK):
            major = java_major(java)
            if major is not None:
                found.append((major, home))
                if major >= JAVA_MAJOR and home == os.environ.get("TRINO_JAVA_HOME"):
                    return home
    usable = sorted(f for f in found if f[0] >= JAVA_MAJOR)
    if usable:
        return usable[-1][1]
    seen = ", ".join(f"{h} (Java {m})" for m, h in sorted(found)) or "none"
    raise TrinoUnavailable(f"Trino {VERSION} needs Java {JAVA_MAJOR} or later; Java homes found: {seen}. Install one "
                           "(Debian/Ubuntu: the temurin-25-jdk package from Adoptium's apt repository; macOS: "
                           "brew install temurin) or set TRINO_JAVA_HOME to it")


def fetch(quiet: bool = True) -> str:
    """Trino's server with the Hive and Iceberg connectors, unpacked (Maven once; a no-op when present). Returns
    its folder."""
    if all(os.path.isfile(os.path.join(SERVER, "plugin", p, ".complete")) for p in PLUGINS):
        return SERVER
    tarball = os.path.join(DOWNLOADS, f"trino-server-core-{VERSION}.tar.gz")
    plugins = {p: os.path.join(DOWNLOADS, f"trino-{p}-{VERSION}.zip") for p in PLUGINS}
    if not all(os.path.isfile(f) for f in (tarball, *plugins.values())):
        maven_copy_dependencies(os.path.join(HERE, "pom.xml"), f"Trino {VERSION}", TrinoUnavailable,
                                "-DexcludeTransitive=true", quiet=quiet)
    shutil.rmtree(SERVER, ignore_errors=True)
    work = SERVER + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    with tarfile.open(tarball) as tar:
        tar.extractall(work, filter="tar")
    (core,) = glob.glob(os.path.join(work, "trino-server-core-*"))
    for name, plugin in plugins.items():
        with zipfile.ZipFile(plugin) as z:
            z.extractall(work)
        (unpacked,) = glob.glob(os.path.join(work, f"trino-{name}-{VERSION}"))
        os.rename(unpacked, os.path.join(core, "plugin", name))
    for launcher in glob.glob(os.path.join(core, "bin", "*", "launcher")) + [os.path.join(core, "bin", "launcher")]:
        os.chmod(launcher, 0o755)  # zip and tar keep modes, but be sure
    os.rename(core, SERVER)
    shutil.rmtree(work)
    for name in PLUGINS:
        open(os.path.join(SERVER, "plugin", name, ".complete"), "w").close()
    return SERVER


def _properties(path: str, props: dict[str, str]) -> None:
    with open(path, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in props.items()))


_JVM = """-server
-Xmx{heap}
-XX:+UseG1GC
-XX:+ExitOnOutOfMemoryError
-XX:-OmitStackTraceInFastThrow
-XX:ReservedCodeCacheSize=256M
-XX:TieredStopAtLevel=1
-Djdk.attach.allowAttachSelf=true
-Dfile.encoding=UTF-8
-XX:+EnableDynamicAgentLoading
"""


class TrinoServer(ServerProcess):
    """One single-node Trino with the catalog ``glue`` on the S3 + Glue endpoint; a context manager.

    ``heap``: the JVM's -Xmx.  The server is stopped by its process id (its process group).
    """

    def __init__(self, workdir: str, endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1",
                 heap: str = "2G", start_timeout: float = 240):
        """Configure (not start): etc/ and the data folder under ``workdir``, a free port on 127.0.0.1."""
        self.workdir = os.path.abspath(workdir)
        self.endpoint_url, self.access_key, self.secret_key, self.region = endpoint_url, access_key, secret_key, region
        self.heap, self.start_timeout = heap, start_timeout
        self.port = free_port()
        self.etc = os.path.join(self.workdir, "etc")
        self.log_path = os.path.join(self.workdir, "trino.log")
        self.proc: Optional[subprocess.Popen] = None
        self.started_in: Optional[float] = None

    def catalog_properties(self) -> dict[str, str]:
        """The Hive connector over Glue and S3 at the local endpoint (what tests/test_trino.py documents)."""
        return {
            "connector.name": "hive",
            "hive.metastore": "glue",
            "hive.metastore.glue.region": self.region,
            "hive.metastore.glue.endpoint-url": self.endpoint_url,
            "hive.metastore.glue.aws-access-key": self.access_key,
            "hive.metastore.glue.aws-secret-key": self.secret_key,
            # moto's Glue has no column-statistics calls, and one segment avoids parallel partition pages.
            "hive.metastore.glue.partitions-segments": "1",
            "hive.table-statistics-enabled": "false",
            "hive.partition-projection-enabled": "true",
            "fs.native-s3.enabled": "true",
            "s3.endpoint": self.endpoint_url,
            "s3.region": self.region,
            "s3.path-style-access": "true",
            "s3.aws-access-key": self.access_key,
            "s3.aws-secret-key": self.secret_key,
        }

    def iceberg_catalog_properties(self) -> dict[str, str]:
        """The Iceberg connector over the same Glue catalog and S3 (what docs/iceberg.md documents)."""
        hive = self.catalog_properties()
        return {"connector.name": "iceberg", "iceberg.catalog.type": "glue",
                **{k: v for k, v in hive.items() if k.startswith(("hive.metastore.glue.", "fs.", "s3."))
                   and k != "hive.metastore.glue.partitions-segments"},
                # a test expires snapshots seconds old (Trino refuses under 7 days by default)
                "iceberg.expire-snapshots.min-retention": "0s"}

    def _write_etc(self) -> None:
        os.makedirs(os.path.join(self.etc, "catalog"), exist_ok=True)
        _properties(os.path.join(self.etc, "node.properties"), {
            "node.environment": "shardinfer_test", "node.id": "shardinfer-test",
            "node.data-dir": os.path.join(self.workdir, "data")})
        _properties(os.path.join(self.etc, "config.properties"), {
            "coordinator": "true", "node-scheduler.include-coordinator": "true",
            "http-server.http.port": str(self.port), "discovery.uri": f"http://127.0.0.1:{self.port}",
            "query.max-memory": "1GB", "query.max-memory-per-node": "1GB",
            # a small machine: fewer threads than Trino's defaults (sized for servers)
            "task.concurrency": "2", "task.max-worker-threads": "4"})
        with open(os.path.join(self.etc, "jvm.config"), "w") as f:
            f.write(_JVM.format(heap=self.heap))
        _properties(os.path.join(self.etc, "log.properties"), {"io.trino": "WARN", "io.trino.server.Server": "INFO"})
        _properties(os.path.join(self.etc, "catalog", f"{CATALOG}.properties"), self.catalog_properties())
        _properties(os.path.join(self.etc, "catalog", f"{ICEBERG_CATALOG}.properties"), self.iceberg_catalog_properties())

    def start(self) -> "TrinoServer":
        """Start the server and wait until it answers queries."""
        server = fetch()
        java_home = find_java()
        self._write_etc()
        env = dict(os.environ, JAVA_HOME=java_home, PATH=os.path.join(java_home, "bin") + os.pathsep + os.environ["PATH"])
        args = [os.path.join(server, "bin", "launcher"), "run", f"--etc-dir={self.etc}",
                f"--data-dir={os.path.join(self.workdir, 'data')}"]
        t0 = time.time()
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_started()
        self.started_in = time.time() - t0
        return self

    def _wait_started(self) -> None:
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise TrinoUnavailable(f"Trino exited with {self.proc.returncode}; its log: {self.log_path}\n"
                                       f"{self.log_tail()}")
            if "SERVER STARTED" in self._log():
                return
            time.sleep(0.5)
        self.stop()
        raise TrinoUnavailable(f"Trino did not start in {self.start_timeout:.0f}s; its log: {self.log_path}\n"
                               f"{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's log."""
        return super().log_tail(n)

    def connect(self, schema: Optional[str] = None, catalog: str = CATALOG):
        """A DB-API connection (the ``trino`` client) to ``catalog`` (``glue``, or ``iceberg``)."""
        import trino

        return trino.dbapi.connect(host="127.0.0.1", port=self.port, user="shardinfer-test", catalog=catalog,
                                   schema=schema, http_scheme="http", request_timeout=300)

    def query(self, sql: str, schema: Optional[str] = None, params: Optional[Sequence] = None,
              catalog: str = CATALOG) -> list[tuple]:
        """Run one statement; its rows as tuples (Trino's types as the client gives them)."""
        conn = self.connect(schema, catalog)
        try:
            cur = conn.cursor()
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()
