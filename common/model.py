"""Load an MXNet model-zoo model (symbol JSON, params, synset) and predict with it.

The same code loads the real zoo files from ``http(s)://``, ``s3://`` or a path on a user's
cluster and the test model of :mod:`testkit.zoo_builder` here.  A Spark task receives only a
:class:`ModelSpec` (strings); :func:`get_predictor` downloads and binds the model once per
executor Python process and hands the same :class:`Predictor` to every later task there.
That cache relies on ``spark.python.worker.reuse=true`` (pinned in spark-defaults.conf).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from common import storage
from common.errors import ModelError  # noqa: F401 - raised here, defined with the other user errors
from common.images import INPUT_SIZE, input_hw

DATA_NAME = "data"



@dataclass(frozen=True)
class ModelSpec:
    """Where the model's three files are, and how to bind it. Picklable: only strings and ints."""

    sym_url: str
    param_url: str
    label_url: str
    batch_size: int = 64
    endpoint_url: storage.Endpoint = None
    # When set, the params file must have this digest: every executor of a run uses the
    # exact model the driver checked, even if the object is replaced mid-run.
    params_sha256: Optional[str] = None
    device: str = "cpu"
    # A model converted by infer (--precision bf16/int8): its precision, and the digest of the
    # fp32 params it was made from, which the ``model`` column names.
    precision: str = "fp32"
    source_params_sha256: Optional[str] = None
    # The input is (batch, 3, image_size, image_size), or (batch, 3, H, W) for a (H, W) pair.
    image_size: Union[int, tuple[int, int]] = INPUT_SIZE
    # --output-layer: an internal output (e.g. flatten0_output) returned beside the class scores.
    output_layer: Optional[str] = None
    # False for an embeddings-only run (--top-k 0): no labels, no softmax, only the output layer.
    classify: bool = True

    @property
    def name(self) -> str:
        """``resnet-18`` for ``…/resnet-18-symbol.json``."""
        base = self.sym_url.rstrip("/").rsplit("/", 1)[-1]
        return base[: -len("-symbol.json")] if base.endswith("-symbol.json") else base.rsplit(".", 1)[0]


@dataclass(frozen=True)
class ModelFiles:
    """The model's bytes after download, with the params digest."""

    symbol_json: str
    params: bytes
    labels: tuple[str, ...]
    params_sha256: str

    @property
    def short_digest(self) -> str:
        """The first 12 hex digits of the params sha256."""
        return self.params_sha256[:12]

    def model_id(self, spec: "ModelSpec") -> str:
        """``resnet-18@sha256:<12 hex>`` (``+int8``/``+bf16`` when converted): the ``model`` column, and
        what a run is tied to.  A converted model is named by the fp32 params it was made from."""
        digest = (spec.source_params_sha256 or self.params_sha256)[:12]
        return f"{spec.name}@sha256:{digest}" + ("" if spec.precision == "fp32" else f"+{spec.precision}")


def read_labels(text: str, source: str) -> tuple[str, ...]:
    """Parse synset.txt: ``nXXXXXXXX name, alias`` per line -> ``name, alias``.

    A line without a wnid is taken whole, so a plain one-label-per-line file works too.
    """
    labels = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        is_wnid = len(head) == 9 and head[0] == "n" and head[1:].isdigit()
        labels.append(rest.strip() if is_wnid and rest.strip() else line)
    if not labels:
        raise ModelError(f"{source}: label file is empty")
    return tuple(labels)


def fetch_model(spec: ModelSpec) -> ModelFiles:
    """Download the three files and check the params digest if the spec pins one."""

    def get(uri: str, what: str) -> bytes:
        try:
            return storage.read_bytes(uri, spec.endpoint_url)
        except storage.StorageError as e:
            raise ModelError(f"cannot read model {what}: {e}") from e

    sym = get(spec.sym_url, "symbol")
    params = get(spec.param_url, "params")
    labels = get(spec.label_url, "labels") if spec.label_url else b"(no labels)"
    digest = hashlib.sha256(params).hexdigest()
    if spec.params_sha256 and digest != spec.params_sha256:
        raise ModelError(
            f"{spec.param_url}: params changed during the run (sha256 {digest[:12]}, expected {spec.params_sha256[:12]})"
        )
    try:
        text = sym.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(f"{spec.sym_url}: symbol file is not UTF-8 JSON") from e
    return ModelFiles(text, params, read_labels(labels.decode("utf-8", "replace"), spec.label_url), digest)


def params_bytes(arg: dict, aux: dict) -> bytes:
    """A zoo-format ``.params`` file (``arg:``/``aux:`` names) holding these NDArrays, as bytes."""
    import tempfile

    import mxnet as mx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.params")
        mx.nd.save(path, {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
        with open(path, "rb") as f:
            return f.read()


def _split_params(files: ModelFiles, spec: ModelSpec):
    import mxnet as mx

    try:
        loaded = mx.nd.load_frombuffer(files.params)
    except Exception as e:  # noqa: BLE001 - MXNetError on garbage
        raise ModelError(f"{spec.param_url}: not an MXNet params file: {str(e).splitlines()[0]}") from e
    if not isinstance(loaded, dict):
        raise ModelError(f"{spec.param_url}: params file holds a list, expected named arg:/aux: arrays")
    arg = {k[4:]: v for k, v in loaded.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in loaded.items() if k.startswith("aux:")}
    return arg, aux


SOFTMAX_OPS = ("SoftmaxOutput", "softmax", "SoftmaxActivation")
HEAD_SOFTMAX = "softmax head of the model"
HEAD_APPLIED = "softmax applied by infer (the model's head is not a softmax)"
HEAD_NONE = "none (embeddings only)"


def _head_op(sym) -> str:
    import json

    graph = json.loads(sym.tojson())
    return graph["nodes"][graph["heads"][0][0]]["op"]


def _load_symbol(files: ModelFiles, spec: ModelSpec):
    import mxnet as mx

    try:
        sym = mx.sym.load_json(files.symbol_json)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{spec.sym_url}: not an MXNet symbol JSON: {str(e).splitlines()[0]}") from e
    if DATA_NAME not in sym.list_arguments():
        raise ModelError(f"{spec.sym_url}: symbol has no '{DATA_NAME}' input")
    if len(sym.list_outputs()) != 1:
        raise ModelError(f"{spec.sym_url}: expected one output, got {sym.list_outputs()}")
    return sym


def _inference_symbol(files: ModelFiles, spec: ModelSpec):
    """``(symbol, head)``: the symbol whose first output is class probabilities, and how they are made.

    A training-only ``SoftmaxOutput`` head is replaced by a plain softmax (it needs a label
    input; dropping it lets the module bind with every other argument required, so a missing
    parameter is an error instead of a silent zero).  A head that is not a softmax (a Gluon
    export returns logits) gets one, so probabilities always sum to 1.  With
    ``spec.output_layer`` the symbol has a second output, that internal layer; for an
    embeddings-only spec (``classify=False``) it is the only output.
    """
    import mxnet as mx

    raw = _load_symbol(files, spec)
    sym, head = raw, HEAD_NONE
    if spec.classify:
        op = _head_op(raw)
        labels = [a for a in raw.list_arguments() if a.endswith("_label")]
        if op == "SoftmaxOutput" or labels:
            children = raw.get_children()
            inner = children[0] if children is not None else None
            if inner is None or any(a.endswith("_label") for a in inner.list_arguments()):
                raise ModelError(f"{spec.sym_url}: cannot strip the label input {labels} from the output layer")
            sym, head = mx.sym.softmax(inner, axis=1, name="prob"), HEAD_SOFTMAX
        elif op in SOFTMAX_OPS:
            head = HEAD_SOFTMAX
        else:
            sym, head = mx.sym.softmax(raw, axis=1, name="prob"), HEAD_APPLIED
    if spec.output_layer:
        internals = raw.get_internals()
        names = internals.list_outputs()
        if spec.output_layer not in names:
            shown = [n for n in names if n.endswith("_output")][-40:]
            raise ModelError(f"--output-layer {spec.output_layer!r}: no such output in {spec.sym_url}; its internal "
                             f"outputs end with: {', '.join(shown)}")
        if spec.classify:
            sym = unfused_at(sym, spec.output_layer)
            sym = mx.sym.Group([sym, sym.get_internals()[spec.output_layer]])
        else:
            sym = internals[spec.output_layer]
    return sym, head


def unfused_at(sym, output: str):
    """``sym`` with the internal ``output`` (``<node>_output`` or ``<node>_output<k>``) read by its consumers
    through a ``BlockGrad`` (an identity at inference).

    oneDNN's subgraph backend fuses a layer with what follows it (Conv+BN+ReLU, FullyConnected+ReLU)
    and then the fused node's output is all that exists: grouped out beside the head, ``fc_output``
    of FC→ReLU came back as ReLU(fc).  With the consumers reading through BlockGrad the pattern no
    longer matches at that one layer (MXNet eliminates ``_copy`` and ``identity`` before fusing, not
    BlockGrad), so the layer's own values are computed; every other layer keeps its fusion.
    """
    import json

    import mxnet as mx

    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    found = None
    for i, n in enumerate(nodes):
        if n["op"] == "null":
            continue
        if output == f"{n['name']}_output":
            found = (i, 0)
        elif output.startswith(f"{n['name']}_output") and output[len(n["name"]) + 7:].isdigit():
            found = (i, int(output[len(n["name"]) + 7:]))
    if found is None:  # an input or parameter: nothing fuses into it
        return sym
    at, out = found
    # the new node goes right after the layer, so the node list stays in topological order
    moved = {i: i + 1 if i > at else i for i in range(len(nodes))}
    shifted = []
    for n in nodes:
        n = dict(n)
        n["inputs"] = [[at + 1, 0, 0] if (i, o) == (at, out) else [moved[i], o, v] for i, o, v in n["inputs"]]
        shifted.append(n)
    shifted.insert(at + 1, {"op": "BlockGrad", "name": f"{nodes[at]['name']}_unfused", "inputs": [[at, out, 0]]})
    graph["nodes"] = shifted
    graph["arg_nodes"] = [moved[i] for i in graph["arg_nodes"]]
    graph["heads"] = [[moved[i], o, v] for i, o, v in graph["heads"]]
    graph.pop("node_row_ptr", None)  # MXNet recomputes it
    return mx.sym.load_json(json.dumps(graph))


def check_model(files: ModelFiles, spec: ModelSpec):
    """Check that every symbol argument has a parameter of the right shape.

    Returns:
        ``(symbol, arg_params, aux_params)`` ready to bind.

    Raises:
        ModelError: a missing or mis-shaped parameter (named), or a label count that does not
            match the number of classes.
    """
    checked = check_model_head(files, spec)
    return checked.symbol, checked.arg_params, checked.aux_params


class CheckedModel(NamedTuple):
    """A model whose parameters fit its symbol: ready to bind, and what its output is."""

    symbol: Any
    arg_params: dict
    aux_params: dict
    head: str  # how the probabilities are made: HEAD_SOFTMAX, HEAD_APPLIED or HEAD_NONE
    embedding_width: int  # the --output-layer's values per image (0 without one)


def check_model_head(files: ModelFiles, spec: ModelSpec) -> CheckedModel:
    """:func:`check_model` plus how the probabilities are made (:data:`HEAD_SOFTMAX`, :data:`HEAD_APPLIED`,
    :data:`HEAD_NONE`) and the output layer's values per image (0 without one)."""
    sym, head = _inference_symbol(files, spec)
    arg, aux = _split_params(files, spec)
    height, width = input_hw(spec.image_size)
    try:
        arg_shapes, out_shapes, aux_shapes = sym.infer_shape(**{DATA_NAME: (spec.batch_size, 3, height, width)})
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{spec.sym_url}: shape inference failed for 3x{height}x{width} input: "
                         f"{str(e).splitlines()[0]}") from e
    expected = dict(zip(sym.list_arguments(), arg_shapes))
    expected.update(zip(sym.list_auxiliary_states(), aux_shapes))
    for name, shape in expected.items():
        if name == DATA_NAME:
            continue
        have = arg.get(name, aux.get(name))
        if have is None:
            raise ModelError(f"{spec.param_url}: no parameter for symbol argument {name!r} of {spec.sym_url}")
        if tuple(have.shape) != tuple(shape):
            raise ModelError(
                f"{spec.param_url}: parameter {name!r} has shape {tuple(have.shape)}, "
                f"symbol {spec.sym_url} expects {tuple(shape)}"
            )
    if spec.classify:
        if len(out_shapes[0]) != 2:
            raise ModelError(f"{spec.sym_url}: the output has shape {tuple(out_shapes[0])}, not (batch, classes); "
                             "for a model without a classifier use --top-k 0 with --output-layer")
        num_classes = out_shapes[0][1]
        if num_classes != len(files.labels):
            raise ModelError(f"{spec.label_url}: {len(files.labels)} labels, but the model has {num_classes} classes")
    width = int(np.prod(out_shapes[-1][1:])) if spec.output_layer else 0
    return CheckedModel(sym, arg, aux, head, width)


def device_context(device: str):
    """``mx.cpu()``, or ``mx.gpu(N)`` for ``gpu:N`` (``gpu`` alone: N = 0); a clear error where this MXNet
    build has no CUDA."""
    import mxnet as mx

    if device == "cpu":
        return mx.cpu()
    kind, _, index = device.partition(":")
    if kind == "gpu" and (index or "0").isdigit():
        if mx.context.num_gpus() < 1:
            raise ModelError(f"--device gpu: this task was given GPU {index or 0}, but this MXNet build sees no GPU "
                             f"(install the CUDA build on GPU nodes: deploy/emr/bootstrap.sh --gpu, which installs "
                             f"{GPU_MXNET}; or use --device cpu)")
        return mx.gpu(int(index or 0))
    raise ModelError(f"unknown device {device!r}: expected cpu, gpu or gpu:N")


# The CUDA build of the same MXNet release (CUDA 11.2, which EMR's GPU instances' drivers run).
GPU_MXNET = "mxnet-cu112==1.9.1"


def task_device(device: str, resources: Optional[dict]) -> str:
    """The device one Spark task binds: ``cpu``, or ``gpu:<address>`` of the GPU Spark assigned it.

    ``resources`` is ``TaskContext.resources()`` (name -> ResourceInformation with ``.addresses``).
    Each task binds the GPU Spark gave it, so the tasks of an executor with several GPUs spread
    over them instead of all binding GPU 0.

    Raises:
        ModelError: ``gpu`` but Spark assigned the task no GPU.
    """
    if device != "gpu":
        return device
    gpus = (resources or {}).get("gpu")
    addresses = list(getattr(gpus, "addresses", None) or [])
    if not addresses:
        raise ModelError("--device gpu: Spark assigned this task no GPU: set spark.executor.resource.gpu.amount, "
                         "spark.task.resource.gpu.amount and a GPU discovery script "
                         "(deploy/emr/configurations-gpu.json)")
    return f"gpu:{addresses[0]}"


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
