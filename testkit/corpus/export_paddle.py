"""Export paddle.vision classifiers with paddle2onnx into the corpus.

Run by ``make onnx-corpus`` in ``.venv-corpus-paddle`` (testkit/corpus/requirements-paddle.txt): the model
is saved with ``paddle.jit.save`` (what Paddle's deployment docs do) and converted by ``paddle2onnx``.
Weights are Paddle's own initialisation; BatchNorm statistics are set to seeded values first.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import paddle  # noqa: E402
import paddle2onnx  # noqa: E402

from testkit.corpus import run, save  # noqa: E402

VISION = paddle.vision.models
# name: (builder, input size, opset)
MODELS = {
    "paddle_mobilenet_v3_small-paddle2onnx-op11": (lambda: VISION.mobilenet_v3_small(), 224, 11),
    "paddle_resnet18-paddle2onnx-op13": (lambda: VISION.resnet18(), 224, 13),
    "paddle_mobilenet_v2-paddle2onnx-op9": (lambda: VISION.mobilenet_v2(), 224, 9),
}


def _set_batchnorm(model) -> None:
    rng = np.random.default_rng(0)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            n = layer._mean.shape[0]
            layer._mean.set_value(rng.normal(0, 0.1, n).astype("float32"))
            layer._variance.set_value(rng.uniform(0.5, 1.5, n).astype("float32"))


def export(name: str) -> str:
    build, size, opset = MODELS[name]
    paddle.seed(0)
    model = build()
    _set_batchnorm(model)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        paddle.jit.save(model, prefix, input_spec=[paddle.static.InputSpec([None, 3, size, size], "float32", "x")])
        graph = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
        path = os.path.join(tmp, "m.onnx")
        paddle2onnx.export(graph, prefix + ".pdiparams", path, opset_version=opset, enable_onnx_checker=True)
        proto = onnx.load(path)
    source = {"family": "paddle", "exporter": "paddle2onnx", "paddle": paddle.__version__,
              "paddle2onnx": paddle2onnx.__version__, "opset": opset, "layout": "NCHW", "size": size,
              "dynamic_batch": True}
    return save(name, proto, source)


if __name__ == "__main__":
    run(export, MODELS)
