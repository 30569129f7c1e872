"""--precision bf16/int8: converted once on the driver, checked against fp32, stored, and loaded by executors."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pyarrow.parquet as pq
import pytest

from common import storage
from common.output import input_digest
from infer.cpu import speed_warning
from infer.sample import sample_plan
from testkit import digits_model
from tests.helpers import infer_args, output_rows, read_manifest, statuses

# the model's numbers at each precision: the same on either Spark line
pytestmark = pytest.mark.once


@pytest.fixture(scope="module")
def digits(s3, spark, digits_files):
    """The digits model in S3, and its 597 held-out images prepared into 10 shards."""
    from prepare.main import main

    s3.create_bucket("digits")
    uris = digits_model.write_model("s3://digits/model/", s3.endpoint_url, digits_files)
    labels = digits_model.upload_digits("s3://digits/in/", "held_out", s3.endpoint_url)
    assert main(["--input", "s3://digits/in/", "--output", "s3://digits/shards/"]) == 0
    return {"model": uris, "labels": labels, "manifest": "s3://digits/shards/manifest.parquet"}


def _top1(output: str, run_id: str) -> dict[str, int]:
    return {r["key"]: r["top1_class_id"] for r in output_rows(output, run_id)}


def test_sample_plan_is_disjoint_spread_and_deterministic():
    shards = [(i, 64) for i in range(1000)] + [(1000, 7)]
    cal, agree = sample_plan(shards, 512, 512)
    assert len(cal) == len(set(cal)) == 512 and len(agree) == len(set(agree)) == 512 and not set(cal) & set(agree)
    ids = sorted({s for s, _ in cal + agree})
    assert ids[0] < 20 and ids[-1] > 980, "the sample covers the whole manifest"
    assert sample_plan(shards, 512, 512) == (cal, agree)
    with pytest.raises(ValueError, match="holds 71"):
        sample_plan([(0, 64), (1, 7)], 40, 40)


def test_speed_warning_names_missing_instructions():
    assert speed_warning("int8", {"model": "X", "flags": ["avx2"]}).startswith("--precision int8: this CPU (X)")
    assert speed_warning("int8", {"model": "X", "flags": ["avx2", "avx512_vnni"]}) is None
    assert speed_warning("bf16", {"model": "X", "flags": ["avx512_vnni"]}) is not None
    assert speed_warning("fp32", {"model": "X", "flags": []}) is None


def test_reduced_precision_keeps_the_answers(digits, capsys):
    from infer.main import main

    out = "s3://digits/pred/"
    args = infer_args(digits["manifest"], digits["model"], out, "--calibration-images", "256", image_size=None)
    assert main(args) == 0
    fp32 = _top1(out, re.search(r"run_id=(\S+);", capsys.readouterr().out).group(1))
    labels = {f"in/{k.rsplit('/', 1)[-1]}": v for k, v in digits["labels"].items()}
    assert set(fp32) == set(labels)
    acc32 = sum(fp32[k] == labels[k] for k in labels) / len(labels)
    assert acc32 > 0.9, "the trained model must mean something"
    manifest = read_manifest(digits["manifest"])
    for precision in ("bf16", "int8"):
        assert main(args + ["--precision", precision]) == 0
        text = capsys.readouterr().out
        run_id = re.search(r"run_id=(\S+);", text).group(1)
        assert re.search(f"-{precision}(-v[0-9a-f]{{8}})?$", run_id), run_id  # -v: --decode fast's digest
        got = _top1(out, run_id)
        acc = sum(got[k] == labels[k] for k in labels) / len(labels)
        agree = sum(got[k] == fp32[k] for k in labels) / len(labels)
        with capsys.disabled():  # the figures, for the record (pytest -s shows them)
            print(f"\ndigits, {len(labels)} held-out images: {precision} accuracy {acc:.4f} (fp32 {acc32:.4f}), "
                  f"top-1 agreement with fp32 {agree:.4f}")
        assert abs(acc - acc32) <= 0.005, (precision, acc, acc32)
        assert agree >= 0.99, (precision, agree)

        record = json.loads(storage.read_bytes(f"{out}_runs/{run_id}/run.json"))
        conv = record["conversion"]
        assert record["precision"] == precision and record["model"].endswith(f"+{precision}")
        assert conv["agreement"] >= 0.99 and conv["agreement_images"] == 256
        assert len(conv["samples"]["agreement"]) == 256
        assert len(conv["samples"]["calibration"]) == (256 if precision == "int8" else 0)
        assert not {tuple(x) for x in conv["samples"]["agreement"]} & {tuple(x) for x in conv["samples"]["calibration"]}
        assert conv["cpu"]["model"] and isinstance(conv["cpu"]["flags"], list)
        assert f"top-1 agreement with fp32 {conv['agreement']:.4f} on 256 images" in text
        # the stored model is what the executors loaded: its digest is in every part file's input digest
        stored = storage.read_bytes(f"{out}_runs/{run_id}/model/digits-0000.params")
        assert hashlib.sha256(stored).hexdigest() == conv["params_sha256"] != hashlib.sha256(
            storage.read_bytes(digits["model"]["params"])).hexdigest()
        client = storage.s3_client()
        for e in manifest.entries:
            head = client.head_object(Bucket="digits", Key=f"pred/run_id={run_id}/part-{e.shard_id:05d}.parquet")
            assert head["Metadata"]["shardinfer-input-digest"] == input_digest(e.sha256, conv["params_sha256"], 5,
                                                                               f"{precision};decode=fast")
        rows = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}run_id={run_id}/part-00000.parquet"))).to_pylist()
        assert {r["model"] for r in rows} == {record["model"]}
        assert all(s["model"] == record["model"] for s in statuses(out, run_id).values())


def test_rerun_reuses_the_stored_model(digits, capsys):
    from infer.main import main

    out = "s3://digits/pred/"
    args = infer_args(digits["manifest"], digits["model"], out, "--calibration-images", "256", "--precision", "int8",
                      image_size=None)
    assert main(args) == 0
    run_id = re.search(r"run_id=(\S+);", capsys.readouterr().out).group(1)
    params = f"{out}_runs/{run_id}/model/digits-0000.params"
    etag = storage.s3_client().head_object(Bucket="digits", Key=storage.parse_s3(params).key)["ETag"]
    storage.delete(f"{out}run_id={run_id}/part-00003.parquet")
    assert main(args + ["--only-missing"]) == 0
    text = capsys.readouterr().out
    assert "reusing the run's model" in text and "1/1 shards ok (1 written" in text
    assert storage.s3_client().head_object(Bucket="digits", Key=storage.parse_s3(params).key)["ETag"] == etag


def test_refused_below_min_agreement(prepared, model_uris, capsys):
    """The zoo builder's made-up weights give almost flat logits: int8 flips many top-1s, and the run is refused."""
    from infer.main import main

    out = f"s3://{prepared['bucket']}/pred-int8/"
    rc = main(infer_args(prepared["manifest"], model_uris, out, "--precision", "int8", "--calibration-images", "64",
                         "--min-agreement", "0.999", image_size=None))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert re.match(r"infer: error: --precision int8: top-1 agreement with fp32 0\.\d{4} on 64 images \(minimum 0\.999\): "
                    r"refused", err[-1]), err
    assert list(storage.list_objects(out)) == [], "a refused run writes nothing"


def test_a_precision_the_model_cannot_run_at_this_size_is_one_line(prepared, model_uris, capsys):
    """oneDNN's int8 pooling keeps ResNet's fixed 7x7 window: at 64x64 input (a 2x2 map) it cannot bind."""
    from infer.main import main

    out = f"s3://{prepared['bucket']}/pred-int8-64/"
    rc = main(infer_args(prepared["manifest"], model_uris, out, "--precision", "int8", "--calibration-images", "64",
                         image_size=64))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("infer: error: --precision int8: ") and "cannot run converted at 64x64 input" in err[0], err
    assert list(storage.list_objects(out)) == [], "a refused run writes nothing"
