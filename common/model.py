"""Bind an MXNet model-zoo model (symbol JSON, params, synset) and predict with it; its files are
:mod:`common.model_files`, its graph checks :mod:`common.model_graph`, its device :mod:`common.devices`.

The same code loads the real zoo files from ``http(s)://``, ``s3://`` or a path on a user's
cluster and the test model of :mod:`testkit.zoo_builder` here.  A Spark task receives only a
:class:`ModelSpec` (strings); :func:`get_predictor` downloads and binds the model once per
executor Python process and hands the same :class:`Predictor` to every later task there.
That cache relies on ``spark.python.worker.reuse=true`` (pinned in spark-defaults.conf).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional, Union

import numpy as np

from common.devices import device_context
from common.errors import ModelError  # noqa: F401 - raised here, defined with the other user errors
from common.images import INPUT_SIZE, input_hw
from common.model_files import DATA_NAME, ModelFiles, ModelSpec, fetch_model
from common.model_graph import check_model_head


def _numpy_view(arr) -> np.ndarray:
    """A writable numpy view of a CPU float32 NDArray's memory (no copy)."""
    import ctypes

    import mxnet as mx

    arr.wait_to_read()
    ptr = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(arr.handle, ctypes.byref(ptr)))
    return np.frombuffer((ctypes.c_float * arr.size).from_address(ptr.value), dtype=np.float32).reshape(arr.shape)


class BoundModel:
    """A symbol bound once with static shapes, ``(batch, 3, 224, 224)`` in, its output out.

    On CPU each batch is copied straight into the executor's own input array (one memcpy),
    instead of into a new NDArray that the executor then copies again: at int8 speed that
    second copy of 38 MB was 4 % of a forward pass.
    """

    def __init__(self, sym, arg: dict, aux: dict, batch_size: int, device: str = "cpu",
                 image_size: Union[int, tuple[int, int]] = INPUT_SIZE):
        """Bind ``sym`` and copy in the parameters (every argument must have one: see :func:`check_model`)."""
        self.batch_size = batch_size
        # only the input's type is given: a converted model's other arguments keep their own (int8, bf16)
        height, width = input_hw(image_size)
        self._exe = sym.simple_bind(device_context(device), grad_req="null", type_dict={DATA_NAME: np.float32},
                                    **{DATA_NAME: (batch_size, 3, height, width)})
        for name, target in self._exe.arg_dict.items():
            if name != DATA_NAME:
                target[:] = arg[name]
        for name, target in self._exe.aux_dict.items():
            target[:] = aux[name]
        self._input = self._exe.arg_dict[DATA_NAME]
        self._input[:] = 0.0
        self._view = _numpy_view(self._input) if device == "cpu" and self._input.dtype == np.float32 else None

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """The first output (float32) for a ``(n, 3, S, S)`` float32 batch, ``n <= batch_size``.

        A short batch fills the first ``n`` rows of the bound input; the other rows' outputs are dropped.
        """
        return self.forward_all(batch)[0]

    def forward_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output (float32, each row flattened after the first axis) for a batch, as :meth:`forward`."""
        import mxnet as mx

        n = batch.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} rows exceeds the bound batch size {self.batch_size}")
        if self._view is not None:  # the previous forward is over: its outputs were read (asnumpy waits)
            np.copyto(self._view[:n], batch, casting="same_kind")
        else:
            self._input[:n] = mx.nd.array(batch, dtype=np.float32)
        self._exe.forward(is_train=False)
        return [o.astype("float32").asnumpy()[:n].reshape(n, -1) if o.dtype != np.float32
                else o.asnumpy()[:n].reshape(n, -1) for o in self._exe.outputs]


class Predictor:
    """The model of a :class:`ModelSpec`, downloaded, checked and bound: probabilities for image batches."""

    def __init__(self, spec: ModelSpec, files: Optional[ModelFiles] = None):
        """Download (unless ``files`` is given), check and bind the model."""
        started = time.perf_counter()
        self.spec = spec
        files = files or fetch_model(spec)
        self.labels = files.labels
        self.params_sha256 = files.params_sha256
        self.model_id = files.model_id(spec)
        # every argument has a parameter of the right shape
        checked = check_model_head(files, spec)
        self.head, self.embedding_width = checked.head, checked.embedding_width
        self._model = BoundModel(checked.symbol, checked.arg_params, checked.aux_params, spec.batch_size, spec.device,
                                 spec.image_size)
        self.load_seconds = time.perf_counter() - started

    @property
    def batch_size(self) -> int:
        """Rows per forward pass (the bound batch dimension)."""
        return self.spec.batch_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a ``(n, 3, S, S)`` float32 batch, ``n <= batch_size``."""
        return self._model.forward(batch)

    def run(self, batch: np.ndarray) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """``(probabilities or None, output-layer values or None)`` for a batch, as :meth:`predict`."""
        outs = self._model.forward_all(batch)
        if not self.spec.classify:
            return None, outs[0]
        return outs[0], (outs[1] if self.spec.output_layer else None)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and probabilities of the ``k`` best classes per row, best first (ties: lower id first)."""
    k = min(k, probs.shape[1])
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)


_PREDICTORS: dict[tuple[int, ModelSpec], Predictor] = {}
_LOCK = threading.Lock()
LOADS: dict[int, int] = {}
"""Model loads per process id, for the status records (a reused worker loads once)."""


def get_predictor(spec: ModelSpec) -> tuple[Predictor, bool]:
    """The process's predictor for ``spec``, building it on first use.

    Returns:
        ``(predictor, loaded_now)``: ``loaded_now`` is True only for the call that built it.
    """
    key = (os.getpid(), spec)  # a forked child must build its own
    with _LOCK:
        if key in _PREDICTORS:
            return _PREDICTORS[key], False
        predictor = Predictor(spec)
        _PREDICTORS[key] = predictor
        LOADS[os.getpid()] = LOADS.get(os.getpid(), 0) + 1
        return predictor, True
