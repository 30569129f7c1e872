"""Bad arguments and environments give one line naming the thing; secrets never reach a log or record."""

from __future__ import annotations

import os
import uuid

import mxnet as mx
import pytest

from common import storage
from testkit import zoo_builder
from testkit.localdev import ROOT, free_port, run_spark_submit
from tests.helpers import infer_args, run_main, run_python

EXAMPLES = os.path.join(ROOT, "manifests", "examples")


@pytest.fixture(scope="module")
def errs(s3, prepared, model_uris, model_files):
    """A bucket with a manifest of unknown version and a params file that does not match the symbol."""
    s3.create_bucket("errs")
    with open(os.path.join(EXAMPLES, "manifest-unknown-version.parquet"), "rb") as f:
        storage.write_bytes("s3://errs/v999/manifest.parquet", f.read())
    params = dict(mx.nd.load_frombuffer(model_files[zoo_builder.PARAMS_FILE]))
    params["arg:fc1_weight"] = mx.nd.zeros((10, 512))
    path = os.path.join(str(os.environ.get("TMPDIR", "/tmp")), f"bad-{uuid.uuid4().hex}.params")
    mx.nd.save(path, params)
    with open(path, "rb") as f:
        storage.write_bytes("s3://errs/bad/resnet-18-0000.params", f.read())
    os.unlink(path)
    return {"manifest": prepared["manifest"], "model": model_uris}


def _one_line_error(proc, prog: str, expected: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines == [lines[0]] and lines[0].startswith(f"{prog}: error: "), proc.stderr[-3000:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_bucket(s3, capsys):
    p = run_main("prepare/main.py", ["--input", "s3://no-such-bucket-1/in/", "--output", "s3://errs/o/"], capsys)
    _one_line_error(p, "prepare", "s3://no-such-bucket-1/in/: bucket does not exist")


@pytest.mark.once
def test_missing_manifest(s3, errs, capsys):
    p = run_main("infer/main.py", infer_args("s3://errs/none/manifest.parquet", errs["model"], "s3://errs/p/"), capsys)
    _one_line_error(p, "infer", "s3://errs/none/manifest.parquet: no such object")


@pytest.mark.once
def test_manifest_of_unknown_version(s3, errs, capsys):
    p = run_main("infer/main.py", infer_args("s3://errs/v999/manifest.parquet", errs["model"], "s3://errs/p/"), capsys)
    _one_line_error(p, "infer", "manifest format version '999' is not supported")


@pytest.mark.once
def test_model_url_that_404s(s3, errs, capsys):
    model = {**errs["model"], "sym": "s3://models/resnet-18/nope-symbol.json"}
    p = run_main("infer/main.py", infer_args(errs["manifest"], model, "s3://errs/p/"), capsys)
    _one_line_error(p, "infer", "cannot read model symbol: s3://models/resnet-18/nope-symbol.json: no such object")


@pytest.mark.once
def test_params_that_do_not_match_the_symbol(s3, errs, capsys):
    model = {**errs["model"], "params": "s3://errs/bad/resnet-18-0000.params"}
    p = run_main("infer/main.py", infer_args(errs["manifest"], model, "s3://errs/p/"), capsys)
    _one_line_error(p, "infer", "parameter 'fc1_weight' has shape (10, 512), symbol")


@pytest.mark.once
def test_unreachable_endpoint(s3, errs):
    env = {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    p = run_python("infer/main.py", infer_args(errs["manifest"], errs["model"], "s3://errs/p/"), env)
    _one_line_error(p, "infer", "cannot reach the S3 endpoint http://127.0.0.1:")


@pytest.mark.once
def test_no_credentials(s3, errs, tmp_path):
    env = {"AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path),
           # never ask the EC2 metadata service (not on this network): only the local chain counts here
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    saved = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
    try:
        p = run_python("infer/main.py", infer_args(errs["manifest"], errs["model"], "s3://errs/p/"), env)
    finally:
        os.environ.update(saved)
    _one_line_error(p, "infer", "no usable AWS credentials found")


def test_verbose_shows_the_traceback(s3, capsys):
    p = run_main("prepare/main.py", ["--input", "s3://no-such-bucket-1/in/", "--output", "s3://errs/o/",
                                       "--verbose"], capsys)
    assert p.returncode == 2 and "Traceback" in p.stderr and "bucket does not exist" in p.stderr


@pytest.mark.spark
def test_error_through_spark_submit(s3):
    p = run_spark_submit("prepare/main.py", ["--input", "s3://no-such-bucket-2/in/", "--output", "s3://errs/o/"], s3.env)
    both = p.stdout + p.stderr  # spark-submit relays the Python driver's stderr on its stdout
    assert p.returncode == 2, both[-3000:]
    assert "prepare: error: s3://no-such-bucket-2/in/: bucket does not exist" in both
    assert "Traceback" not in both


def test_a_job_ends_with_its_own_exit_code_and_its_output_flushed(tmp_path):
    """The jobs end through common.cli.exit_process (os._exit after flushing): pyarrow's thread pools
    can abort a normal interpreter teardown (exit 134 after a successful run, apache/arrow#34314)."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": list(range(1000))}), tmp_path / "t.parquet")
    script = ("import sys, logging; sys.path.insert(0, sys.argv[1])\n"
              "import pyarrow.parquet as pq\n"
              "from common.cli import exit_process\n"
              "logging.basicConfig(stream=sys.stderr); logging.getLogger('x').warning('logged')\n"
              "print(pq.read_table(sys.argv[2]).num_rows, end='')\n"
              "exit_process(3)\n")
    for _ in range(12):
        r = subprocess.run([sys.executable, "-c", script, ROOT, str(tmp_path / "t.parquet")], capture_output=True,
                           text=True, timeout=120)
        assert (r.returncode, r.stdout) == (3, "1000") and "logged" in r.stderr, r.stderr[-500:]
