"""`make dist`: what a cluster needs from this repository, in dist/, built with Python alone.

- ``dist/shardinfer.zip``: the ``common``, ``prepare`` and ``infer`` packages, for
  ``spark-submit --py-files`` (Spark puts it on the driver's and every executor's path; nothing
  is installed into the nodes' site-packages, so these generic top-level names never meet
  another project's there).
- ``dist/prepare/main.py``, ``dist/infer/{main,compact,report,athena}.py``: the entry scripts
  spark-submit runs (the same files as in the repository).
- ``dist/bootstrap.sh``: the EMR bootstrap action (deploy/emr/bootstrap.sh), and
  ``dist/discover-gpus.sh``, Spark's GPU discovery script for ``--device gpu`` (``--files``).

``aws s3 sync dist/ s3://BUCKET/shardinfer/`` puts it where deploy/emr/steps.json looks.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("common", "prepare", "infer")
ENTRY_SCRIPTS = ("prepare/main.py", "infer/main.py", "infer/compact.py", "infer/report.py", "infer/athena.py")


def build(out: pathlib.Path) -> list[pathlib.Path]:
    """Write dist/ afresh; returns the files written."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    written = [out / "shardinfer.zip"]
    with zipfile.ZipFile(written[0], "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in PACKAGES:
            for p in sorted((ROOT / pkg).rglob("*.py")):
                z.write(p, p.relative_to(ROOT).as_posix())
    for rel in ENTRY_SCRIPTS:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
        written.append(dest)
    for name in ("bootstrap.sh", "discover-gpus.sh"):
        dest = out / name
        shutil.copy2(ROOT / "deploy" / "emr" / name, dest)
        os.chmod(dest, 0o755)
        written.append(dest)
    return written


if __name__ == "__main__":
    for path in build(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "dist").resolve()):
        print(os.path.relpath(path))
