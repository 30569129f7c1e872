"""A Spark standalone cluster on 127.0.0.1, started from the pyspark package's own classes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from testkit.localdev import free_port, spark_env, venv_bin


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


class StandaloneCluster:
    """Master + N workers (``spark-class org.apache.spark.deploy.…``), each in its own process group."""

    def __init__(self, workdir: str, workers: int = 2, cores: int = 1, memory: str = "2g", env: dict | None = None,
                 worker_conf: dict | None = None):
        """Configure (not start). ``worker_conf``: Spark properties of the workers (e.g. their GPU resources)."""
        self.workdir, self.n, self.cores, self.memory = workdir, workers, cores, memory
        self.env = spark_env(env)
        if worker_conf:
            self.env["SPARK_WORKER_OPTS"] = " ".join(f"-D{k}={v}" for k, v in worker_conf.items())
        self.master_port = free_port()
        self.master_url = f"spark://127.0.0.1:{self.master_port}"
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        return subprocess.Popen([venv_bin("spark-class"), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start(self) -> "StandaloneCluster":
        """Start the master, then the workers, and wait until each listens."""
        self.master = self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                             "--port", str(self.master_port), "--webui-port", str(free_port())])
        _wait_port(self.master_port, self.master)
        for i in range(self.n):
            port = free_port()
            w = self._start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                           "--port", str(port), "--webui-port", str(free_port()),
                                           "--cores", str(self.cores), "--memory", self.memory,
                                           "--work-dir", os.path.join(self.workdir, f"work{i}"), self.master_url])
            _wait_port(port, w)
            self.workers.append(w)
        return self

    def python_workers(self, i: int) -> list[int]:
        """Pids of the Python worker processes running under worker ``i`` (its executor's tasks)."""
        import psutil

        try:
            kids = psutil.Process(self.workers[i].pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            try:
                if "pyspark" in " ".join(k.cmdline()):
                    out.append(k.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i`` with its executor and Python workers (a lost node)."""
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()

    def stop(self) -> None:
        """Kill everything that is still running."""
        for p in self.workers + ([self.master] if self.master else []):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
