"""ONNX models as real exporters wrote them, in: every file of the corpus (testkit/corpus/models: torch.onnx's
TorchScript and dynamo exporters over torchvision and timm, tf2onnx over Keras, paddle2onnx over paddle.vision,
weights refilled by testkit/onnx_corpus.fill) and the ONNX package's own model-zoo graphs are converted and
compared with ONNX Runtime; three run through infer end to end on photos; what cannot be converted is one line
and writes nothing."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from common import storage
from common.images import Preprocessing, preprocess
from testkit import onnx_corpus, onnx_models, zoo_builder
from testkit.corpus import MODELS_DIR
from testkit.photos import photo_jpeg

# imported models' numbers against ONNX Runtime: the same on either Spark line; run once, in the systems line
pytestmark = pytest.mark.corpus

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

BUCKET = "onnx"
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
CORPUS = sorted(f[:-5] for f in os.listdir(MODELS_DIR) if f.endswith(".onnx") and not f.startswith("refused-"))
LIGHT = sorted(f[:-5] for f in os.listdir(LIGHT_DIR) if f.endswith(".onnx"))


# Models that take 0..255 pixels (Keras's EfficientNet rescales and normalises inside the graph): fed pixels here.
PIXEL_INPUT = {"keras_efficientnet_b0-tf2onnx-op15"}


def corpus_model(name: str) -> bytes:
    """A corpus file with its weights filled back in."""
    with open(os.path.join(MODELS_DIR, f"{name}.onnx"), "rb") as f:
        return onnx_corpus.fill(f.read())


def light_model(name: str) -> bytes:
    with open(os.path.join(LIGHT_DIR, f"{name}.onnx"), "rb") as f:
        return f.read()


def _with_output(data: bytes, name: str) -> bytes:
    """The ONNX file with the value ``name`` also a graph output (for ONNX Runtime to return it)."""
    model = onnx.load_model_from_string(data)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def _pre_head(model) -> str:
    """The image-dependent value the graph's last node reads: features before a classifier, logits before a
    softmax."""
    produced = {o for n in model.graph.node for o in n.output}
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    return next(i for i in last.input if i in produced)


def test_the_corpus_is_what_real_exporters_wrote_and_small():
    """Every exporter and opset the importer is proven on, from the files themselves (not their names)."""
    sources = [onnx_corpus.source_of(onnx.load(os.path.join(MODELS_DIR, f"{n}.onnx"))) for n in CORPUS]
    exporters = {s["exporter"] for s in sources}
    assert {"torch.onnx (torchscript)", "torch.onnx (dynamo)", "tf2onnx", "paddle2onnx"} <= exporters, exporters
    assert {9, 11, 13, 14, 15, 17, 18, 21} <= {s["opset"] for s in sources}
    assert "NHWC" in {s["layout"] for s in sources}
    assert any(not s["dynamic_batch"] for s in sources), "a model exported at a fixed batch"
    total = sum(os.path.getsize(os.path.join(MODELS_DIR, f)) for f in os.listdir(MODELS_DIR))
    assert total < 20e6, total


@pytest.mark.parametrize("name", [f"corpus:{n}" for n in CORPUS] + [f"light:{n}" for n in LIGHT])
def test_a_real_export_converts_to_what_onnx_runtime_computes(name):
    """On a batch apart from the import's own check's: the probabilities equal ONNX Runtime's within the check's
    tolerance, and the value before the head (features or logits) to 1e-4 of its largest magnitude and differs
    between images (so the comparison can fail), with oneDNN's fusion on as infer binds it.  (The check itself,
    onnx_check.compare, runs in every import_onnx test below.)"""
    import mxnet as mx

    from common.model import BoundModel
    from common.model_graph import unfused_at
    from infer import onnx_check, onnx_graph

    kind, stem = name.split(":")
    data = corpus_model(stem) if kind == "corpus" else light_model(stem)
    model = onnx_graph.load(data, stem)
    converted = onnx_graph.convert(model, stem)
    full = model.SerializeToString()
    batch = onnx_check.check_batch(converted.probe_size, n=3, seed=7)
    if stem in PIXEL_INPUT:
        batch = np.clip(batch * 64 + 128, 0, 255)
    pre = _pre_head(model)
    layer = converted.tensors[pre]
    sym = mx.sym.load_json(converted.symbol_json)
    unfused = unfused_at(sym, layer)  # as infer reads an --output-layer: that layer's own values
    grouped = mx.sym.Group([unfused, unfused.get_internals()[layer]])
    ours = BoundModel(grouped, converted.arg, converted.aux, len(batch), image_size=converted.probe_size)
    out, inner = ours.forward_all(batch)
    outputs = onnx_check.run_onnxruntime_all(_with_output(full, pre), batch, converted.layout)
    want_out, want_inner = outputs[0], outputs[-1]
    scale = np.abs(want_inner).max()
    assert np.abs(inner - want_inner).max() <= 1e-4 * scale, (np.abs(inner - want_inner).max(), scale)
    if kind == "corpus":  # the model-zoo graphs' weights are one constant each: their images look alike
        assert want_inner.std(axis=0).max() > 1e-3 * scale
    if converted.head != "Softmax":
        out, want_out = onnx_check.softmax(out), onnx_check.softmax(want_out)
    assert np.abs(out - want_out).max() <= onnx_check.TOLERANCE


def _import(capsys, name: str, data: bytes, *flags: str) -> tuple[int, str, str]:
    from infer.import_onnx import main

    storage.write_bytes(f"s3://{BUCKET}/onnx/{name}.onnx", data)
    rc = main([f"s3://{BUCKET}/onnx/{name}.onnx", "--output", f"s3://{BUCKET}/imported/", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def _written(name: str) -> list[str]:
    return [o.key for o in storage.list_objects(f"s3://{BUCKET}/imported/") if o.key.startswith(f"imported/{name}-")]


@pytest.fixture(scope="module")
def photos(s3, spark) -> str:
    """12 photo-like JPEGs of several sizes and aspect ratios, packed by prepare in shards of 4."""
    from prepare.main import main

    s3.create_bucket(BUCKET)
    for i in range(12):
        size = [(640, 480), (480, 640), (800, 450), (300, 300)][i % 4]
        storage.write_bytes(f"s3://{BUCKET}/in/photo-{i:02d}.jpg", photo_jpeg(i, size, seed=3))
    assert main(["--input", f"s3://{BUCKET}/in/", "--output", f"s3://{BUCKET}/shards/", "--batch", "4",
                 "--formats", "jpeg"]) == 0
    return f"s3://{BUCKET}/shards/manifest.parquet"


E2E = {
    # corpus model: (infer flags beyond the model's; what it stands for)
    "resnet18-dynamo-op18-fixedbatch": ("--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375",
                                        "--resize", "shorter-side-crop"),
    "mobilenet_v2-torchscript-op13-96x160": ("--image-size", "96x160", "--channel-order", "bgr", "--mean",
                                             "103.53,116.28,123.675", "--std", "57.375,57.12,58.395"),
    "deit_tiny_patch16_224-dynamo-op18": ("--mean", "127.5", "--std", "127.5"),
}


def _reference_input(data: bytes, flags: tuple, size: tuple[int, int]) -> np.ndarray:
    """The model input computed apart from infer's code path: Pillow resize, numpy channel order and scaling."""
    from PIL import Image, ImageOps

    opts = dict(zip(flags[::2], flags[1::2]))
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    h, w = size
    if opts.get("--resize") == "shorter-side-crop":
        short = round(h * 256 / 224)
        iw, ih = img.size
        nw, nh = (short, round(ih * short / iw)) if iw <= ih else (round(iw * short / ih), short)
        img = img.resize((nw, nh), Image.LANCZOS)
        img = img.crop(((nw - w) // 2, (nh - h) // 2, (nw - w) // 2 + w, (nh - h) // 2 + h))
    else:
        img = img.resize((w, h), Image.LANCZOS)
    x = np.asarray(img, dtype=np.float32)
    if opts.get("--channel-order") == "bgr":
        x = x[:, :, ::-1]
    mean = np.array([float(v) for v in opts.get("--mean", "0").split(",")] * (1 if "," in opts.get("--mean", "0")
                                                                                   else 3), dtype=np.float32)
    std = np.array([float(v) for v in opts.get("--std", "1").split(",")] * (1 if "," in opts.get("--std", "1")
                                                                                 else 3), dtype=np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


@pytest.mark.spark
@pytest.mark.parametrize("name", sorted(E2E))
def test_a_real_export_through_infer_predicts_what_onnx_runtime_does(name, photos, capsys):
    """import_onnx, then infer over photos with the flags the model needs, against ONNX Runtime on pixels
    prepared apart from infer: the same top-1, probabilities within 1e-4; run.json records size and order."""
    import json

    from infer.main import main

    data = corpus_model(name)
    rc, out, err = _import(capsys, name, data)
    assert rc == 0, err
    assert "checked against ONNX Runtime on 4 images x 1000 outputs: largest probability difference" in out, out
    sym, params = f"s3://{BUCKET}/imported/{name}-symbol.json", f"s3://{BUCKET}/imported/{name}-0000.params"
    flags = E2E[name]
    size = tuple(int(v) for v in (flags[flags.index("--image-size") + 1] if "--image-size" in flags
                                  else "224x224").split("x"))
    shown = f"{size[0]}x{size[1]}" if size[0] != size[1] else str(size[0])
    assert f"--sym-url {sym} --param-url {params} --label-url LABELS.txt --image-size {shown}" in out, out
    labels = f"s3://{BUCKET}/imported/{name}-labels.txt"
    storage.write_bytes(labels, "".join(f"class {i}\n" for i in range(1000)).encode())
    output = f"s3://{BUCKET}/pred/"
    args = ["--manifest", photos, "--sym-url", sym, "--param-url", params, "--label-url", labels, "--output", output,
            "--run-id", name, "--decode", "exact", *flags]
    assert main(args) == 0
    rows = []
    for o in storage.list_objects(f"{output}run_id={name}/"):
        rows += pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/{o.key}"))).to_pylist()
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    rows.sort(key=lambda r: r["key"])
    batch = np.stack([_reference_input(storage.read_bytes(f"s3://{BUCKET}/{r['key']}"), flags, size) for r in rows])
    from infer.onnx_check import run_onnxruntime, softmax

    layout = onnx_corpus.source_of(onnx.load_model_from_string(data))["layout"]
    want = softmax(run_onnxruntime(data, batch, layout))
    for r, p in zip(rows, want):
        assert r["top1_class_id"] == int(p.argmax()), r["key"]
        assert max(abs(c["prob"] - p[c["class_id"]]) for c in r["top_k"]) <= 1e-4, r["key"]
    record = json.loads(storage.read_bytes(f"{output}_runs/{name}/run.json"))
    prep = record["preprocessing"]
    assert prep["image_size"] == (size[0] if size[0] == size[1] else shown)
    assert prep["channel_order"] == dict(zip(flags[::2], flags[1::2])).get("--channel-order", "rgb")


def test_a_keras_nhwc_export_is_fed_nchw_and_says_so(s3, capsys):
    s3.create_bucket(BUCKET)
    rc, out, err = _import(capsys, "keras", corpus_model("keras_mobilenet_v2-tf2onnx-op13"))
    assert rc == 0, err
    assert "the model takes NHWC 224x224 images" in out and "the NHWC -> NCHW transpose is in the graph" in out
    assert "its output is a Softmax: probabilities" in out


def test_the_mxnet_exporter_writes_what_imports(s3, model_files, capsys):
    """mx.onnx.export_model (weights among the graph inputs) of the test ResNet-18."""
    s3.create_bucket(BUCKET)
    rc, out, err = _import(capsys, "mxnet-export", onnx_models.mxnet_exported(model_files))
    assert rc == 0, err
    assert f"checked against ONNX Runtime on 4 images x {zoo_builder.NUM_CLASSES} outputs" in out, out


@pytest.mark.parametrize("name, says", [
    ("refused-gridsample-torchscript-op17", "node '/GridSample' (op GridSample): GridSample is not supported "
                                            "(supported: Abs, Add, "),
    ("refused-two-images-torchscript-op17", "expected one image input, found 2: ['a', 'b']"),
    ("refused-tabular-mlp-torchscript-op17", "input 'features' is not an image batch: shape ['?', 16], expected "
                                             "(batch, 3, H, W) or (batch, H, W, 3) floats"),
])
def test_what_cannot_be_converted_is_one_line_and_writes_nothing(s3, capsys, name, says):
    s3.create_bucket(BUCKET)
    rc, out, err = _import(capsys, name, corpus_model(name))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"import_onnx: error: s3://{BUCKET}/onnx/{name}.onnx: {says}"), lines[0]
    assert not _written(name)


def test_an_opset_outside_7_to_21_a_wrong_size_and_a_file_that_is_not_onnx(s3, capsys):
    s3.create_bucket(BUCKET)
    m = onnx.load_model_from_string(corpus_model("resnet18-torchscript-op11"))
    m.opset_import[0].version = 22
    rc, _, err = _import(capsys, "opset22", m.SerializeToString())
    assert rc == 2 and "opset 22 is not supported (this importer reads opsets 7-21)" in err
    rc, _, err = _import(capsys, "sized", corpus_model("resnet18-torchscript-op11"), "--image-size", "96x96")
    assert rc == 2 and "the model takes 224x224 images, not 96x96" in err
    rc, _, err = _import(capsys, "junk", b"not a model at all")
    assert rc == 2 and "junk.onnx: not an ONNX model" in err
    assert not _written("opset22") and not _written("junk") and not _written("sized")


def test_a_model_that_differs_from_onnx_runtime_is_refused_with_the_figure(s3, capsys, monkeypatch):
    """A converter that is wrong (here: HardSwish's offset 0.6 instead of 0.5) is caught by the import's check."""
    from infer import onnx_ops

    real = onnx_ops.converter_for

    def wrong(op, opset, where):
        fn = real(op, opset, where)
        if op != "HardSwish":
            return fn
        import mxnet as mx

        return lambda g, node: mx.sym.elemwise_mul(g.sym(node.inputs[0], node), mx.sym.hard_sigmoid(
            g.sym(node.inputs[0], node), alpha=1.0 / 6, beta=0.6), name=node.layer)

    monkeypatch.setattr("infer.onnx_graph.converter_for", wrong)
    s3.create_bucket(BUCKET)
    rc, _, err = _import(capsys, "wrong", corpus_model("mobilenet_v3_small-torchscript-op17"))
    assert rc == 2 and "the converted model does not compute what ONNX Runtime does (4 images x 1000 outputs: " \
                       "largest probability difference" in err, err
    assert not _written("wrong")


@pytest.mark.parametrize("name, fused", [
    ("deit_tiny_patch16_224-torchscript-op14", {"LayerNormalization": 25, "Gelu": 12, "FusedMatMulAdd": 48}),
    ("deit_tiny_patch16_224-dynamo-op18", {"Gelu": 12, "FusedMatMulAdd": 48}),
    ("convnext_atto-timm-torchscript-op17", {"Gelu": 12}),
])
def test_the_layers_exporters_spell_out_are_fused(name, fused):
    """torch.onnx's erf GELU (three spellings), pre-17 LayerNorm and MatMul + bias each become one MXNet op; that
    the result still equals ONNX Runtime is the corpus test above."""
    import json

    import mxnet as mx

    from infer import onnx_graph

    converted = onnx_graph.convert(onnx_graph.load(corpus_model(name), name), name)
    assert converted.fused == fused
    ops = [n["op"] for n in json.loads(mx.sym.load_json(converted.symbol_json).tojson())["nodes"]]
    assert "erf" not in ops and ops.count("LeakyReLU") == fused.get("Gelu", 0)


def test_every_converted_layer_keeps_its_onnx_node_name():
    """--output-layer <node>_output names an imported model's internal outputs."""
    import mxnet as mx

    from infer import onnx_graph

    model = onnx_graph.load(corpus_model("resnet18-torchscript-op11"), "m.onnx")
    converted = onnx_graph.convert(model, "m.onnx")
    outputs = set(mx.sym.load_json(converted.symbol_json).get_internals().list_outputs())
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert convs and {f"{onnx_graph._name(c)}_output" for c in convs} <= outputs


@pytest.mark.parametrize("opset, axis", [(11, 1), (13, 1), (11, 3)])
def test_softmax_over_a_4d_value_means_what_its_opset_says(opset, axis):
    """Before opset 13 Softmax(axis) normalises everything from ``axis`` on as one row; from 13, one axis."""
    import mxnet as mx
    from onnx import TensorProto, helper

    from infer import onnx_graph

    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    data = model.SerializeToString()
    x = np.random.RandomState(0).randn(2, 3, 4, 4).astype(np.float32)
    converted = onnx_graph.convert(onnx_graph.load(data, "sm.onnx"), "sm.onnx", (4, 4))
    exe = mx.sym.load_json(converted.symbol_json).simple_bind(mx.cpu(), grad_req="null", data=x.shape)
    exe.arg_dict["data"][:] = x
    exe.forward(is_train=False)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(exe.outputs[0].asnumpy() - want).max() <= 1e-6


def test_preprocessing_of_a_non_square_size_and_bgr(tmp_path):
    """infer's own preprocessing at HxW and bgr equals the reference computed apart above."""
    data = photo_jpeg(1, (640, 480), seed=3)
    flags = ("--channel-order", "bgr", "--mean", "1,2,3", "--std", "2,4,8")
    prep = Preprocessing((96, 160), mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0), decode="exact", channel_order="bgr")
    got = preprocess(data, "p.jpg", prep)
    assert got.shape == (3, 96, 160)
    assert np.abs(got - _reference_input(data, flags, (96, 160))).max() <= 1e-5


@pytest.mark.parametrize("name", ["resnet18-torchscript-op11", "vit_tiny_patch16_224-torchscript-op17"])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_an_imported_model_converts_to_reduced_precision_as_infer_does(name, precision):
    """infer's --precision path (infer.precision.convert: AMP bf16, oneDNN int8 calibrated on photos) takes an
    imported model: MXNet's quantization finds a layer's parameters by the names ``<layer>_weight`` and
    ``<layer>_bias`` (the import names them so; with other names int8 failed with a KeyError)."""
    import mxnet as mx

    from common.model import BoundModel
    from infer import onnx_graph
    from infer.precision import convert
    from infer.sample import Sample

    converted = onnx_graph.convert(onnx_graph.load(corpus_model(name), name), name)
    sym = mx.sym.load_json(converted.symbol_json)
    prep = Preprocessing(224, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), decode="exact")
    photos = Sample(tuple(photo_jpeg(i, (320, 240), seed=9) for i in range(8)), tuple(f"p{i}" for i in range(8)),
                    prep)
    csym, carg, caux = convert(sym, converted.arg, converted.aux, precision, photos, batch=8)
    batch = next(photos.batches(8))
    fp32 = BoundModel(sym, converted.arg, converted.aux, 8).forward(batch)
    reduced = BoundModel(csym, carg, caux, 8).forward(batch)
    assert reduced.shape == fp32.shape and np.isfinite(reduced).all()
    assert (reduced.argmax(axis=1) == fp32.argmax(axis=1)).mean() >= 0.5
