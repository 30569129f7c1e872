"""deploy/emr/ as the README uses it: the bootstrap action, the EMR configurations and steps,
the README's `aws emr` block run against the local EMR/S3 server, and the executor-layout warning."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import botocore.session
import pytest
from botocore.validate import ParamValidator

from common.spark import executor_layout_warning, read_properties
from scripts.requirements import requirements
from testkit.localdev import ROOT, venv_bin

pytestmark = pytest.mark.once  # the EMR files, the bootstrap and the README's steps: the same on either Spark line
EMR = os.path.join(ROOT, "deploy", "emr")
BOOTSTRAP = os.path.join(EMR, "bootstrap.sh")


def _json(name: str):
    with open(os.path.join(EMR, name)) as f:
        return json.load(f)


def _install_requires() -> list[str]:
    return requirements([])  # setup.cfg's install_requires, read as the Makefile reads it


def _bootstrap_pins() -> list[str]:
    with open(BOOTSTRAP) as f:
        block = re.search(r"REQUIREMENTS=\((.*?)\)", f.read(), re.S).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_bootstrap_is_valid_bash_and_passes_shellcheck():
    subprocess.run(["bash", "-n", BOOTSTRAP], check=True)
    r = subprocess.run([venv_bin("shellcheck"), "--severity=style", BOOTSTRAP], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bootstrap_pins_are_setup_cfgs():
    assert _bootstrap_pins() == _install_requires()


def test_bootstrap_installs_once_and_fails_loudly(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "SHARDINFER_VENV": str(venv), "SHARDINFER_SUDO": "", "SHARDINFER_PYTHON": sys.executable}
    first = subprocess.run(["bash", BOOTSTRAP], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "mxnet 1.9.1 numpy 1.23.5 pyarrow 23.0.0" in first.stdout
    # the environment it made imports every dependency at the pinned versions
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in "
                            f"{[r.split('==')[0] for r in _install_requires()]!r}))"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.split() == _install_requires()
    # idempotent: a second run on the same node changes nothing
    stamp = venv / ".shardinfer-requirements"
    before = stamp.stat().st_mtime_ns
    second = subprocess.run(["bash", BOOTSTRAP], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert stamp.stat().st_mtime_ns == before
    # fails loudly, naming the step, when there is no Python 3.11 and no dnf to install it
    bad = subprocess.run(["bash", BOOTSTRAP], capture_output=True, text=True, timeout=60,
                         env={**env, "SHARDINFER_VENV": str(tmp_path / "other"), "SHARDINFER_PYTHON": "python3.99",
                              "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1
    assert "FAILED at step 'install Python 3.11'" in bad.stderr and "no dnf" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_emr_spark_defaults_agree_with_spark_defaults_conf():
    emr = next(c for c in _json("configurations.json") if c["Classification"] == "spark-defaults")["Properties"]
    ours = read_properties(os.path.join(ROOT, "spark-defaults.conf"))
    shared = {k for k in ours if k in emr}
    assert {"spark.python.worker.reuse", "spark.dynamicAllocation.enabled", "spark.task.cpus",
            "spark.executorEnv.OMP_NUM_THREADS", "spark.task.maxFailures", "spark.speculation"} <= shared
    assert {k: emr[k] for k in shared if k != "spark.executor.memoryOverhead"} == \
           {k: ours[k] for k in shared if k != "spark.executor.memoryOverhead"}
    # one GiB of overhead per executor core (a Python worker peaks under 0.9 GB)
    assert emr["spark.executor.memoryOverhead"] == f"{int(emr['spark.executor.cores'])}g"
    # the bootstrap's interpreter is the one Spark is pointed at
    env = next(c for c in _json("configurations.json") if c["Classification"] == "spark-env")
    with open(BOOTSTRAP) as f:
        venv = re.search(r'SHARDINFER_VENV:-([^}]+)\}', f.read()).group(1)
    assert emr["spark.pyspark.python"] == emr["spark.pyspark.driver.python"] == f"{venv}/bin/python"
    assert env["Configurations"][0]["Properties"]["PYSPARK_PYTHON"] == f"{venv}/bin/python"


def _cli_steps_to_api(steps: list[dict]) -> list[dict]:
    """The AWS CLI's `--steps` form (Type CUSTOM_JAR) as the AddJobFlowSteps API takes it."""
    out = []
    for s in steps:
        assert s["Type"] == "CUSTOM_JAR"
        out.append({"Name": s["Name"], "ActionOnFailure": s["ActionOnFailure"],
                    "HadoopJarStep": {"Jar": s["Jar"], "Args": s["Args"]}})
    return out


def test_emr_files_validate_against_botocores_emr_model():
    model = botocore.session.get_session().get_service_model("emr")
    validator = ParamValidator()
    run = validator.validate({"Name": "shardinfer", "Instances": {},
                              "Configurations": _json("configurations.json"),
                              "BootstrapActions": [{"Name": "shardinfer-python", "ScriptBootstrapAction":
                                                    {"Path": "s3://b/shardinfer/bootstrap.sh"}}]},
                             model.operation_model("RunJobFlow").input_shape)
    assert not run.has_errors(), run.generate_report()
    steps = validator.validate({"JobFlowId": "j-1", "Steps": _cli_steps_to_api(_json("steps.json"))},
                               model.operation_model("AddJobFlowSteps").input_shape)
    assert not steps.has_errors(), steps.generate_report()
    # and a broken file is caught the same way (the check can fail)
    broken = validator.validate({"Name": "x", "Instances": {}, "Configurations": [{"Classification": 1}]},
                                model.operation_model("RunJobFlow").input_shape)
    assert broken.has_errors()


def _readme_emr_block() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("### On Amazon EMR"):]
    section = section[:section.index("\n### ", 5)]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_readme_after_the_steps_block_is_valid_bash_on_the_first_blocks_variables():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("### After the steps"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    assert "aws emr wait step-complete" in block and "aws emr terminate-clusters" in block
    assert subprocess.run(["bash", "-n", "-c", block]).returncode == 0
    assert {"CLUSTER_ID", "STEP_ID"} <= set(re.findall(r"^(\w+)=", _readme_emr_block(), re.M))
    assert "--auto-termination-policy" in _readme_emr_block()


def test_readme_emr_commands_run_against_the_local_emr(s3, tmp_path):
    """The README's block, as written (bucket filled in), with the AWS CLI against the local server."""
    bucket = "shardinfer-emr"
    s3.create_bucket(bucket)
    lines = [ln.replace("my-bucket", bucket) if ln.startswith("sed ") else ln.replace("BUCKET", bucket)
             for ln in _readme_emr_block().splitlines()]
    assert not any("BUCKET" in ln for ln in lines if not ln.startswith("sed "))
    # a working folder that looks like the repository's root (make dist writes dist/ here, sed writes steps.json)
    for name in ("Makefile", "scripts", "deploy", "common", "prepare", "infer"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = {**os.environ, **s3.env, "PATH": os.path.dirname(venv_bin("aws")) + os.pathsep + os.environ["PATH"],
           "PYTHON": sys.executable}
    script = "\n".join(lines) + '\necho "CLUSTER_ID=$CLUSTER_ID"\n'
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cluster_id = re.search(r"CLUSTER_ID=(j-\w+)", r.stdout).group(1)

    import boto3

    emr = boto3.client("emr", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    s3c = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    keys = {o["Key"] for o in s3c.list_objects_v2(Bucket=bucket, Prefix="shardinfer/")["Contents"]}
    assert {"shardinfer/shardinfer.zip", "shardinfer/bootstrap.sh", "shardinfer/prepare/main.py",
            "shardinfer/infer/main.py"} <= keys
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Configurations"] == _json("configurations.json")
    assert [a["ScriptPath"] for a in emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]] == \
           [f"s3://{bucket}/shardinfer/bootstrap.sh"]
    steps = {s["Name"]: s for s in emr.list_steps(ClusterId=cluster_id)["Steps"]}
    assert set(steps) == {"shardinfer prepare", "shardinfer infer"}
    assert steps["shardinfer prepare"]["ActionOnFailure"] == "CANCEL_AND_WAIT"
    for step in steps.values():
        cfg = step["Config"]
        assert cfg["Jar"] == "command-runner.jar" and cfg["Args"][0] == "spark-submit"
        # every s3:// path of the code that a step names is an object `aws s3 sync dist/` put there
        code = [a for a in cfg["Args"] if a.startswith(f"s3://{bucket}/shardinfer/")]
        assert len(code) == 2 and all(a[len(f"s3://{bucket}/"):] in keys for a in code)
        assert not any("BUCKET" in a for a in cfg["Args"])
        assert "--deploy-mode" in cfg["Args"] and cfg["Args"][cfg["Args"].index("--deploy-mode") + 1] == "client"


@pytest.mark.parametrize("conf, warns", [
    ({"spark.master": "yarn"}, True),
    ({"spark.master": "yarn", "spark.executor.cores": "4"}, True),
    ({"spark.master": "yarn", "spark.dynamicAllocation.enabled": "true"}, False),
    ({"spark.master": "yarn", "spark.executor.instances": "40"}, False),
    ({"spark.master": "local[*]"}, False),
    ({"spark.master": "spark://127.0.0.1:7077"}, False),
])
def test_executor_layout_warning(conf, warns):
    w = executor_layout_warning(conf)
    assert bool(w) == warns
    if w:
        cores = int(conf.get("spark.executor.cores", 1))
        assert f"2 executors of {cores} core" in w and f"({2 * cores} tasks at a time)" in w


def test_make_dist_needs_only_python_and_lays_out_what_steps_json_names(tmp_path):
    assert shutil.which("make")
    r = subprocess.run(["make", "-s", "dist", "PYTHON=python3"], cwd=ROOT, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"})  # no JAVA_HOME, no virtual environment on the path
    assert r.returncode == 0, r.stdout + r.stderr
    import zipfile

    with zipfile.ZipFile(os.path.join(ROOT, "dist", "shardinfer.zip")) as z:
        names = set(z.namelist())
    assert {"common/manifest.py", "prepare/main.py", "infer/main.py", "infer/task.py"} <= names
    assert not any(n.startswith(("tests/", "testkit/", "bench/")) for n in names)
    for step in _json("steps.json"):
        for arg in step["Args"]:
            if arg.startswith("s3://BUCKET/shardinfer/"):
                assert os.path.exists(os.path.join(ROOT, "dist", arg[len("s3://BUCKET/shardinfer/"):])), arg


GPU_SPARK = {"spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount",
             "spark.executor.resource.gpu.discoveryScript"}


def test_gpu_configurations_are_the_cpu_ones_plus_gpu_scheduling():
    """configurations-gpu.json = configurations.json + Spark's GPU resources + YARN's GPU plugin; not run on a GPU here."""
    from infer.main import check_gpu_settings

    cpu, gpu = _json("configurations.json"), _json("configurations-gpu.json")
    by = {c["Classification"]: c for c in gpu}
    spark = by["spark-defaults"]["Properties"]
    assert {k: v for k, v in spark.items() if k not in GPU_SPARK} == cpu[0]["Properties"]
    assert [c for c in gpu if c["Classification"] not in ("yarn-site", "container-executor", "spark-defaults")] == \
           [c for c in cpu if c["Classification"] != "spark-defaults"]
    check_gpu_settings(spark)  # what infer --device gpu asks of Spark is there
    # four tasks share an executor's GPU (one per core): decoding runs on the cores while the GPU runs the model
    assert float(spark["spark.task.resource.gpu.amount"]) * int(spark["spark.executor.cores"]) == \
           float(spark["spark.executor.resource.gpu.amount"])
    assert spark["spark.executor.resource.gpu.discoveryScript"] == "./discover-gpus.sh"  # shipped with --files
    assert os.access(os.path.join(EMR, "discover-gpus.sh"), os.X_OK)
    assert by["yarn-site"]["Properties"]["yarn.resource-types"] == "yarn.io/gpu"
    model = botocore.session.get_session().get_service_model("emr")
    report = ParamValidator().validate({"Name": "shardinfer-gpu", "Instances": {}, "Configurations": gpu},
                                       model.operation_model("RunJobFlow").input_shape)
    assert not report.has_errors(), report.generate_report()


def test_bootstrap_gpu_argument(tmp_path):
    """--gpu swaps MXNet for its CUDA build of the same release (PyPI serves it); anything else is refused."""
    with open(BOOTSTRAP) as f:
        text = f.read()
    swap = re.search(r'--gpu\) REQUIREMENTS=\("\$\{REQUIREMENTS\[@\]/#(\S+?)/(\S+?)\}"\)', text)
    assert swap and swap.group(1) in _install_requires() and swap.group(2) == "mxnet-cu112==1.9.1"
    from common.devices import GPU_MXNET

    assert GPU_MXNET == swap.group(2)  # the error a CPU-only node gives names the same build
    bad = subprocess.run(["bash", BOOTSTRAP, "--cuda"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SHARDINFER_VENV": str(tmp_path / "v"), "SHARDINFER_SUDO": ""})
    assert bad.returncode == 2 and "unknown argument '--cuda' (expected none, or --gpu)" in bad.stderr
    assert not (tmp_path / "v").exists()
    index = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "mxnet-cu112",
                            "--disable-pip-version-check"], capture_output=True, text=True, timeout=120)
    if index.returncode != 0:
        pytest.skip(f"PyPI not reachable: {index.stderr.strip()[-200:]}")
    assert "1.9.1" in index.stdout
