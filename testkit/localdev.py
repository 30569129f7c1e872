"""Local stand-ins for the demo and the tests: an S3-protocol server on 127.0.0.1 and generated data.

Not used by the jobs themselves, which only ever see an endpoint URL.  Needs the ``test``
extra (``moto[s3,glue]`` with Flask: moto's server).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from common import storage
from testkit.testdata import cifar_like_png, image_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CREDENTIALS = {
    # Fake credentials for the local server only; real runs use boto3's default chain.
    "AWS_ACCESS_KEY_ID": "shardinfer-local",
    "AWS_SECRET_ACCESS_KEY": "shardinfer-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class LocalS3:
    """A moto S3 server on 127.0.0.1 and a free port (S3, Glue with AWS's ``VersionId`` check:
    testkit/glue_versions.py, KMS); use as a context manager.

    ``env`` holds the variables a client process needs (endpoint and fake credentials).
    """

    def __init__(self) -> None:
        """Prepare (not start) the server."""
        import logging

        from moto.server import ThreadedMotoServer

        from testkit import glue_versions

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        glue_versions.enforce()  # Glue's UpdateTable refuses a stale VersionId, as AWS does
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> "LocalS3":
        """Start serving; sets ``endpoint_url``."""
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients of this server (boto3 reads AWS_ENDPOINT_URL itself)."""
        return {**DEMO_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (us-east-1)."""
        storage.s3_client(self.endpoint_url).create_bucket(Bucket=bucket)


def upload_cifar_like(prefix_uri: str, count: int, seed: int = 0, endpoint_url: Optional[str] = None,
                      threads: int = 16) -> list[str]:
    """Generate ``count`` CIFAR-like PNGs under ``prefix_uri``; returns their URIs in key order."""
    def put(i: int) -> str:
        uri = storage.join(prefix_uri, image_name(i))
        storage.write_bytes(uri, cifar_like_png(i, seed), endpoint_url, "image/png")
        return uri

    with ThreadPoolExecutor(threads) as pool:
        return sorted(pool.map(put, range(count)))


def make_dist(out: str) -> str:
    """``make dist`` into ``out`` (``scripts/dist.py``, run as the Makefile runs it); returns ``out``."""
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dist.py"), str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return str(out)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_bin(name: str) -> str:
    """A command of the interpreter's environment (``.venv/bin/spark-submit``)."""
    return os.path.join(os.path.dirname(sys.executable), name)


# How many spark-submit commands this process has built (tests/conftest.py checks the `spark` marker by it).
SPARK_SUBMITS = [0]


def spark_submit_command(script: str, args: Sequence[str], extra_conf: Sequence[str] = ()) -> list[str]:
    """``spark-submit --properties-file spark-defaults.conf <script> <args>`` as the README documents it."""
    SPARK_SUBMITS[0] += 1
    cmd = [venv_bin("spark-submit"), "--properties-file", os.path.join(ROOT, "spark-defaults.conf")]
    for c in extra_conf:
        cmd += ["--conf", c]
    return cmd + [os.path.join(ROOT, script), *args]


def spark_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for spark-submit: this interpreter for driver and workers, the project importable."""
    env = dict(os.environ)
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # everything here is on loopback
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run_spark_submit(script: str, args: Sequence[str], env: dict[str, str], extra_conf: Sequence[str] = (),
                     timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run one spark-submit, capturing its output (text)."""
    return subprocess.run(spark_submit_command(script, args, extra_conf), env=spark_env(env), capture_output=True,
                          text=True, timeout=timeout)
