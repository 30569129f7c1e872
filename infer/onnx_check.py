"""An imported model checked against ONNX Runtime: the ONNX file and the converted model on the same batch.

The converted model runs as infer binds it (:class:`common.model.BoundModel`: oneDNN's fusion on); ONNX
Runtime runs the original file.  Probabilities are compared (a logits head gets the softmax infer applies
on both sides).  The figure is the largest absolute difference of any probability, and the top-1 classes
must agree wherever ONNX Runtime's best two classes are more than the tolerance apart (closer than that,
either answer is within the tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

TOLERANCE = 1e-4
CHECK_BATCH = 4


@dataclass(frozen=True)
class Agreement:
    """What the check measured."""

    images: int
    max_difference: float  # largest |p_mxnet - p_ort| over every image and class
    top1_disagreements: int  # images whose top-1 differs although ONNX Runtime's top two are apart
    classes: int

    @property
    def ok(self) -> bool:
        """Within the tolerance and the same top-1."""
        return self.max_difference <= TOLERANCE and self.top1_disagreements == 0


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_batch(size: tuple[int, int], n: int = CHECK_BATCH, seed: int = 0) -> np.ndarray:
    """A deterministic NCHW float32 batch of normalised-looking pixels."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (n, 3) + tuple(size)).astype(np.float32)


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime is installed here (the import extra's test part)."""
    try:
        import onnxruntime  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def run_onnxruntime_all(model_bytes: bytes, batch: np.ndarray, layout: str,
                        threads: Optional[int] = None) -> list[np.ndarray]:
    """Every output of the ONNX file for an NCHW ``batch`` (transposed for an NHWC model), rows flattened; a model
    exported at a fixed batch is run that many images at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = batch if layout == "NCHW" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    name, first = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    step = first if isinstance(first, int) and first > 0 else len(feed)
    runs = [session.run(None, {name: feed[i: i + step]}) for i in range(0, len(feed), step)]
    return [np.concatenate([np.asarray(r[k], dtype=np.float32).reshape(len(r[k]), -1) for r in runs])
            for k in range(len(runs[0]))]


def run_onnxruntime(model_bytes: bytes, batch: np.ndarray, layout: str, threads: Optional[int] = None) -> np.ndarray:
    """The ONNX file's first output (:func:`run_onnxruntime_all`)."""
    return run_onnxruntime_all(model_bytes, batch, layout, threads)[0]


def run_mxnet(converted, batch: np.ndarray) -> np.ndarray:
    """The converted model's output for ``batch``, bound as infer binds it."""
    import mxnet as mx

    from common.model import BoundModel

    sym = mx.sym.load_json(converted.symbol_json)
    bound = BoundModel(sym, converted.arg, converted.aux, len(batch), image_size=tuple(batch.shape[2:]))
    return bound.forward(batch)


def compare(converted, model_bytes: bytes, batch: np.ndarray) -> Agreement:
    """Run both and measure (see the module's docstring)."""
    ours, theirs = run_mxnet(converted, batch), run_onnxruntime(model_bytes, batch, converted.layout)
    if converted.head != "Softmax":
        ours, theirs = softmax(ours), softmax(theirs)
    if ours.shape != theirs.shape:
        return Agreement(len(batch), float("inf"), len(batch), theirs.shape[1])
    diff = float(np.abs(ours.astype(np.float64) - theirs).max()) if ours.size else 0.0
    if not np.isfinite(ours).all():
        diff = float("inf")
    top2 = np.sort(theirs, axis=1)[:, -2:] if theirs.shape[1] > 1 else np.zeros((len(batch), 2))
    apart = (top2[:, 1] - top2[:, 0]) > TOLERANCE
    disagree = int(((ours.argmax(axis=1) != theirs.argmax(axis=1)) & apart).sum())
    return Agreement(len(batch), diff, disagree, theirs.shape[1])
