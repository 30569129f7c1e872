"""Every value infer writes equals an unfused forward pass: ``--output-layer`` values and fp32
probabilities, computed by the production Predictor (oneDNN's subgraph fusion on, as in a run),
against a separate process that runs the plain graph with ``MXNET_SUBGRAPH_BACKEND=NONE``.

oneDNN fuses Conv+BN+ReLU and FullyConnected+ReLU; grouped out beside the head, the internal
output of such a layer used to come back as the fused result (e.g. ReLU(fc) for ``fc1_output``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common.model import Predictor
from common.model_files import ModelFiles, ModelSpec, params_bytes

# the model's numbers against an unfused forward pass: the same on either Spark line
pytestmark = pytest.mark.once

# The unfused reference: the model's own graph, every layer computed as written (no subgraph backend).
REFERENCE = r"""
import json, sys
import numpy as np, mxnet as mx
sym_path, params_path, x_path, out_path, layers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
raw = mx.sym.load(sym_path)
saved = mx.nd.load(params_path)
x = np.load(x_path)
internals = raw.get_internals()
group = mx.sym.Group([raw] + [internals[n] for n in layers])
exe = group.simple_bind(mx.cpu(), grad_req="null", data=x.shape)
for k, v in saved.items():
    kind, name = k.split(":", 1)
    (exe.arg_dict if kind == "arg" else exe.aux_dict)[name][:] = v
exe.arg_dict["data"][:] = x
exe.forward(is_train=False)
out = [o.asnumpy() for o in exe.outputs]
np.savez(out_path, head=out[0], **{n: o for n, o in zip(layers, out[1:])})
"""


def small_model() -> dict:
    """Conv→BN→ReLU→MaxPool→Flatten→FC→ReLU→FC (logits: infer applies the softmax), on 3×16×16 input."""
    import mxnet as mx

    x = mx.sym.var("data")
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), pad=(1, 1), name="conv0")
    x = mx.sym.BatchNorm(x, fix_gamma=False, name="bn0")
    x = mx.sym.Activation(x, act_type="relu", name="relu0")
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool0")
    x = mx.sym.Flatten(x, name="flatten0")
    x = mx.sym.FullyConnected(x, num_hidden=16, name="fc1")
    x = mx.sym.Activation(x, act_type="relu", name="relu1")
    sym = mx.sym.FullyConnected(x, num_hidden=5, name="fc2")
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 16, 16))
    rng = np.random.RandomState(3)
    arg = {n: mx.nd.array(rng.randn(*s) * 0.5) for n, s in zip(sym.list_arguments(), arg_shapes) if n != "data"}
    aux = {n: mx.nd.array(np.abs(rng.randn(*s)) + 0.5) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return {"symbol": sym.tojson(), "params": params_bytes(arg, aux), "labels": [f"class {i}" for i in range(5)],
            "size": 16}


def zoo_model(model_files: dict) -> dict:
    from testkit import zoo_builder

    return {"symbol": model_files[zoo_builder.SYMBOL_FILE].decode(), "params": model_files[zoo_builder.PARAMS_FILE],
            "labels": [ln for ln in model_files[zoo_builder.SYNSET_FILE].decode().splitlines() if ln], "size": 224}


def _reference(model: dict, x: np.ndarray, layers: list[str], tmp_path) -> dict[str, np.ndarray]:
    (tmp_path / "m-symbol.json").write_text(model["symbol"])
    (tmp_path / "m.params").write_bytes(model["params"])
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "MXNET_SUBGRAPH_BACKEND": "NONE", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", REFERENCE, str(tmp_path / "m-symbol.json"), str(tmp_path / "m.params"),
                        str(tmp_path / "x.npy"), str(tmp_path / "ref.npz"), *layers], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(tmp_path / "ref.npz") as z:
        return {k: z[k] for k in z.files}


def _predictor(model: dict, layer: str) -> Predictor:
    import hashlib

    files = ModelFiles(model["symbol"], model["params"], tuple(model["labels"]),
                       hashlib.sha256(model["params"]).hexdigest())
    return Predictor(ModelSpec("m/m-symbol.json", "m/m-0000.params", "m/synset.txt", 8, image_size=model["size"],
                               output_layer=layer), files)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _close(got: np.ndarray, want: np.ndarray) -> float:
    """Largest difference relative to the reference's scale."""
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


CASES = {
    "small": ["conv0_output", "bn0_output", "pool0_output", "flatten0_output", "fc1_output", "fc2_output"],
    "zoo": ["conv0_output", "bn0_output", "stage1_unit1_conv1_output", "pooling0_output", "pool1_output",
            "flatten0_output", "fc1_output"],
}


@pytest.mark.parametrize("which", sorted(CASES))
def test_output_layers_and_probabilities_equal_an_unfused_forward_pass(which, model_files, tmp_path):
    model = small_model() if which == "small" else zoo_model(model_files)
    rng = np.random.RandomState(11)
    x = (rng.rand(8, 3, model["size"], model["size"]) * 255).astype(np.float32)
    layers = CASES[which]
    ref = _reference(model, x, layers, tmp_path)
    want_probs = ref["head"] if which == "zoo" else _softmax(ref["head"])  # the zoo's head is a softmax already
    worst = {}
    for layer in layers:
        probs, values = _predictor(model, layer).run(x)
        worst[layer] = _close(values, ref[layer].reshape(len(x), -1))
        assert np.abs(probs - want_probs).max() <= 1e-4, layer
        assert (probs.argmax(axis=1) == want_probs.argmax(axis=1)).all(), layer
    assert max(worst.values()) <= 1e-4, json.dumps(worst)


def test_the_fused_graph_alone_would_be_wrong(tmp_path):
    """The defect the rewrite removes: grouping fc1_output beside the head, as infer did, gives ReLU(fc1)."""
    import mxnet as mx

    model = small_model()
    x = np.random.RandomState(5).randn(8, 3, 16, 16).astype(np.float32) * 50
    ref = _reference(model, x, ["fc1_output"], tmp_path)["fc1_output"]
    assert (ref < 0).any()  # the layer has negative values, which a fused ReLU would clip
    raw = mx.sym.load_json(model["symbol"])
    group = mx.sym.Group([mx.sym.softmax(raw, axis=1), raw.get_internals()["fc1_output"]])
    exe = group.simple_bind(mx.cpu(), grad_req="null", data=x.shape)
    saved = mx.nd.load_frombuffer(model["params"])
    for k, v in saved.items():
        kind, name = k.split(":", 1)
        (exe.arg_dict if kind == "arg" else exe.aux_dict)[name][:] = v
    exe.arg_dict["data"][:] = x
    exe.forward(is_train=False)
    fused = exe.outputs[1].asnumpy()
    assert np.allclose(fused, np.maximum(ref, 0), atol=1e-3) and not np.allclose(fused, ref, atol=1e-3)
    _, values = _predictor(model, "fc1_output").run(x)
    assert _close(values, ref) <= 1e-4
