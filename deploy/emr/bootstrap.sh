#!/usr/bin/env bash
# shardinfer's EMR bootstrap action: Python 3.11 and the project's pinned dependencies in a
# virtual environment on every node (/opt/shardinfer/venv), which deploy/emr/configurations.json
# points Spark at (spark.pyspark.python).  EMR 7.x runs Amazon Linux 2023, whose python3 is 3.9:
# too old for Pillow 13 and pyarrow 23, so Python 3.11 comes from AL2023's own python3.11
# package.  The project's code is not installed here: it travels with each job as
# `--py-files shardinfer.zip` (see the README, "On Amazon EMR").
#
# Idempotent: a node that already has the environment with these exact pins does nothing.
# Fails loudly: any error stops the action with a line naming the step, and EMR then fails the
# cluster's start (a node without the dependencies would fail every task it runs).
#
# `bootstrap.sh --gpu` (the bootstrap action's argument on GPU instances): MXNet's CUDA 11.2 build,
# mxnet-cu112 1.9.1 (it brings its CUDA libraries; the node needs only NVIDIA's driver, which EMR's
# GPU instances have), in place of the CPU build; with deploy/emr/configurations-gpu.json.
#
# Overridable for testing: SHARDINFER_VENV (where the environment goes), SHARDINFER_PYTHON (the
# interpreter to build it from), SHARDINFER_SUDO (the command that runs a step as root; empty
# for none).
set -euo pipefail

# The pins of setup.cfg's install_requires (tests/test_deploy.py checks that they are the same).
REQUIREMENTS=(
  "mxnet==1.9.1"
  "numpy==1.23.5"
  "pyarrow==23.0.0"
  "boto3==1.44.8"
  "botocore==1.44.8"
  "pillow==13.0.0"
  "matplotlib==3.9.4"
  "contourpy==1.3.0"
  "pyiceberg==0.12.0"
)

case "${1:-}" in
  "") ;;
  --gpu) REQUIREMENTS=("${REQUIREMENTS[@]/#mxnet==1.9.1/mxnet-cu112==1.9.1}") ;;
  *) echo "shardinfer bootstrap: unknown argument '$1' (expected none, or --gpu)" >&2; exit 2 ;;
esac

VENV="${SHARDINFER_VENV:-/opt/shardinfer/venv}"
PYTHON="${SHARDINFER_PYTHON:-python3.11}"
if [[ $EUID -eq 0 ]]; then SUDO=""; else SUDO="${SHARDINFER_SUDO-sudo}"; fi
STEP="start"

fail() {
  echo "shardinfer bootstrap: FAILED at step '$STEP' on $(hostname): $*" >&2
  exit 1
}
trap 'fail "command exited with $? (line $LINENO)"' ERR

as_root() {
  if [[ -n "$SUDO" ]]; then "$SUDO" "$@"; else "$@"; fi
}

STEP="check the existing environment"
STAMP="$VENV/.shardinfer-requirements"
WANT="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  echo "shardinfer bootstrap: $VENV already has the pinned dependencies; nothing to do"
  exit 0
fi

STEP="install Python 3.11"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  if command -v dnf >/dev/null 2>&1; then
    as_root dnf install -y -q python3.11 python3.11-pip
  else
    fail "no $PYTHON on this node and no dnf to install it: shardinfer's bootstrap supports EMR 7.x (Amazon Linux 2023)"
  fi
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 needed, found " + sys.version.split()[0])' \
  || fail "$PYTHON is not Python 3.11 (numpy 1.23.5 has no wheel for 3.12, Pillow 13 needs 3.11+)"

STEP="create $VENV"
as_root mkdir -p "$(dirname "$VENV")"
as_root "$PYTHON" -m venv --clear "$VENV"

STEP="pip install the pinned dependencies"
as_root "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${REQUIREMENTS[@]}"

STEP="import check"
as_root "$VENV/bin/python" -c 'import mxnet, numpy, pyarrow, boto3, PIL, matplotlib; print("shardinfer bootstrap: mxnet", mxnet.__version__, "numpy", numpy.__version__, "pyarrow", pyarrow.__version__, "GPUs seen by MXNet:", mxnet.context.num_gpus())'

STEP="record the pins"
printf '%s\n' "$WANT" | as_root tee "$STAMP" >/dev/null
echo "shardinfer bootstrap: $VENV ready"
