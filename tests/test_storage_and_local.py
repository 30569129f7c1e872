"""Storage edge cases, model loading over http, and both jobs on local paths instead of s3://."""

from __future__ import annotations

import functools
import http.server
import io
import os
import threading

import pyarrow.parquet as pq
import pytest

from common import storage
from common.model import ModelError, ModelSpec, Predictor
from testkit import zoo_builder
from testkit.testdata import cifar_like_png


def test_listing_is_paginated_and_complete(s3):
    s3.create_bucket("pages")
    keys = [f"p/{i:03d}.png" for i in range(23)]
    for k in reversed(keys):
        storage.write_bytes(f"s3://pages/{k}", b"x")
    assert [o.key for o in storage.list_objects("s3://pages/p/", page_size=5)] == keys


def test_missing_object_and_bucket_are_named(s3):
    with pytest.raises(storage.NotFound, match=r"s3://pages/none: no such object"):
        storage.read_bytes("s3://pages/none")
    with pytest.raises(storage.NotFound, match=r"s3://no-such-bucket-x/k: bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-x/k")
    assert storage.exists("s3://pages/none") is False


@pytest.fixture
def http_model(tmp_path, model_files):
    for name, data in model_files.items():
        (tmp_path / name).write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_model_loads_over_http_and_404_is_named(http_model):
    spec = ModelSpec(f"{http_model}/{zoo_builder.SYMBOL_FILE}", f"{http_model}/{zoo_builder.PARAMS_FILE}",
                     f"{http_model}/{zoo_builder.SYNSET_FILE}")
    p = Predictor(spec)
    assert p.model_id.startswith("resnet-18@sha256:") and len(p.labels) == 1000
    missing = ModelSpec(spec.sym_url, f"{http_model}/resnet-18-0001.params", spec.label_url)
    with pytest.raises(ModelError, match=r"cannot read model params: http://127\.0\.0\.1:\d+/resnet-18-0001\.params: HTTP 404"):
        Predictor(missing)


def test_both_jobs_on_local_paths(spark, tmp_path, model_files):
    from infer.main import main as infer_main
    from prepare.main import main as prepare_main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"{i}.png").write_bytes(cifar_like_png(i, seed=21))
    (images / "notes.txt").write_text("x")
    model = tmp_path / "model"
    model.mkdir()
    for name, data in model_files.items():
        (model / name).write_bytes(data)
    shards = tmp_path / "shards"
    assert prepare_main(["--input", str(images), "--output", str(shards), "--batch", "2"]) == 0
    out = tmp_path / "pred"
    assert infer_main(["--manifest", str(shards / "manifest.parquet"), "--sym-url", str(model / zoo_builder.SYMBOL_FILE),
                       "--param-url", str(model / zoo_builder.PARAMS_FILE),
                       "--label-url", str(model / zoo_builder.SYNSET_FILE), "--output", str(out),
                       "--run-id", "local"]) == 0
    parts = sorted((out / "run_id=local").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    rows = [r for p in parts for r in pq.read_table(io.BytesIO(p.read_bytes())).to_pylist()]
    assert sorted(r["key"] for r in rows) == sorted(str(images / f"{i}.png") for i in range(5))
    skipped = pq.read_table(str(shards / "skipped.parquet")).to_pylist()
    assert skipped == [{"key": str(images / "notes.txt"), "reason": "not a .png key"}]


def test_every_write_of_the_jobs_says_its_encryption():
    """No module-level state decides how an object is written: each call of storage's three writes in the jobs'
    packages passes ``encryption=`` (the step's --sse from its settings, or None where a command has no --sse), so
    a new write cannot silently go out unencrypted.  Can fail: it finds the calls by parsing the code."""
    import ast

    from tests.helpers import ROOT

    writes = {"write_bytes", "put_if_absent", "upload_file"}
    calls, missing = 0, []
    for package in ("common", "infer", "prepare", "manifests"):
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if not name.endswith(".py") or (package, name) == ("common", "storage.py"):
                continue
            path = os.path.join(ROOT, package, name)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writes \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "storage":
                    calls += 1
                    if not any(k.arg == "encryption" for k in node.keywords):
                        missing.append(f"{package}/{name}:{node.lineno}")
    assert calls >= 20 and missing == []
