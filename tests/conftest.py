"""Shared fixtures: one local S3 server, one test model, one local Spark, one hostile bucket.

Everything is real: moto's S3 server on 127.0.0.1, Spark in local mode, RecordIO and Parquet
files, the zoo-format model from testkit.zoo_builder loaded by the production code.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from common import storage
from testkit import jvmcds, localdev, zoo_builder
from testkit.localdev import LocalS3, upload_cifar_like
from testkit.testdata import cifar_like_image, cifar_like_png
from testkit.yarn import TEST_JVM_OPTIONS_VAR

MODEL_BUCKET = "models"


# The short-lived JVMs the tests start (a standalone cluster's master and workers; testkit.yarn's cluster and each
# YARN application's containers) run with C1 alone and the serial collector: compiling less costs them less CPU, with
# four lines sharing two cores (the systems line 1,352 -> 1,214 s, clean-clone runs). Not spark-submit's JVMs nor
# the session's Spark, which lives for a whole line: given them too (one run), their CPU went 175 -> 280 s.
# Tests only: the jobs' own settings (spark-defaults.conf, EMR's) are untouched.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# The processes the tests start import testkit/worker_site/sitecustomize.py: their Python re-reads a zip's
# directory only when the file changed, not before every Spark task (~15 % of the Spark lines' CPU; see that file).
WORKER_SITE = os.path.join(localdev.ROOT, "testkit", "worker_site")


def pytest_configure(config):
    """Before any JVM starts: the short-lived test JVMs' options (unless the caller set their own); testkit.yarn
    gives them to its cluster and to each application's containers (its TEST_JVM_OPTIONS_VAR).  Every
    spark-submit's JVM (the session's Spark too) maps the archive of Spark's classes that ``make test`` builds
    (testkit/jvmcds.py), where it exists.  Every Python process started from here on imports WORKER_SITE's
    sitecustomize (the node environment's runs drop PYTHONPATH, and so run without it)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (WORKER_SITE, os.environ.get("PYTHONPATH")) if p)
    for var in ("SPARK_DAEMON_JAVA_OPTS", TEST_JVM_OPTIONS_VAR):
        os.environ.setdefault(var, TEST_JVM_OPTIONS)
    cds = jvmcds.options()
    if cds:
        os.environ.setdefault("SPARK_SUBMIT_OPTS", cds)


def pytest_collection_modifyitems(items):
    """A test that uses the session's SparkContext (directly or through a fixture) is a `spark` test: the
    Spark 3.5 line (make test-spark35) runs those only."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("spark") is None:
            item.add_marker(pytest.mark.spark)


def _spark_active() -> bool:
    if "pyspark" not in sys.modules:
        return False
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


@pytest.fixture(autouse=True)
def _spark_marker_is_honest(request):
    """A test that starts Spark (in process or by spark-submit) without the `spark` marker would silently be
    left out of the Spark 3.5 line: fail it instead."""
    submits, active = localdev.SPARK_SUBMITS[0], _spark_active()
    yield
    if request.node.get_closest_marker("spark") is None:
        started = localdev.SPARK_SUBMITS[0] != submits or (not active and _spark_active())
        assert not started, f"{request.node.nodeid} starts Spark: mark it @pytest.mark.spark"


@pytest.fixture(scope="session")
def s3():
    """A running local S3 server; its endpoint and fake credentials are put in os.environ."""
    server = LocalS3().start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    server.create_bucket(MODEL_BUCKET)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def model_files() -> dict[str, bytes]:
    """The test ResNet-18's three files (seed 0), built once per test session."""
    return zoo_builder.build_model(seed=0)


@pytest.fixture(scope="session")
def digits_files() -> dict[str, bytes]:
    """The trained digits classifier's three files (testkit/digits_model.py, ~15 s), once per test session."""
    from testkit import digits_model

    return digits_model.train()


@pytest.fixture(scope="session")
def model_uris(s3, model_files) -> dict[str, str]:
    """``{"sym", "params", "labels"}`` URIs of the test model in the local S3."""
    uris = {}
    for name, data in model_files.items():
        uri = f"s3://{MODEL_BUCKET}/resnet-18/{name}"
        storage.write_bytes(uri, data, s3.endpoint_url)
        uris[name] = uri
    return {"sym": uris[zoo_builder.SYMBOL_FILE], "params": uris[zoo_builder.PARAMS_FILE],
            "labels": uris[zoo_builder.SYNSET_FILE]}


@pytest.fixture(scope="session")
def trino(s3, tmp_path_factory):
    """One single-node Trino 476 (testkit/trino) with the catalog ``glue`` on the local server's Glue and S3;
    stopped at the end of the session.  Skips, saying why, without Java 24+ or Maven."""
    from testkit.trino import TrinoServer, TrinoUnavailable

    server = TrinoServer(str(tmp_path_factory.mktemp("trino")), s3.endpoint_url, s3.env["AWS_ACCESS_KEY_ID"],
                         s3.env["AWS_SECRET_ACCESS_KEY"], s3.env["AWS_DEFAULT_REGION"])
    try:
        server.start()
    except TrinoUnavailable as e:
        pytest.skip(f"Trino not available: {e}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def spark(s3):
    """An in-process local[2] SparkContext whose Python workers run this interpreter."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkConf, SparkContext

    conf = (SparkConf().setMaster("local[2]").setAppName("shardinfer-tests")
            .set("spark.python.worker.reuse", "true").set("spark.ui.enabled", "false"))
    sc = SparkContext.getOrCreate(conf)
    sc.setLogLevel("ERROR")
    yield sc
    sc.stop()


def png_bytes(img: Image.Image) -> bytes:
    """Encode a Pillow image as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def hostile_objects() -> dict[str, tuple[bytes, str | None]]:
    """Objects to put beside the good images: ``{relative key: (bytes, expected skip reason or None)}``.

    A reason of None means: a valid image that must land in a shard.
    """
    base = cifar_like_image(7, seed=3)
    rgb16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    good = png_bytes(base)
    return {
        "sub/": (b"", "folder marker"),
        "readme.txt": (b"not an image", "not a .png key"),
        "zero.png": (b"", "empty object"),
        "truncated.png": (good[: len(good) // 2], "undecodable"),
        "jpeg-named.png": (_jpeg(base), "content is JPEG, not an allowed format (png)"),
        "gray.png": (png_bytes(base.convert("L")), None),
        "rgba.png": (png_bytes(base.convert("RGBA")), None),
        "palette.png": (png_bytes(base.convert("P", palette=Image.ADAPTIVE)), None),
        "sixteen-bit.png": (png_bytes(Image.fromarray(rgb16)), None),
        "large-640x480.png": (png_bytes(base.resize((640, 480))), None),
        "with space.png": (cifar_like_png(1001, seed=3), None),
        "ünïcødé-猫.png": (cifar_like_png(1002, seed=3), None),
        "UPPER.PNG": (cifar_like_png(1003, seed=3), None),
    }


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


GOOD_IMAGES = 200


@pytest.fixture(scope="session")
def hostile_bucket(s3) -> dict:
    """A bucket with 200 generated PNGs and the hostile objects, under ``in/``."""
    bucket = "hostile"
    s3.create_bucket(bucket)
    prefix = f"s3://{bucket}/in/"
    uploaded = upload_cifar_like(prefix, GOOD_IMAGES, seed=5, endpoint_url=s3.endpoint_url)
    objects = {storage.parse_s3(u).key: (storage.read_bytes(u), None) for u in uploaded}
    for rel, (data, reason) in hostile_objects().items():
        key = f"in/{rel}"
        storage.write_bytes(f"s3://{bucket}/{key}", data, s3.endpoint_url)
        objects[key] = (data, reason)
    return {"bucket": bucket, "prefix": prefix, "objects": objects}


@pytest.fixture(scope="session")
def prepared(spark, hostile_bucket, s3) -> dict:
    """prepare run once (in-process, local[2]) over the hostile bucket."""
    from prepare.main import main

    out = f"s3://{hostile_bucket['bucket']}/shards/t/"
    rc = main(["--input", hostile_bucket["prefix"], "--output", out])
    assert rc == 0
    return {**hostile_bucket, "output": out, "manifest": out + "manifest.parquet", "skipped": out + "skipped.parquet"}
