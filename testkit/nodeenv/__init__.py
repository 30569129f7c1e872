"""A cluster node's Python environment, built here the way the node builds it, for tests.

``deploy/emr/bootstrap.sh`` itself makes the environment (``.venv-node/``: setup.cfg's
``install_requires`` and nothing else — no test extra, no pandas), then the ``spark35``
extra's pyspark stands in for the Spark that EMR 7 brings.  The tests (tests/test_node_env.py)
run the shipped code only in that interpreter: every module and executor-side entry point in a
fresh process of its own (``entry_points.py``), and the documented steps on the local YARN.

    python -m testkit.nodeenv          # build or update .venv-node (what `make node-env` runs)

Tooling for tests only; the jobs never import it.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_VENV = ROOT / ".venv-node"
BOOTSTRAP = ROOT / "deploy" / "emr" / "bootstrap.sh"
ENTRY_POINTS = pathlib.Path(__file__).resolve().parent / "entry_points.py"


def cluster_spark_pin() -> str:
    """``pyspark==3.5.9``: the ``spark35`` extra of setup.cfg (the Spark line EMR 7 ships)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    [pin] = [ln.strip() for ln in cfg["options.extras_require"]["spark35"].splitlines() if ln.strip()]
    return pin


@dataclass(frozen=True)
class NodeEnv:
    """A built node environment: its interpreter, spark-submit and pyspark folder."""

    venv: pathlib.Path

    @property
    def python(self) -> str:
        """The interpreter Spark's driver and workers run (``spark.pyspark.python``)."""
        return str(self.venv / "bin" / "python")

    @property
    def spark_submit(self) -> str:
        """The cluster Spark's spark-submit."""
        return str(self.venv / "bin" / "spark-submit")

    @property
    def pyspark_home(self) -> str:
        """The folder of the cluster Spark's pyspark (its ``jars/`` serve as ``spark.yarn.jars``)."""
        return subprocess.run([self.python, "-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"],
                              capture_output=True, text=True, check=True).stdout.strip()

    def packages(self) -> set[str]:
        """The distributions installed (lowercase names)."""
        out = subprocess.run([self.python, "-m", "pip", "list", "--format", "freeze", "--disable-pip-version-check"],
                             capture_output=True, text=True, check=True).stdout
        return {ln.split("==")[0].lower() for ln in out.splitlines() if "==" in ln}


def build(venv: pathlib.Path = NODE_VENV, python: str = "") -> NodeEnv:
    """Run bootstrap.sh into ``venv`` (it does nothing when the pins are there), then add the cluster's pyspark.

    ``python``: the Python 3.11 to build from (default: this interpreter's base, not a venv's).
    """
    base = python or getattr(sys, "_base_executable", sys.executable)
    env = {**os.environ, "SHARDINFER_VENV": str(venv), "SHARDINFER_PYTHON": base, "SHARDINFER_SUDO": ""}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", str(BOOTSTRAP)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{BOOTSTRAP} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    node = NodeEnv(venv)
    pin = cluster_spark_pin()
    try:
        have = pyspark_version(node)
    except subprocess.CalledProcessError:  # bootstrap.sh made the environment afresh
        have = ""
    if have != pin.split("==")[1]:
        subprocess.run([node.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", pin],
                       check=True, env=env)
    return node


def shipped_modules(zip_path: str) -> list[str]:
    """Every module in shardinfer.zip (what ``--py-files`` puts on a node's path), as import names."""
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        files = sorted(n for n in z.namelist() if n.endswith(".py"))
    return [n[: -len("/__init__.py")].replace("/", ".") if n.endswith("/__init__.py") else n[:-3].replace("/", ".")
            for n in files]


def run_entry_point(node: NodeEnv, zip_path: str, workdir: str, step: str) -> subprocess.CompletedProcess:
    """One step of entry_points.py in a fresh node interpreter (no PYTHONPATH, nothing of the repository)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([node.python, str(ENTRY_POINTS), zip_path, workdir, step], env=env, capture_output=True,
                          text=True, timeout=600, cwd=workdir)


def write_inputs(workdir: str, images: int = 10) -> None:
    """What the entry points read: ``images/`` (generated PNGs), the same keys as ``keys.csv`` and
    ``keys.parquet``, and ``model/`` (the test ResNet-18)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from testkit import zoo_builder
    from testkit.testdata import cifar_like_png, image_name

    folder = os.path.join(workdir, "images")
    os.makedirs(folder, exist_ok=True)
    keys = []
    for i in range(images):
        keys.append(os.path.join(folder, image_name(i)))
        with open(keys[-1], "wb") as f:
            f.write(cifar_like_png(i, seed=17))
    with open(os.path.join(workdir, "keys.csv"), "w") as f:
        f.write("key\n" + "".join(k + "\n" for k in keys))
    pq.write_table(pa.table({"key": keys}), os.path.join(workdir, "keys.parquet"))
    zoo_builder.write_model(os.path.join(workdir, "model"))


def pyspark_version(node: NodeEnv) -> str:
    """The node's pyspark version."""
    out = subprocess.run([node.python, "-c", "import pyspark; print(pyspark.__version__)"], capture_output=True,
                         text=True, check=True).stdout
    return re.sub(r"\s", "", out)

