"""Your images, your model: JPEG/WebP/GIF/BMP/TIFF with EXIF orientation and hostile files, preprocessing
options, a Gluon-style model (normalised input, logits), and embeddings from an internal layer."""

from __future__ import annotations

import hashlib
import io
import json
import re

import mxnet as mx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from common import storage
from common.errors import ModelError
from common.images import (
    Preprocessing,
    check_image,
    decode_rgb,
    parse_formats,
    parse_triple,
    preprocess,
    skip_reason_for_key,
)
from common.model import Predictor
from common.model_files import ModelFiles, ModelSpec, read_labels
from common.model_graph import HEAD_APPLIED, HEAD_SOFTMAX, check_model_head
from testkit import zoo_builder
from testkit.photos import photo_archive
from tests.helpers import assert_exactly_once, output_rows, read_manifest, run_main

# image formats, EXIF and the preprocessing contract: the same on either Spark line
pytestmark = pytest.mark.once


MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
GLUON = "gluon-net"
BUCKET = "photos"


def _files(d: dict, name: str) -> ModelFiles:
    sym, par = f"{name}-symbol.json", f"{name}-0000.params"
    return ModelFiles(d[sym].decode(), d[par], read_labels(d["synset.txt"].decode(), "synset"),
                      hashlib.sha256(d[par]).hexdigest())


@pytest.fixture(scope="module")
def gluon_files(model_files) -> dict:
    return zoo_builder.gluon_style_model(model_files, MEAN, STD, GLUON)


# ----------------------------------------------------------------------------- pure functions


def test_formats_flag_parses_and_names_bad_values():
    assert parse_formats("png") == ("png",) and parse_formats(" JPEG , png") == ("jpeg", "png")
    assert parse_formats("all") == ("bmp", "gif", "jpeg", "png", "tiff", "webp")
    with pytest.raises(ValueError, match="unknown format heic"):
        parse_formats("png,heic")
    assert skip_reason_for_key("a/B.JPG", 10, ("jpeg",)) is None
    assert skip_reason_for_key("a/b.png", 10, ("jpeg",)) == "not a .jpg/.jpeg key"
    assert skip_reason_for_key("a/b.tiff", 0, ("tiff",)) == "empty object"


def test_every_photo_and_hostile_file_gets_its_verdict():
    formats = parse_formats("all")
    for key, p in photo_archive().items():
        reason = skip_reason_for_key(key, len(p.data), formats) or check_image(p.data, key, formats)
        if p.reason is None:
            assert reason is None, (key, reason)
        else:
            assert reason is not None and p.reason in reason, (key, reason)
    assert "object at 0x" not in check_image(b"garbage" * 9, "k", formats)  # reasons are reproducible


def test_a_lying_extension_is_judged_by_content():
    png_as_jpg = photo_archive()["photos/other/png-named.jpg"].data
    assert check_image(png_as_jpg, "x.jpg", ("jpeg",)) == "content is PNG, not an allowed format (jpeg)"
    assert check_image(png_as_jpg, "x.jpg", ("jpeg", "png")) is None


def test_exif_orientation_is_applied():
    arc = photo_archive()
    for key, p in arc.items():
        if p.same_as:  # lossless: exactly the upright image's input
            assert np.array_equal(preprocess(p.data, key), preprocess(arc[p.same_as].data, p.same_as)), key
    assert decode_rgb(arc["photos/rotated/exif-6.jpg"].data, "k").size == (64, 48)  # stored 48x64, shown upright


def test_16_bit_cmyk_and_animated_gif_are_converted():
    arc = photo_archive()
    for key in ("photos/other/e-16bit.png", "photos/other/d.tif"):
        raw = np.asarray(Image.open(io.BytesIO(arc[key].data)), dtype=np.float64) / 257
        got = np.asarray(decode_rgb(arc[key].data, key), dtype=np.float64)
        assert abs(got[..., 0].mean() - raw.mean()) < 1.0, key  # scaled to 8 bits, not clipped at 255
    assert decode_rgb(arc["photos/other/f-cmyk.jpg"].data, "k").mode == "RGB"
    gif = Image.open(io.BytesIO(arc["photos/other/c.gif"].data))
    assert gif.n_frames == 3
    first = np.asarray(gif.convert("RGB"))
    assert np.array_equal(np.asarray(decode_rgb(arc["photos/other/c.gif"].data, "k")), first)


def _banded(w: int, h: int) -> Image.Image:
    """Green with 60-pixel red bands along the two ends of the longer side."""
    img = Image.new("RGB", (w, h), (0, 200, 0))
    d = ImageDraw.Draw(img)
    if w >= h:
        d.rectangle([0, 0, 59, h], fill=(255, 0, 0))
        d.rectangle([w - 60, 0, w, h], fill=(255, 0, 0))
    else:
        d.rectangle([0, 0, w, 59], fill=(255, 0, 0))
        d.rectangle([0, h - 60, w, h], fill=(255, 0, 0))
    return img


def test_shorter_side_crop_crops_where_the_design_says():
    crop = Preprocessing(resize="shorter-side-crop")
    for w, h in ((300, 200), (200, 300)):
        img = _banded(w, h)
        # shorter side to round(224 * 256 / 224) = 256, then the 224x224 crop at ((w' - 224) // 2, (h' - 224) // 2)
        big = (384, 256) if w > h else (256, 384)
        left, top = (big[0] - 224) // 2, (big[1] - 224) // 2
        expected = img.resize(big, Image.LANCZOS).crop((left, top, left + 224, top + 224))
        got = crop.resized(img)
        assert got.size == (224, 224) and np.array_equal(np.asarray(got), np.asarray(expected))
        # the red bands (60 px of 200-300, i.e. 77 px after the resize) fall outside an 80 px margin
        assert (np.asarray(got)[..., 0] > 128).sum() == 0
        assert (np.asarray(Preprocessing().resized(img))[..., 0] > 128).sum() > 0  # stretch keeps them
    assert Preprocessing(size=112, resize="shorter-side-crop").resized(_banded(300, 200)).size == (112, 112)


def test_mean_std_normalise_per_channel_and_bad_values_are_refused():
    img = _banded(300, 200)
    raw = np.empty((3, 224, 224), np.float32)
    Preprocessing().into(img, raw)
    out = np.empty((3, 224, 224), np.float32)
    Preprocessing(mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0)).into(img, out)
    assert np.allclose(out, (raw - np.array([1, 2, 3])[:, None, None]) / np.array([2, 4, 8])[:, None, None])
    assert parse_triple("5", "--mean") == (5.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="--std"):
        Preprocessing(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="--image-size"):
        Preprocessing(size=4)
    with pytest.raises(ValueError, match="expected 1 or 3 values"):
        parse_triple("1,2", "--mean")


def test_a_gluon_style_model_with_mean_std_gives_the_plain_models_probabilities(model_files, gluon_files):
    plain = Predictor(ModelSpec("m/resnet-18-symbol.json", "p", "s", 8), _files(model_files, "resnet-18"))
    gluon = Predictor(ModelSpec(f"m/{GLUON}-symbol.json", "p", "s", 8), _files(gluon_files, GLUON))
    assert (plain.head, gluon.head) == (HEAD_SOFTMAX, HEAD_APPLIED)
    pngs = [p.data for k, p in photo_archive().items() if k.startswith("photos/2024/")][:8]
    a = np.stack([preprocess(b, "k") for b in pngs])
    b = np.stack([preprocess(x, "k", Preprocessing(mean=MEAN, std=STD)) for x in pngs])
    pa_, pb = plain.predict(a), gluon.predict(b)
    assert np.abs(pa_ - pb).max() < 1e-4 and np.array_equal(pa_.argmax(1), pb.argmax(1))
    assert np.allclose(pb.sum(axis=1), 1.0, atol=1e-5)


def test_a_wrong_output_layer_lists_the_outputs_there_are(model_files):
    spec = ModelSpec("m/resnet-18-symbol.json", "p", "s", 8, output_layer="flaten0_output")
    with pytest.raises(ModelError, match=r"no such output .* flatten0_output, fc1_output"):
        check_model_head(_files(model_files, "resnet-18"), spec)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def photo_runs(s3, spark, model_uris, gluon_files):
    """The archive through the two jobs (in process, on the session's Spark; the spark-submit lines
    themselves are test_infer's and test_node_env's): prepare --formats all, then infer with the zoo
    model, and with the Gluon-style model (--mean/--std) writing embeddings (--output-layer)."""
    from infer.main import main as infer
    from prepare.main import main as prepare

    s3.create_bucket(BUCKET)
    archive = photo_archive()
    for key, p in archive.items():
        storage.write_bytes(f"s3://{BUCKET}/{key}", p.data)
    gluon = {}
    for name, data in gluon_files.items():
        gluon[name] = f"s3://{BUCKET}/models/{name}"
        storage.write_bytes(gluon[name], data)
    assert prepare(["--input", f"s3://{BUCKET}/photos/", "--output", f"s3://{BUCKET}/shards/", "--formats", "all",
                    "--batch", "8"]) == 0
    manifest = f"s3://{BUCKET}/shards/manifest.parquet"
    runs = {}
    for name, extra, model in (
            ("plain", [], model_uris),
            ("gluon", ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
                       "--output-layer", "flatten0_output"],
             {"sym": gluon[f"{GLUON}-symbol.json"], "params": gluon[f"{GLUON}-0000.params"],
              "labels": gluon["synset.txt"]})):
        assert infer(["--manifest", manifest, "--sym-url", model["sym"], "--param-url", model["params"],
                      "--label-url", model["labels"], "--output", f"s3://{BUCKET}/pred/", *extra]) == 0
        [runs[name]] = _run_ids() - set(runs.values())  # the default run id infer chose
    return {"archive": archive, "manifest": manifest, "runs": runs, "gluon": gluon}


def _run_ids() -> set[str]:
    return {o.key.split("/")[-2] for o in storage.list_objects(f"s3://{BUCKET}/pred/_runs/") if o.key.endswith("/run.json")}


def _rows(run_id: str) -> dict[str, dict]:
    return {r["key"]: r for r in output_rows(f"s3://{BUCKET}/pred/", run_id)}


@pytest.mark.spark
def test_every_listed_object_is_accounted_for_exactly_once(photo_runs):
    m = read_manifest(photo_runs["manifest"])
    in_shards = [k for e in m.entries for k in e.keys]
    skipped = {r["key"]: r["reason"] for r in pq.read_table(io.BytesIO(storage.read_bytes(
        f"s3://{BUCKET}/shards/skipped.parquet"))).to_pylist()}
    assert len(in_shards) == len(set(in_shards)) and not set(in_shards) & set(skipped)
    assert set(in_shards) | set(skipped) == set(photo_runs["archive"])
    for key, p in photo_runs["archive"].items():
        if p.reason is None:
            assert key in in_shards, (key, skipped.get(key))
        else:
            assert p.reason in skipped[key], (key, skipped[key])
    for run_id in photo_runs["runs"].values():
        assert_exactly_once(m, f"s3://{BUCKET}/pred/", run_id)
    # original bytes in the shards
    e = m.entries[0]
    from common.shard import unpack_shard

    assert unpack_shard(storage.read_bytes(e.uri), e.uri) == [photo_runs["archive"][k].data for k in e.keys]


@pytest.mark.spark
def test_gluon_model_with_mean_std_matches_the_plain_model_and_rotations_match_upright(photo_runs):
    plain, gluon = _rows(photo_runs["runs"]["plain"]), _rows(photo_runs["runs"]["gluon"])
    assert set(plain) == set(gluon) and all(r["status"] == "ok" for r in plain.values())
    for key, r in plain.items():
        g = gluon[key]
        assert r["top1_class_id"] == g["top1_class_id"], key
        assert np.allclose([t["prob"] for t in r["top_k"]], [t["prob"] for t in g["top_k"]], atol=1e-4), key
        assert sum(t["prob"] for t in g["top_k"]) <= 1.0 + 1e-6
        assert r["embedding"] is None and len(g["embedding"]) == 512
    for key, p in photo_runs["archive"].items():
        if p.same_as:
            assert plain[key]["top_k"] == plain[p.same_as]["top_k"], key


@pytest.mark.spark
def test_run_records_say_how_probabilities_were_made_and_which_preprocessing(photo_runs):
    def record(name):
        return json.loads(storage.read_bytes(f"s3://{BUCKET}/pred/_runs/{photo_runs['runs'][name]}/run.json"))

    plain, gluon = record("plain"), record("gluon")
    assert plain["probabilities"] == HEAD_SOFTMAX and gluon["probabilities"] == HEAD_APPLIED
    assert gluon["preprocessing"]["mean"] == list(MEAN) and gluon["preprocessing"]["exif_orientation"] == "applied"
    assert gluon["output_layer"] == "flatten0_output" and gluon["embedding_width"] == 512
    assert plain["preprocessing"] == Preprocessing().record() and plain["output_layer"] is None
    assert re.search(r"-v[0-9a-f]{8}$", photo_runs["runs"]["gluon"])  # other preprocessing: another default run


@pytest.mark.spark
def test_embeddings_equal_an_independent_forward_pass_of_that_layer(photo_runs, gluon_files):
    rows = _rows(photo_runs["runs"]["gluon"])
    keys = sorted(rows)[:6]
    prep = Preprocessing(mean=MEAN, std=STD)
    batch = np.stack([preprocess(photo_runs["archive"][k].data, k, prep) for k in keys])
    sym = mx.sym.load_json(gluon_files[f"{GLUON}-symbol.json"].decode()).get_internals()["flatten0_output"]
    loaded = mx.nd.load_frombuffer(gluon_files[f"{GLUON}-0000.params"])
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", batch.shape)], for_training=False)
    mod.set_params({k[4:]: v for k, v in loaded.items() if k.startswith("arg:")},
                   {k[4:]: v for k, v in loaded.items() if k.startswith("aux:")}, allow_missing=False,
                   allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
    expected = mod.get_outputs()[0].asnumpy()
    got = np.array([rows[k]["embedding"] for k in keys], dtype=np.float32)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.spark
def test_embeddings_only_run_needs_no_labels(photo_runs, spark, capsys):
    from infer.main import main

    g = photo_runs["gluon"]
    out = f"s3://{BUCKET}/emb/"
    args = ["--manifest", photo_runs["manifest"], "--sym-url", g[f"{GLUON}-symbol.json"], "--param-url",
            g[f"{GLUON}-0000.params"], "--output", out, "--top-k", "0", "--output-layer", "flatten0_output",
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--run-id", "emb"]
    assert main(args) == 0
    rows = output_rows(out, "emb")
    assert rows and all(r["top_k"] is None and r["top1_label"] is None and len(r["embedding"]) == 512 for r in rows)
    assert main(args[:-2] + ["--run-id", "emb2", "--output-layer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--output-layer 'nope': no such output" in err and "flatten0_output" in err
    assert main(args[:8] + ["--run-id", "x"]) == 2  # classes (--top-k 5) but no labels
    assert "--label-url is required" in capsys.readouterr().err


@pytest.mark.spark
def test_bad_preprocessing_flags_fail_before_spark(photo_runs, model_uris, s3, capsys):
    base = ["--manifest", photo_runs["manifest"], "--sym-url", model_uris["sym"], "--param-url", model_uris["params"],
            "--label-url", model_uris["labels"], "--output", f"s3://{BUCKET}/x/"]
    for extra, message in ((["--std", "1,0,1"], "--std must be positive"), (["--mean", "1,2"], "expected 1 or 3"),
                           (["--image-size", "2"], "--image-size must be at least 8"),
                           (["--output-layer", "flatten0_output", "--precision", "int8"], "--output-layer with")):
        p = run_main("infer/main.py", base + extra, capsys)
        assert p.returncode == 2 and message in p.stderr, (extra, p.stderr[-500:])
    p = run_main("prepare/main.py", ["--input", f"s3://{BUCKET}/photos/", "--output", f"s3://{BUCKET}/y/",
                                     "--formats", "png,heic"], capsys)
    assert p.returncode == 2 and "unknown format heic" in p.stderr


@pytest.mark.spark
def test_other_preprocessing_is_never_mistaken_for_the_same_work(photo_runs, model_uris, spark, capsys):
    from infer.main import main

    base = ["--manifest", photo_runs["manifest"], "--sym-url", model_uris["sym"], "--param-url", model_uris["params"],
            "--label-url", model_uris["labels"], "--output", f"s3://{BUCKET}/same/", "--run-id", "same",
            "--shards", "0"]
    assert main(base) == 0
    assert main(base + ["--resize", "shorter-side-crop"]) == 2
    assert "was made with preprocessing" in capsys.readouterr().err
    # forced into the same run id: the part file's input digest differs, so it is rewritten, not "already done"
    assert main(base + ["--resize", "shorter-side-crop", "--force"]) == 0
    summary = json.loads(storage.read_bytes(f"s3://{BUCKET}/same/_runs/same/summary.json"))
    assert summary["shards_written"] == 1 and summary["shards_already_done"] == 0
