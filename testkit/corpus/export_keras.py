"""Export Keras applications with tf2onnx into the corpus (NHWC inputs, as tf2onnx writes them).

Run by ``make onnx-corpus`` in ``.venv-corpus-tf`` (testkit/corpus/requirements-tf.txt).  Weights are
Keras's own initialisation (``weights=None``); BatchNorm moving statistics are set to seeded values
first, so a wrong epsilon or variance shows.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from testkit.corpus import run, save  # noqa: E402

APPS = tf.keras.applications
# name: (builder, input size, opset)
MODELS = {
    "keras_mobilenet_v2-tf2onnx-op13": (lambda: APPS.MobileNetV2(alpha=0.35, weights=None), 224, 13),
    "keras_efficientnet_b0-tf2onnx-op15": (lambda: APPS.EfficientNetB0(weights=None), 224, 15),
    "keras_resnet50-tf2onnx-op13": (lambda: APPS.ResNet50(weights=None), 224, 13),
    "keras_densenet121-tf2onnx-op11": (lambda: APPS.DenseNet121(weights=None), 224, 11),
}


def _set_batchnorm(model) -> None:
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))


def export(name: str) -> str:
    build, size, opset = MODELS[name]
    tf.keras.utils.set_random_seed(0)
    model = build()
    _set_batchnorm(model)
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    source = {"family": "keras", "exporter": "tf2onnx", "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
              "opset": opset, "layout": "NHWC", "size": size, "dynamic_batch": True}
    return save(name, proto, source)


if __name__ == "__main__":
    run(export, MODELS)
