"""common/storage.py against the local S3 server and local files: writes and reads, conditional writes,
metadata, ranges, listings, deletes, errors named, the Store's retries and encryption reaching the requests;
model files over http."""

from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest

from common import storage
from common.errors import ModelError
from common.model import Predictor
from common.model_files import ModelSpec
from testkit import zoo_builder


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


def test_writes_reads_metadata_and_ranges_on_s3_and_local_files(s3, tmp_path):
    """The same calls on s3:// and on a local folder give the same answers (a local folder imitates S3's
    metadata in a sidecar), compared with what boto3 itself reads back on S3."""
    s3.create_bucket("unit-rw")
    for base in ("s3://unit-rw/d", str(tmp_path / "d")):
        uri = storage.join(base, "a", "b.bin")
        assert storage.read_metadata(uri) is None and not storage.exists(uri)
        assert storage.put_if_absent(uri, b"0123456789", {"k": "v"}, content_type="application/x-test") is True
        assert storage.put_if_absent(uri, b"other", {"k": "w"}) is False  # never overwritten
        assert storage.read_bytes(uri) == b"0123456789"
        assert storage.read_metadata(uri) == {"k": "v"}
        assert storage.read_range(uri, 2, 5) == b"234"
        storage.write_bytes(uri, b"new", metadata={"k": "x"})  # a plain write replaces
        assert storage.read_bytes(uri) == b"new" and storage.read_metadata(uri) == {"k": "x"}
        assert storage.exists(uri)
    head = storage.s3_client().get_object(Bucket="unit-rw", Key="d/a/b.bin")
    assert head["Body"].read() == b"new" and head["Metadata"] == {"k": "x"}


def test_listing_levels_and_deletes(s3):
    s3.create_bucket("unit-ls")
    keys = ["p/a/1.png", "p/a/2.png", "p/b/3.png", "p/top.png"]
    for k in keys:
        storage.write_bytes(f"s3://unit-ls/{k}", b"x" * len(k))
    listed = list(storage.list_objects("s3://unit-ls/p/"))
    assert [o.key for o in listed] == sorted(keys) and [o.size for o in listed] == [len(k) for k in sorted(keys)]
    objects, folders = storage.list_level("s3://unit-ls/p/")
    assert [o.key for o in objects] == ["p/top.png"] and folders == ["s3://unit-ls/p/a/", "s3://unit-ls/p/b/"]
    page, more = storage.list_page("s3://unit-ls/p/", max_keys=2)
    assert [o.key for o in page] == sorted(keys)[:2] and more is True
    assert storage.delete_objects([f"s3://unit-ls/{k}" for k in keys[:3]]) == 3
    assert [o.key for o in storage.list_objects("s3://unit-ls/")] == ["p/top.png"]
    storage.delete("s3://unit-ls/p/top.png")
    assert list(storage.list_objects("s3://unit-ls/")) == []


def test_a_store_carries_its_endpoint_retries_and_encryption(s3):
    """The Store a job builds from its flags decides how every request goes: its endpoint and retries reach the
    client, its encryption each write that passes it (as S3 reports back)."""
    store = storage.Store(s3.endpoint_url, storage.Encryption("aws:kms", "alias/unit-test"), max_attempts=3)
    client = storage.s3_client(store)
    # botocore counts the first request too: max_attempts retries are max_attempts + 1 requests in all
    assert client.meta.endpoint_url == s3.endpoint_url and client.meta.config.retries["total_max_attempts"] == 4
    assert storage.s3_client(storage.Store(s3.endpoint_url)).meta.config.retries["total_max_attempts"] == \
        storage.DEFAULT_ATTEMPTS + 1
    s3.create_bucket("unit-sse")
    storage.write_bytes("s3://unit-sse/k", b"x", store, encryption=store.encryption)
    storage.write_bytes("s3://unit-sse/plain", b"x", store, encryption=None)
    c = storage.s3_client(s3.endpoint_url)
    sealed = c.head_object(Bucket="unit-sse", Key="k")
    assert sealed.get("ServerSideEncryption") == "aws:kms" and "alias/unit-test" in sealed.get("SSEKMSKeyId", "")
    assert c.head_object(Bucket="unit-sse", Key="plain").get("ServerSideEncryption") != "aws:kms"
    with pytest.raises(storage.UsageError, match="--sse-kms-key-id needs --sse aws:kms"):
        storage.Encryption(None, "alias/k")
    with pytest.raises(storage.UsageError, match="max_attempts must be at least 1"):
        storage.Store(max_attempts=0)


def test_an_unreachable_endpoint_is_named_in_seconds():
    with pytest.raises(storage.StorageError, match=r"s3://b/k: cannot reach the S3 endpoint http://127\.0\.0\.1:9"):
        storage.check_bucket("s3://b/k", storage.Store("http://127.0.0.1:9"))
