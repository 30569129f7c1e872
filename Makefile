# shardinfer: `make demo` and `make test` do all set-up themselves (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.shardinfer-installed
# A second environment with Spark 3.5 (what EMR 7 ships): the same suite runs on both lines.
VENV35  := .venv-spark35
PY35    := $(VENV35)/bin/python
STAMP35 := $(VENV35)/.shardinfer-installed
N      ?= 1000
BENCH_N ?= 2560
# The peers (Daft, Ray Data) and shardinfer's fp32 infer also run at these sizes (comma list; empty for none).
BENCH_PEER_SIZES ?= 10240
BENCH_PHOTOS ?= 512

.PHONY: setup setup-spark35 yarn-jars trino node-env check-java check-python lint flag-docs jvm-archive test test-unit test-spark4 test-once test-spark35 test-systems demo bench bench-profile bench-photos bench-decode bench-onnx onnx-corpus scale scale-iceberg history dist yarn-check clean

setup: check-python check-java $(STAMP)

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "shardinfer needs Python 3.11 (Pillow 13 needs 3.11+, numpy 1.23.5 has no 3.12 wheel); found " + sys.version.split()[0] + ": make PYTHON=python3.11 ...")'

check-java:
	@scripts/check_java.sh

# Re-installs only when the pinned dependencies change. pip byte-compiles what it installs (about half its time
# here), and that is kept: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) nothing compiled later is cached,
# and every Spark worker would compile MXNet again (measured: --no-compile cost the suite's Python workers +35% CPU).
PIP := -m pip install --quiet --disable-pip-version-check
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) -e '.[test,bench,import,spark4]'
	@touch $(STAMP)

setup-spark35: check-python check-java $(STAMP35)

# .venv with Spark 3.5 in front: pyspark 3.5.9 and its py4j installed here, every other package (the same pins)
# and the project itself taken from .venv (scripts/layer_venv.py writes the .pth that adds .venv's site-packages
# behind this one's), rather than a second install of everything: pip's CPU in make test 154 -> 123 s.
$(STAMP35): $(STAMP)
	@test -x $(PY35) || $(PYTHON) -m venv $(VENV35)
	@rm -f $(VENV35)/lib/python*/site-packages/shardinfer-base.pth
	$(PY35) $(PIP) $$($(PY) -c 'from testkit.nodeenv import cluster_spark_pin; print(cluster_spark_pin())')
	$(PY35) scripts/layer_venv.py $(VENV)
	@touch $(STAMP35)

# A cluster node's environment: deploy/emr/bootstrap.sh itself builds .venv-node (setup.cfg's
# install_requires, no extras), then the cluster's pyspark (the spark35 extra's) is added. testkit.nodeenv needs
# only the standard library: run by the base Python, it builds beside .venv's install (make test: on the core
# that pip leaves idle) instead of after it.
node-env: check-python
	$(PYTHON) -m testkit.nodeenv

# Four lines, side by side: on Spark 4.0 (`.venv`), the tests whose subject may depend on Spark's version, and
# (to spread the load) the AWS services around the output and the demo (marker `aws`): `make test-spark4`;
# the tests whose subject does not depend on Spark's version (marker `once`: the model's numbers, image decoding
# and formats, our listing, retries and reruns, the SQL over the output, the manifest's checks, exit codes, the
# EMR files and bootstrap) and the unit layer (tests/unit/, marker `unit`) after the lint gate: `make test-once`;
# on Spark 3.5 (EMR 7's) the tests of the first kind that run Spark and, to spread the load, some of the second
# kind (marker `once_on_spark35`: the Iceberg output, prepare's listing and key lists) (`make
# test-spark35`); and the systems around the jobs (`make test-systems`): the shipped code in a node's environment,
# the documented steps, the YARN trap and chaos on one local YARN (tests/test_node_env.py), and Trino over Glue and
# S3 (tests/test_trino.py). test-spark4 and test-once together are the whole suite on Spark 4 but the systems.
# Each line ends with its slowest tests; -Otarget prints each line's output whole when it ends. Hadoop's jars,
# Trino and each environment's archive of Spark's classes (jvm-archive) are made first, once.
test:
	@$(MAKE) --no-print-directory -j4 -Otarget test-spark4 test-once test-spark35 test-systems

# Hadoop's test-cluster jars (Maven Central, pinned in testkit/yarn/pom.xml), before the lines that start YARN;
# without Maven the YARN tests say why they skip.
yarn-jars: setup
	@$(PY) -m testkit.yarn

# Trino 476 and its Hive and Iceberg connectors (Maven Central, pinned in testkit/trino/pom.xml; ~800 MB, once), and a
# Java 24+ for it; without them the Trino tests say why they skip.
trino: setup
	@$(PY) -m testkit.trino

# An archive of Spark's driver classes (JVM class-data sharing) for the tests' spark-submit JVMs, built once per
# environment beside it (testkit/jvmcds.py): each driver JVM then starts on ~2 CPU-s less.
jvm-archive: setup
	@$(PY) -m testkit.jvmcds

test-spark4: setup jvm-archive
	$(PY) -m pytest -p no:cacheprovider -m "not unit and not node and not yarn and not trino and not corpus and (not once or aws)" --durations=15

# The lint gate (pyproject.toml [tool.ruff], [tool.mypy]): pyflakes, import order and a complexity limit over the
# tree, docstrings of common/'s public functions, mypy over common/, every relative link and section the docs
# name (scripts/check_links.py), and docs/reference.md's flag tables equal to the parsers (scripts/flag_docs.py).
# make test runs it first on the once line.
lint: setup
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff check --no-cache --select D1 --ignore D105,D107 common
	$(VENV)/bin/mypy --no-incremental common
	$(PY) scripts/check_links.py
	$(PY) scripts/flag_docs.py --check

# docs/reference.md's flag tables, rewritten from the jobs' parsers (make lint fails when they differ).
flag-docs: setup
	$(PY) scripts/flag_docs.py

# The unit layer (tests/unit/, marker `unit`): one test file per module, mirroring the packages, no Spark, real
# local files and the local S3 server; under a minute. make test runs it on the once line, after the lint gate,
# in the same pytest session as that line's other tests (they share the test model it builds).
test-unit: setup
	$(PY) -m pytest -p no:cacheprovider tests/unit --durations=5

test-once: setup lint jvm-archive
	$(PY) -m pytest -p no:cacheprovider -m "(once and not corpus and not aws and not once_on_spark35) or unit" --durations=10

test-spark35: setup-spark35
	@$(PY35) -m testkit.jvmcds
	$(PY35) -m pytest -p no:cacheprovider -m "not unit and not node and not yarn and not trino and not corpus and ((spark and not once) or once_on_spark35)" --durations=10

# The systems line also runs the ONNX corpus (marker `corpus`: every real export imported and compared with ONNX
# Runtime, three through infer): version-independent, and this line had the most room.
test-systems: node-env yarn-jars trino jvm-archive
	$(PY) -m pytest -p no:cacheprovider -m "node or yarn or trino or corpus" --durations=8

demo: setup
	$(PY) scripts/demo.py --images $(N)

# Spark's history server over the event log directory of spark-defaults.conf: http://localhost:18080
SPARK_EVENTS ?= /tmp/spark-events
history: setup
	@mkdir -p $(SPARK_EVENTS)
	@echo "Spark history server on http://localhost:18080 (event logs: $(SPARK_EVENTS)); Ctrl-C stops it"
	SPARK_HISTORY_OPTS="-Dspark.history.fs.logDirectory=file://$(SPARK_EVENTS)" $(VENV)/bin/spark-class org.apache.spark.deploy.history.HistoryServer

# The speed benchmark (docs/benchmarks.md): model-only, shardinfer per precision, the baselines, and the peers a
# user would pick instead (Daft and Ray Data, each in an environment of its own that bench/peers.py builds on
# first use: .venv-peer-daft, .venv-peer-ray) at BENCH_N and BENCH_PEER_SIZES images. Then its photo mode:
# photo-like JPEGs of 0.3, 2 and 12 MP and 2 MP screenshot PNGs, per precision, decoded exactly, fast, and from
# shards packed with prepare --max-side 256 (make bench-photos alone); last, where one shard's time goes per stage
# and the bound it puts on infer per precision (make bench-profile alone). About an hour and a half on 2 cores.
bench: setup
	$(PY) bench/run.py --images $(BENCH_N) --peer-sizes "$(BENCH_PEER_SIZES)"
	$(PY) bench/photos.py --images $(BENCH_PHOTOS)
	$(PY) bench/profile_shard.py

bench-profile: setup
	$(PY) bench/profile_shard.py

bench-photos: setup
	$(PY) bench/photos.py --images $(BENCH_PHOTOS)

# MXNet (as infer binds it) against ONNX Runtime on every corpus architecture, same threads (docs/models.md).
bench-onnx: setup
	$(PY) bench/onnx_models.py --precisions fp32,bf16,int8 --out docs/onnx-figures.json
	$(PY) scripts/onnx_docs.py

# The ONNX corpus (testkit/corpus/): real exporters in environments of their own (torch ~5.6 GB, TensorFlow
# ~1.6 GB, Paddle ~1 GB; not needed by make test, which uses the committed, weight-stripped files).
CORPUS_ENVS := .venv-corpus-torch .venv-corpus-tf .venv-corpus-paddle
onnx-corpus: check-python
	@for e in torch tf paddle; do test -x .venv-corpus-$$e/bin/python || $(PYTHON) -m venv .venv-corpus-$$e; \
	  .venv-corpus-$$e/bin/pip install --quiet --disable-pip-version-check -r testkit/corpus/requirements-$$e.txt; done
	.venv-corpus-torch/bin/python testkit/corpus/export_torch.py
	.venv-corpus-tf/bin/python testkit/corpus/export_keras.py
	.venv-corpus-paddle/bin/python testkit/corpus/export_paddle.py

# --decode fast against exact (docs/benchmarks.md): top-1 agreement over 1,797 digit photos, pixels, time.
bench-decode: setup
	$(PY) bench/decode.py --out docs/decode-figures.json

# The driver's plan at scale (docs/scale.md): synthetic manifests of 10 M and 100 M images,
# infer --dry-run over each through spark-submit (wall time, peak RSS of the process tree).
scale: setup
	$(PY) bench/scale.py --out docs/scale-figures.json

# The driver's side of an --iceberg-table commit at scale (docs/iceberg.md): 2 M synthetic part files through the
# committer in infer's waves, its memory after each wave; ~5 minutes.
scale-iceberg: setup
	$(PY) bench/iceberg_scale.py --files 2000000 --out docs/scale-figures-iceberg.json

# prepare + infer on a real YARN (Hadoop 3.4.1's MiniYARNCluster on 127.0.0.1, jars from Maven
# Central via testkit/yarn/pom.xml): the 2-executor trap and the fix, from Spark's event logs.
yarn-check: setup
	@command -v mvn >/dev/null || { echo "make yarn-check needs Maven (Debian/Ubuntu: apt-get install maven)"; exit 2; }
	$(PY) testkit/yarn/check.py --out docs/yarn-figures.json

# What a cluster needs (scripts/dist.py): dist/shardinfer.zip (the three packages, for
# `spark-submit --py-files`), the entry scripts and the EMR bootstrap action.
# Needs only a Python 3 (any version: it zips and copies files): no Java, no virtual environment.
dist:
	$(PYTHON) scripts/dist.py

clean:
	rm -rf $(VENV) $(VENV35) .venv-node .venv-peer-daft .venv-peer-ray $(CORPUS_ENVS) dist build *.egg-info .pytest_cache demo-out
