"""ONNX models in, right numbers out: models written the way exporters write them (testkit/onnx_models.py)
are imported with `python -m infer.import_onnx`, run through infer, and compared with ONNX Runtime on
the same preprocessed pixels: the same top-1, probabilities within 1e-4."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from common import storage
from common.images import Preprocessing, preprocess
from testkit import onnx_models, zoo_builder
from tests.helpers import infer_args, prepared

# imported models' numbers against ONNX Runtime: the same on either Spark line
pytestmark = pytest.mark.once

BUCKET = "onnx"
IMAGES = 20  # 5 shards of 4

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def manifest(s3, spark) -> str:
    return prepared(s3, BUCKET, IMAGES, seed=47)


MODELS = {
    # name: (builder, image size, labels)
    "torchvision-opset13": (lambda files: onnx_models.torchvision_style(13), 64, onnx_models.CLASSES),
    "torchvision-opset17": (lambda files: onnx_models.torchvision_style(17), 64, onnx_models.CLASSES),
    "keras-opset9": (lambda files: onnx_models.keras_style(9), 64, onnx_models.CLASSES),
    "keras-opset17": (lambda files: onnx_models.keras_style(17), 64, onnx_models.CLASSES),
    "mxnet-export": (onnx_models.mxnet_exported, 224, zoo_builder.NUM_CLASSES),
}


def _import(capsys, name: str, data: bytes) -> tuple[int, str, str]:
    from infer.import_onnx import main

    storage.write_bytes(f"s3://{BUCKET}/onnx/{name}.onnx", data)
    rc = main([f"s3://{BUCKET}/onnx/{name}.onnx", "--output", f"s3://{BUCKET}/imported/"])
    out, err = capsys.readouterr()
    return rc, out, err


def _ort_probs(data: bytes, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: batch})[0]
    if not np.allclose(out.sum(axis=1), 1.0, atol=1e-4):  # logits: the softmax infer applies
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    return out


@pytest.mark.spark
@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_imported_model_predicts_what_onnx_runtime_does(name, manifest, model_files, capsys):
    from infer.main import main

    build, size, classes = MODELS[name]
    data = build(model_files)
    rc, out, err = _import(capsys, name, data)
    assert rc == 0, err
    sym, params = f"s3://{BUCKET}/imported/{name}-symbol.json", f"s3://{BUCKET}/imported/{name}-0000.params"
    assert f"--sym-url {sym} --param-url {params}" in out and f"--image-size {size}" in out
    labels = f"s3://{BUCKET}/imported/{name}-labels.txt"
    storage.write_bytes(labels, "".join(f"class {i}\n" for i in range(classes)).encode())
    model = {"sym": sym, "params": params, "labels": labels}
    output = f"s3://{BUCKET}/pred/"
    assert main(infer_args(manifest, model, output, "--image-size", str(size), "--run-id", name)) == 0

    rows = []
    for o in storage.list_objects(f"{output}run_id={name}/"):
        rows += pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/{o.key}"))).to_pylist()
    assert len(rows) == IMAGES and {r["status"] for r in rows} == {"ok"}
    rows.sort(key=lambda r: r["key"])
    prep = Preprocessing(size=size)
    batch = np.stack([preprocess(storage.read_bytes(f"s3://{BUCKET}/{r['key']}"), r["key"], prep) for r in rows])
    want = _ort_probs(data, batch)
    for r, p in zip(rows, want):
        assert r["top1_class_id"] == int(p.argmax()), r["key"]
        got = {c["class_id"]: c["prob"] for c in r["top_k"]}
        assert max(abs(prob - p[cid]) for cid, prob in got.items()) <= 1e-4, r["key"]


def test_an_unsupported_operator_is_one_line_and_writes_nothing(manifest, capsys):
    rc, out, err = _import(capsys, "resize", onnx_models.unsupported_op())
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("import_onnx: error: s3://onnx/onnx/resize.onnx: node 'Resize_3' (op Resize): "
                               "Resize is not supported"), lines
    assert not storage.exists(f"s3://{BUCKET}/imported/resize-symbol.json")
    assert not storage.exists(f"s3://{BUCKET}/imported/resize-0000.params")


def test_an_opset_outside_7_to_17_and_a_file_that_is_not_onnx(manifest, capsys):
    import onnx

    m = onnx.load_model_from_string(onnx_models.torchvision_style(13))
    m.opset_import[0].version = 18
    rc, _, err = _import(capsys, "opset18", m.SerializeToString())
    assert rc == 2 and "opset 18 is not supported (this importer reads opsets 7-17)" in err
    rc, _, err = _import(capsys, "junk", b"not a model at all")
    assert rc == 2 and "junk.onnx: not an ONNX model" in err
    assert not any(o.key.startswith("imported/opset18") or o.key.startswith("imported/junk")
                   for o in storage.list_objects(f"s3://{BUCKET}/imported/"))


def test_every_converted_layer_keeps_its_onnx_node_name():
    """--output-layer <node>_output names an imported model's internal outputs."""
    import mxnet as mx
    import onnx

    from infer.import_onnx import convert

    data = onnx_models.torchvision_style(17)
    layers = [n.name for n in onnx.load_model_from_string(data).graph.node]
    outputs = set(mx.sym.load_json(convert(data, "m.onnx").symbol_json).get_internals().list_outputs())
    assert {f"{name}_output" for name in layers} <= outputs


@pytest.mark.parametrize("opset, axis", [(11, 1), (13, 1), (11, 3)])
def test_softmax_over_a_4d_value_means_what_its_opset_says(opset, axis):
    """Before opset 13 Softmax(axis) normalises everything from ``axis`` on as one row; from 13, one axis."""
    import mxnet as mx
    from onnx import TensorProto, helper

    from infer.import_onnx import convert

    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    data = model.SerializeToString()
    x = np.random.RandomState(0).randn(2, 3, 4, 4).astype(np.float32)
    exe = mx.sym.load_json(convert(data, "sm.onnx").symbol_json).simple_bind(mx.cpu(), grad_req="null", data=x.shape)
    exe.arg_dict["data"][:] = x
    exe.forward(is_train=False)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(exe.outputs[0].asnumpy() - want).max() <= 1e-6
