"""``python -m testkit.nodeenv``: build or update .venv-node (what `make node-env` runs)."""

from testkit.nodeenv import build, pyspark_version

node = build()
print(f"node environment: {node.venv} (pyspark {pyspark_version(node)}; {len(node.packages())} distributions)")
