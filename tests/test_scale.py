"""Scale: prepare's listing fan-out and --input-list, manifests of format 1 and 2 end to end, the
synthetic manifest with --dry-run, and how many requests --only-failed and the report make."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import urllib.parse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import storage
from common.manifest import read_manifest as read_index
from common.manifest import read_shards
from manifests.make_examples import v1_manifest_bytes
from testkit.faultproxy import FaultProxy
from testkit.localdev import ROOT, upload_cifar_like
from testkit.testdata import cifar_like_png
from tests.helpers import assert_exactly_once, infer_args, read_manifest

# listing, key lists, manifest formats and request counts are ours, not Spark's: the same on either Spark line; run
# once, on the Spark 3.5 line (EMR 7's Spark), to spread the load
pytestmark = [pytest.mark.once, pytest.mark.once_on_spark35]

BUCKET = "archive"
SUBS = 8
PER_SUB = 60  # the fan-out and the lists are what is checked: 482 images do it as well as 2,002


def _keys(prefix: str) -> list[storage.ObjectInfo]:
    return list(storage.list_objects(prefix))


@pytest.fixture(scope="module")
def archive(s3, spark):
    """480 PNGs in 8 sub-prefixes, a few objects directly under in/, prepared by prefix listing
    through a counting proxy."""
    from prepare.main import main

    s3.create_bucket(BUCKET)
    for c in range(SUBS):
        upload_cifar_like(f"s3://{BUCKET}/in/c{c}/", PER_SUB, seed=100 + c, endpoint_url=s3.endpoint_url)
    storage.write_bytes(f"s3://{BUCKET}/in/top.png", cifar_like_png(1, seed=9))
    storage.write_bytes(f"s3://{BUCKET}/in/c3/with space+plus.png", cifar_like_png(2, seed=9))
    storage.write_bytes(f"s3://{BUCKET}/in/notes.txt", b"not an image")
    with FaultProxy(s3.endpoint_url) as proxy:
        assert main(["--input", f"s3://{BUCKET}/in/", "--output", f"s3://{BUCKET}/by-prefix/",
                     "--s3-endpoint-url", proxy.endpoint_url]) == 0
    objects = _keys(f"s3://{BUCKET}/in/")
    return {"objects": objects, "lines": proxy.lines, "manifest": f"s3://{BUCKET}/by-prefix/manifest.parquet",
            "index": read_index(f"s3://{BUCKET}/by-prefix/manifest.parquet")}


def test_prefix_listing_fans_out_over_sub_prefixes(archive):
    lists = [ln for ln in archive["lines"] if ln.startswith(f"GET /{BUCKET}?") and "list-type=2" in ln]
    top = [ln for ln in lists if "prefix=in/&" in ln + "&" and "delimiter=/" in ln]
    assert len(top) == 1, lists  # the driver looks at one level
    for c in range(SUBS):  # each sub-prefix: one page looked at by the driver, listed in full by a task, once
        mine = [ln for ln in lists if f"prefix=in/c{c}/" in ln]
        assert sorted("delimiter" in ln for ln in mine) == [False, True], mine
    m = archive["index"]
    assert m.version == "3" and m.num_images == SUBS * PER_SUB + 2 and m.num_skipped == 1
    entries = read_manifest(archive["manifest"]).entries
    keys = [k for e in entries for k in e.keys]
    assert keys == sorted(o.key for o in archive["objects"] if o.key.endswith(".png"))


def _inventory_rows(objects) -> list[dict]:
    return [{"bucket": BUCKET, "key": o.key, "size": o.size, "e_tag": o.etag} for o in objects]


def _write_inventories(objects, s3) -> dict[str, str]:
    """An S3 Inventory (CSV, gzip, URL-encoded keys) and one in Parquet, as AWS lays them out, plus a key list."""
    s3.create_bucket("inventory-dest")
    rows = _inventory_rows(objects)
    out = {}
    # CSV: two data files, no header, the columns of fileSchema, keys URL-encoded
    files = []
    for i, chunk in enumerate((rows[: len(rows) // 2], rows[len(rows) // 2 :])):
        buf = io.StringIO()
        w = csv.writer(buf, quoting=csv.QUOTE_ALL)
        for r in chunk:
            w.writerow([r["bucket"], urllib.parse.quote_plus(r["key"], safe="/"), r["size"], "2026-11-27T00:00:00.000Z",
                        r["e_tag"], "STANDARD"])
        key = f"inv/{BUCKET}/daily/data/csv-{i}.csv.gz"
        data = gzip.compress(buf.getvalue().encode())
        storage.write_bytes(f"s3://inventory-dest/{key}", data)
        files.append({"key": key, "size": len(data), "MD5checksum": "x"})
    manifest = {"sourceBucket": BUCKET, "destinationBucket": "arn:aws:s3:::inventory-dest", "version": "2016-11-30",
                "creationTimestamp": "1764201600000", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass", "files": files}
    storage.write_bytes("s3://inventory-dest/inv/csv/manifest.json", json.dumps(manifest).encode())
    out["csv"] = "s3://inventory-dest/inv/csv/manifest.json"
    # Parquet: one data file with AWS's lower-case column names
    t = pa.Table.from_pylist([{**r, "last_modified_date": None, "storage_class": "STANDARD", "is_latest": True,
                               "is_delete_marker": False} for r in rows])
    buf = io.BytesIO()
    pq.write_table(t, buf)
    storage.write_bytes("s3://inventory-dest/inv/parquet/data/p-0.parquet", buf.getvalue())
    manifest = {**manifest, "fileFormat": "Parquet", "fileSchema": "message s3.inventory { ... }",
                "files": [{"key": "inv/parquet/data/p-0.parquet", "size": len(buf.getvalue()), "MD5checksum": "x"}]}
    storage.write_bytes("s3://inventory-dest/inv/parquet/manifest.json", json.dumps(manifest).encode())
    out["parquet"] = "s3://inventory-dest/inv/parquet/manifest.json"
    # a plain key list: CSV with a header, key only
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["key"])
    for r in rows:
        w.writerow([r["key"]])
    storage.write_bytes("s3://inventory-dest/lists/keys.csv", buf.getvalue().encode())
    out["keys"] = "s3://inventory-dest/lists/keys.csv"
    return out


def test_input_list_inventories_and_key_lists_give_the_same_manifest_without_listing(archive, s3, spark):
    from prepare.main import main

    lists = _write_inventories(archive["objects"], s3)
    for name, uri in lists.items():
        with FaultProxy(s3.endpoint_url) as proxy:
            out = f"s3://{BUCKET}/by-{name}/"
            assert main(["--input", f"s3://{BUCKET}/in/", "--input-list", uri, "--output", out,
                         "--s3-endpoint-url", proxy.endpoint_url]) == 0
        assert not [ln for ln in proxy.lines if "list-type=2" in ln and "prefix=in" in ln], name  # never listed
        m = read_index(out + "manifest.parquet")
        assert m.manifest_id == archive["index"].manifest_id, name  # same objects, same shards
        assert (m.num_images, m.num_skipped) == (archive["index"].num_images, 1)
    reasons = pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/by-csv/skipped.parquet"))).to_pylist()
    assert reasons == [{"key": "in/notes.txt", "reason": "not a .png key"}]


def _driver_side(lines: list[str]) -> list[str]:
    """Requests other than image GETs and shard PUTs (what could grow with the number of images)."""
    return sorted(ln.split("?")[0] for ln in lines
                  if not (ln.startswith(f"GET /{BUCKET}/in/") or "/shards/shard-" in ln))


def test_requests_apart_from_images_do_not_grow_with_the_list(archive, s3, spark):
    from prepare.main import main

    counts = {}
    for n in (100, 400):
        keys = sorted(o.key for o in archive["objects"] if o.key.endswith(".png"))[:n]
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": keys}), buf)
        storage.write_bytes(f"s3://{BUCKET}/lists/first-{n}.parquet", buf.getvalue())
        with FaultProxy(s3.endpoint_url) as proxy:
            assert main(["--input", f"s3://{BUCKET}/in/", "--input-list", f"s3://{BUCKET}/lists/first-{n}.parquet",
                         "--output", f"s3://{BUCKET}/first-{n}/", "--shards-per-part", "64",
                         "--s3-endpoint-url", proxy.endpoint_url]) == 0
        assert sum(ln.startswith(f"GET /{BUCKET}/in/") for ln in proxy.lines) == n  # each image read once
        counts[n] = [ln.replace(str(n), "N") for ln in _driver_side(proxy.lines)]
    assert counts[100] == counts[400] and len(counts[100]) < 15, counts


def test_a_key_list_naming_a_key_outside_input_is_refused(archive, spark, capsys):
    from prepare.main import main

    storage.write_bytes(f"s3://{BUCKET}/lists/outside.csv", b"key\nin/top.png\nelsewhere/x.png\n")
    assert main(["--input", f"s3://{BUCKET}/in/", "--input-list", f"s3://{BUCKET}/lists/outside.csv",
                 "--output", f"s3://{BUCKET}/outside/"]) == 2
    assert "keys outside --input" in capsys.readouterr().err and not storage.exists(f"s3://{BUCKET}/outside/manifest.parquet")


def test_a_batch_of_only_undecodable_images_is_an_empty_shard_and_infer_writes_an_empty_part(s3, spark, model_uris):
    from infer.main import main as infer
    from prepare.main import main as prepare

    s3.create_bucket("allbad")
    upload_cifar_like("s3://allbad/in/", 2, seed=4, endpoint_url=s3.endpoint_url)  # 00000.png, 00001.png
    for name in ("zz-a.png", "zz-b.png"):
        storage.write_bytes(f"s3://allbad/in/{name}", b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert prepare(["--input", "s3://allbad/in/", "--output", "s3://allbad/s/", "--batch", "2"]) == 0
    m = read_manifest("s3://allbad/s/manifest.parquet")
    assert [e.num_records for e in m.entries] == [2, 0]
    assert infer(infer_args("s3://allbad/s/manifest.parquet", model_uris, "s3://allbad/p/", "--run-id", "r")) == 0
    assert_exactly_once(m, "s3://allbad/p/", "r")
    assert pq.read_table(io.BytesIO(storage.read_bytes("s3://allbad/p/run_id=r/part-00001.parquet"))).num_rows == 0


def test_a_version_1_manifest_runs_end_to_end(archive, model_uris, spark):
    from infer.main import main

    loaded = read_manifest(archive["manifest"])
    v1 = v1_manifest_bytes(list(loaded.entries), loaded.manifest_id, loaded.input_uri, 64, 1)
    storage.write_bytes(f"s3://{BUCKET}/v1/manifest.parquet", v1)
    out = f"s3://{BUCKET}/pred-v1/"
    assert main(infer_args(f"s3://{BUCKET}/v1/manifest.parquet", model_uris, out, "--run-id", "v1",
                           "--shards", "0-5")) == 0
    assert main(infer_args(f"s3://{BUCKET}/v1/manifest.parquet", model_uris, out, "--run-id", "v1",
                           "--only-missing")) == 0
    assert_exactly_once(loaded, out, "v1")


def test_only_failed_and_the_report_read_a_few_objects_however_many_shards(archive, model_uris, s3, capsys):
    """8 shards, 2 damaged: the failed rerun and its report read run.json and the status files, not one
    object per shard (the per-shard records of before cost 16 GETs here)."""
    from infer.main import main

    out = f"s3://{BUCKET}/pred-few/"
    damaged = [e.uri for e in read_shards(archive["index"], [2, 6])]
    saved = {u: storage.read_bytes(u) for u in damaged}
    try:
        for u in damaged:
            storage.write_bytes(u, b"damaged")
        assert main(infer_args(archive["manifest"], model_uris, out, "--run-id", "f")) == 1
        with FaultProxy(s3.endpoint_url) as proxy:
            assert main(infer_args(archive["manifest"], model_uris, out, "--run-id", "f", "--only-failed",
                                   "--s3-endpoint-url", proxy.endpoint_url)) == 1
    finally:
        for u, data in saved.items():
            storage.write_bytes(u, data)
    err = capsys.readouterr().err
    assert "FAILED shards: 2,6 " in err
    reads = proxy.reads_under("/_runs/") + proxy.reads_under("prefix=pred-few/_runs/")
    assert 0 < len(reads) <= 10, reads
    assert sum(ln.startswith(f"GET /{BUCKET}/by-prefix/shards/") for ln in proxy.lines) == 2  # only the two reran
    assert main(infer_args(archive["manifest"], model_uris, out, "--run-id", "f", "--only-failed")) == 0
    assert_exactly_once(read_manifest(archive["manifest"]), out, "f")


def test_synthetic_manifest_and_dry_run(tmp_path, model_uris, capsys):
    from infer.main import main

    p = subprocess.run([sys.executable, "-m", "manifests.synthetic", "--images", "1000003", "--output",
                        str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    m = read_index(str(tmp_path / "m" / "manifest.parquet"))
    assert (m.version, m.num_images, m.num_shards, len(m.parts)) == ("3", 1000003, 15626, 16)
    first, last = read_shards(m, [0, 15625])
    assert first.num_records == 64 and last.num_records == 1000003 - 15625 * 64
    assert list(first.keys) == sorted(first.keys) and first.keys[-1] < read_shards(m, [1])[0].keys[0]
    pred = tmp_path / "pred"
    args = infer_args(str(tmp_path / "m" / "manifest.parquet"), model_uris, str(pred) + "/", "--dry-run")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "15626 of 15626 shards in 1 ranges" in text and "nothing written" in text
    assert main(args + ["--shards", "5-9,100", "--shards-per-task", "4"]) == 0
    text = capsys.readouterr().out
    assert "6 of 15626 shards in 2 ranges, 2 tasks of up to 4" in text and ": 5-7, 8-9+100;" in text
    assert not os.path.exists(pred)


def test_a_listed_object_that_is_gone_is_skipped_and_a_smaller_rerun_leaves_no_stale_part(archive, spark):
    from prepare.main import main

    keys = sorted(o.key for o in archive["objects"] if o.key.endswith(".png"))[:10]
    storage.write_bytes(f"s3://{BUCKET}/lists/gone.csv", ("key\n" + "\n".join(keys + ["in/c0/deleted.png"])).encode())
    out = f"s3://{BUCKET}/gone/"
    args = ["--input", f"s3://{BUCKET}/in/", "--input-list", f"s3://{BUCKET}/lists/gone.csv", "--output", out,
            "--batch", "2"]
    assert main(args + ["--shards-per-part", "1"]) == 0
    assert len(_keys(out + "manifest/")) == 6  # 11 candidates in 6 shards, one part each
    skipped = pq.read_table(io.BytesIO(storage.read_bytes(out + "skipped.parquet"))).to_pylist()
    assert skipped == [{"key": "in/c0/deleted.png", "reason": "listed but no longer exists"}]
    m = read_manifest(out + "manifest.parquet")
    assert [k for e in m.entries for k in e.keys] == keys
    assert main(args + ["--shards-per-part", "4"]) == 0  # the same output again, in fewer parts
    assert [o.key for o in _keys(out + "manifest/")] == [f"gone/manifest/part-0000{i}.parquet" for i in (0, 1)]
    assert read_index(out + "manifest.parquet").manifest_id == m.manifest_id
