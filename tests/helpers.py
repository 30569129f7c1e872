"""Helpers shared by the job-level tests: run the jobs, and read back what a run left in S3."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections import Counter
from typing import Optional

import pyarrow.parquet as pq

from common import status, storage
from common.manifest import Manifest, ShardEntry, iter_shards
from common.manifest import read_manifest as read_index
from common.output import META_INVOCATION, partition_dir
from testkit.localdev import ROOT, run_spark_submit, spark_env, upload_cifar_like

# Where a test checks plumbing (keys, parts, statuses, retries), not the model's answers, infer runs the
# test ResNet-18 on 64x64 input: the same layers and code path at a twelfth of the forward pass's cost.
PLUMBING_IMAGE_SIZE = 64


def infer_args(manifest: str, model_uris: dict, output: str, *extra: str,
               image_size: Optional[int] = PLUMBING_IMAGE_SIZE) -> list[str]:
    """infer's command-line arguments for the test model (``image_size`` None: the model's own 224)."""
    size = ["--image-size", str(image_size)] if image_size and "--image-size" not in extra else []
    return ["--manifest", manifest, "--sym-url", model_uris["sym"], "--param-url", model_uris["params"],
            "--label-url", model_uris["labels"], "--output", output, *size, *extra]


def prepared(s3, bucket: str, images: int, seed: int) -> str:
    """A fresh bucket with ``images`` generated PNGs under ``in/``, packed by prepare (in process, shards of 4)
    into ``shards/``; returns the manifest's URI."""
    from prepare.main import main

    s3.create_bucket(bucket)
    upload_cifar_like(f"s3://{bucket}/in/", images, seed=seed, endpoint_url=s3.endpoint_url)
    assert main(["--input", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/shards/", "--batch", "4"]) == 0
    return f"s3://{bucket}/shards/manifest.parquet"


def hand_packed(bucket: str, seed: int = 51) -> dict:
    """A manifest packed here, not by prepare: 64 + 64 + 21 generated PNGs under ``in/`` of ``bucket`` (which
    must exist), the sixth of the last shard truncated inside its shard (an image infer cannot decode, which
    prepare would have skipped).  Returns ``{"manifest", "images", "bad_key"}``."""
    import hashlib

    from common.manifest import write_manifest
    from common.shard import pack_shard
    from testkit.testdata import cifar_like_png

    entries, k = [], 0
    for shard_id, n in enumerate((64, 64, 21)):
        keys = tuple(f"in/{k + i:05d}.png" for i in range(n))
        pngs = [cifar_like_png(k + i, seed=seed) for i in range(n)]
        if shard_id == 2:
            pngs[5] = pngs[5][:40]  # truncated inside the shard
        k += n
        data = pack_shard(pngs)
        uri = f"s3://{bucket}/shards/shards/shard-{shard_id:05d}.rec"
        storage.write_bytes(uri, data)
        entries.append(ShardEntry(shard_id, uri, n, len(data), hashlib.sha256(data).hexdigest(), keys))
    write_manifest(entries, f"s3://{bucket}/shards/", f"s3://{bucket}/in/", 64)
    return {"manifest": f"s3://{bucket}/shards/manifest.parquet", "images": 149, "bad_key": "in/00133.png"}


def upload_model(prefix: str, seed: int) -> dict[str, str]:
    """The test ResNet-18 built with ``seed`` (another seed: another model) under ``prefix``; its model URIs."""
    from testkit import zoo_builder

    uris = {}
    for name, data in zoo_builder.build_model(seed=seed).items():
        uris[name] = storage.join(prefix, name)
        storage.write_bytes(uris[name], data)
    return {"sym": uris[zoo_builder.SYMBOL_FILE], "params": uris[zoo_builder.PARAMS_FILE],
            "labels": uris[zoo_builder.SYNSET_FILE]}


def athena_queries(name: str = "athena-queries.sql") -> dict[str, str]:
    """``{name: sql}`` of docs/athena-queries.sql, or another file of docs/ (each block after ``-- name: NAME``)."""
    import os

    out = {}
    with open(os.path.join(ROOT, "docs", name)) as f:
        for block in re.split(r"^-- name: ", f.read(), flags=re.M)[1:]:
            name, body = block.split("\n", 1)
            out[name.strip()] = body.strip().rstrip(";")
    return out


def submit(script: str, args: list[str], env: dict, *conf: str) -> subprocess.CompletedProcess:
    """spark-submit on local[2] unless ``conf`` says otherwise."""
    conf = conf or ("spark.master=local[2]",)
    return run_spark_submit(script, args, env, extra_conf=conf)


def run_main(script: str, args: list[str], capsys) -> subprocess.CompletedProcess:
    """A job's ``main(args)`` in this process (its output from ``capsys``): enough for errors raised before
    Spark starts, without a cold interpreter importing MXNet for each."""
    import importlib

    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    capsys.readouterr()
    rc = module.main(args)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(script, rc, out.out, out.err)


def run_python(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run a job's main.py with plain Python: enough for errors raised before Spark starts."""
    return subprocess.run([sys.executable, f"{ROOT}/{script}", *args], env=spark_env(env), capture_output=True,
                          text=True, timeout=300)


class LoadedManifest:
    """A manifest's index with every shard row read (test manifests are small): ``.entries`` and the index's fields."""

    def __init__(self, index: Manifest) -> None:
        self.index = index
        self.entries: tuple[ShardEntry, ...] = tuple(iter_shards(index))

    def __getattr__(self, name: str):
        return getattr(self.index, name)


def read_manifest(uri: str) -> LoadedManifest:
    """Read a manifest (index and every shard row) from the local S3."""
    return LoadedManifest(read_index(uri))


def bucket_of(uri: str) -> str:
    """The bucket of an s3:// URI."""
    return storage.parse_s3(uri).bucket


def part_objects(output: str, run_id: str) -> dict[str, storage.ObjectInfo]:
    """``{key: ObjectInfo}`` of the run's part files."""
    return {o.key: o for o in storage.list_objects(partition_dir(output, run_id))}


def part_versions(output: str, run_id: str) -> dict[str, tuple]:
    """``{key: (ETag, invocation that wrote it)}`` of the run's part files, straight from S3: every infer
    invocation has its own id, so a part rewritten by a later one differs here (no waiting out
    LastModified's one-second resolution)."""
    client = storage.s3_client()
    out = {}
    for key in part_objects(output, run_id):
        head = client.head_object(Bucket=bucket_of(output), Key=key)
        out[key] = (head["ETag"], head["Metadata"].get(META_INVOCATION))
    return out


def output_rows(output: str, run_id: str) -> list[dict]:
    """Every row of the run's part files."""
    rows = []
    for key in part_objects(output, run_id):
        data = storage.read_bytes(f"s3://{bucket_of(output)}/{key}")
        rows += pq.read_table(io.BytesIO(data)).to_pylist()
    return rows


def assert_exactly_once(manifest: LoadedManifest, output: str, run_id: str) -> None:
    """One part file per shard, every manifest key in exactly one row, rows in record order per shard."""
    parts = part_objects(output, run_id)
    prefix = storage.parse_s3(output).key
    assert set(parts) == {f"{prefix}run_id={run_id}/part-{e.shard_id:05d}.parquet" for e in manifest.entries}
    rows = output_rows(output, run_id)
    counts = Counter(r["key"] for r in rows)
    assert set(counts) == {k for e in manifest.entries for k in e.keys}
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    assert len(rows) == manifest.num_images
    for e in manifest.entries:
        got = sorted((r["record"], r["key"]) for r in rows if r["shard_id"] == e.shard_id)
        assert got == list(enumerate(e.keys))


def run_id_from(stdout: str) -> str:
    """The run id infer announced."""
    return re.search(r"run_id=(\S+);", stdout).group(1)


def statuses(output: str, run_id: str) -> dict[int, dict]:
    """``{shard_id: latest status record}`` of a run, from its status files."""
    return {r["shard_id"]: r for r in status.records(status.read_latest(output, run_id))}
