"""Walk an ONNX graph into an MXNet symbol: constants folded first, every other node through :mod:`infer.onnx_ops`.

The walk keeps two kinds of value.  *Known* values are arrays: initializers, ``Constant`` nodes, and
every node whose inputs are all known, evaluated here with ``onnx.reference.ReferenceEvaluator`` (any
standard op), including ``Shape``/``Size`` of an image-dependent value once the input's size is fixed.
So the ``Shape → Gather → Concat → Reshape`` spellings of a flatten, the ``ConstantOfShape`` pads of
"SAME" convolutions and weight-generating subgraphs never reach a converter.  *Image* values are MXNet
symbols.  Known values are evaluated at two probe batch sizes (1 and 2) so that a shape which follows the
batch is told from a fixed one: a ``Reshape`` target whose first entry is the batch becomes ``-1``, a
class token expanded to the batch becomes a ``broadcast_like`` of the input.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from common.model_files import DATA_NAME
from infer.onnx_fuse import fuse
from infer.onnx_ops import OnnxImportError, converter_for

MIN_OPSET, MAX_OPSET = 7, 21
PROBES = (1, 2)
DEFAULT_SIZE = (224, 224)
_REQUIRED = object()


@dataclass
class Converted:
    """An imported model: the symbol's JSON, its parameters, and what the import could tell about its input."""

    symbol_json: str
    arg: dict
    aux: dict
    image_size: Optional[tuple[int, int]]  # (H, W) the model fixes; None when its spatial size is dynamic
    probe_size: tuple[int, int]  # the size the graph was converted at
    layout: str  # NCHW or NHWC: what the ONNX input takes (the MXNet input is always NCHW)
    head: str  # the op that makes the output: "Softmax" (probabilities) or another (logits)
    opset: int
    input_name: str
    fixed_batch: Optional[int]  # the batch size the model was exported with, where it is fixed
    nodes: dict = field(default_factory=dict)  # op -> how many
    folded: int = 0  # nodes evaluated at import
    fused: dict = field(default_factory=dict)  # fused op -> how many (infer.onnx_fuse)
    tensors: dict = field(default_factory=dict)  # ONNX value name -> the MXNet internal output that holds it


def _name(text: str) -> str:
    """An MXNet-friendly name (letters, digits, _)."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", text).strip("_")
    return out if out and not out[0].isdigit() else f"n_{out}"


@dataclass
class Node:
    """One ONNX node as a converter sees it: op, input and output names ('' for an omitted optional input)."""

    op: str
    inputs: list
    outputs: list
    attrs: dict
    layer: str  # the MXNet name of what it makes: ``--output-layer <layer>_output``
    where: str  # for errors: the file, the node's name and op

    def attr(self, name: str, default=_REQUIRED):
        """The attribute's value; a missing required one is an error naming the node."""
        if name in self.attrs:
            return self.attrs[name]
        if default is _REQUIRED:
            raise OnnxImportError(f"{self.where}: attribute {name!r} is missing")
        return default

    def input(self, i: int) -> str:
        """The ``i``-th input's name, '' when the node has fewer or omits it."""
        return self.inputs[i] if i < len(self.inputs) else ""


class Graph:
    """Conversion state: image values (MXNet symbols), known values (arrays at both probes), parameters."""

    def __init__(self, opset: int, size: tuple[int, int], fixed_batch: Optional[int]):
        import mxnet as mx

        self.opset, self.size, self.fixed_batch = opset, size, fixed_batch
        self.data = mx.sym.var(DATA_NAME)
        self.values: dict = {}
        self.known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.arg: dict = {}
        self.aux: dict = {}
        self._vars: dict = {}  # ONNX name -> its variable
        self._shapes: dict[str, tuple] = {}
        self._temps = 0

    # -- known values --------------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        """A value known at import that is the same whatever the batch."""
        return name in self.known and _same(*self.known[name])

    def const(self, name: str, node: Node) -> np.ndarray:
        """The constant ``name``; an error naming the node when it depends on the image or its batch."""
        if not self.is_const(name):
            raise OnnxImportError(f"{node.where}: input {name!r} must be a constant here (it is computed from the "
                                  "image" + (" batch)" if name in self.known else ")"))
        return self.known[name][0]

    def probes(self, name: str, node: Node) -> tuple[np.ndarray, np.ndarray]:
        """A known value at the two probe batches (a shape that may follow the batch)."""
        if name not in self.known:
            raise OnnxImportError(f"{node.where}: input {name!r} must be known at import (it is computed from the "
                                  "image's values)")
        return self.known[name]

    # -- shapes --------------------------------------------------------------------------------------------
    def probe_shapes(self, name: str) -> tuple[tuple, tuple]:
        """The value's shape at both probe batches."""
        if name in self.known:
            return tuple(tuple(v.shape) for v in self.known[name])
        if name not in self._shapes:
            sym = self.values[name]
            self._shapes[name] = tuple(tuple(sym.infer_shape(**{DATA_NAME: (b, 3) + self.size})[1][0]) for b in PROBES)
        return self._shapes[name]

    def shape(self, name: str) -> tuple:
        """The value's shape at the first probe (batch 1)."""
        return self.probe_shapes(name)[0]

    def follows_batch(self, name: str, axis: int) -> bool:
        """Whether the value's ``axis`` grows with the batch."""
        one, two = self.probe_shapes(name)
        return axis < len(one) and one[axis] != two[axis]

    # -- symbols -------------------------------------------------------------------------------------------
    def param(self, name: str, array: np.ndarray, aux: bool = False, var: Optional[str] = None):
        """A variable holding ``array`` (float32), one per ONNX name (``name@suffix`` for a transformed copy).

        ``var`` names it in MXNet (default: from ``name``): a layer's weights and biases are named
        ``<layer>_weight`` / ``<layer>_bias``, as MXNet's own layers are, because its int8 quantization finds
        the parameters it quantizes by those endings.
        """
        import mxnet as mx

        if name not in self._vars:  # one variable node per parameter: MXNet binds two same-named nodes apart
            var = _name(var or name)
            while var in self.arg or var in self.aux or var == DATA_NAME:
                var += "_"
            value = mx.nd.array(np.asarray(array, dtype=np.float32))
            (self.aux if aux else self.arg)[var] = value
            self._vars[name] = mx.sym.var(var, shape=value.shape)  # broadcast ops infer no shapes for it
        return self._vars[name]

    def sym(self, name: str, node: Node):
        """The MXNet symbol of an input: an image value, a constant as a parameter, or a constant row per image."""
        import mxnet as mx

        if name in self.values:
            return self.values[name]
        if name in self.known:
            one, two = self.known[name]
            if _same(one, two):
                return self.param(name, one)
            if (one.ndim == two.ndim >= 1 and one.shape[0] == 1 and two.shape[0] == 2 and one.shape[1:] == two.shape[1:]
                    and np.array_equal(two[0], one[0]) and np.array_equal(two[1], one[0])):
                return mx.sym.broadcast_like(self.param(name, one), self.data, lhs_axes=(0,), rhs_axes=(0,))
            raise OnnxImportError(f"{node.where}: input {name!r} depends on the batch in a way that is not supported")
        raise OnnxImportError(f"{node.where}: input {name!r} is produced by nothing before it")

    def broadcastable(self, name: str, rank: int, node: Node):
        """``name`` as a symbol of ``rank`` dimensions, leading 1s added (numpy's broadcasting, spelt out)."""
        import mxnet as mx

        if self.is_const(name):
            c = self.const(name, node)
            shaped = c.reshape((1,) * max(0, rank - c.ndim) + c.shape)
            return self.param(name if shaped.shape == c.shape else f"{name}@{shaped.shape}", shaped)
        sym, have = self.sym(name, node), len(self.shape(name))
        for _ in range(rank - have):
            sym = mx.sym.expand_dims(sym, axis=0)
        return sym

    def alias(self, name: str, node: Node):
        """The input itself (Identity, Dropout at inference)."""
        return self.sym(name, node)

    def temp(self, sym, node: Node) -> str:
        """Register an intermediate symbol under a fresh name, so a helper can take it as an input."""
        self._temps += 1
        name = f"{node.layer}__temp{self._temps}"
        self.values[name] = sym
        return name


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def fill_external_data(model, fetch: Callable[[str], bytes], source: str) -> None:
    """Read tensors stored beside the model (``external_data``; torch's dynamo exporter writes them) through
    ``fetch(location)``, into the model itself."""
    from onnx import TensorProto

    blobs: dict[str, bytes] = {}

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                for sub in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                    yield from tensors(sub)

    for t in tensors(model.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location or location.startswith("/") or ".." in location.split("/"):
            raise OnnxImportError(f"{source}: tensor {t.name!r} names external data {location!r} outside its folder")
        if location not in blobs:
            blobs[location] = fetch(location)
        offset, length = int(info.get("offset", 0)), info.get("length")
        data = blobs[location][offset: offset + int(length) if length is not None else None]
        t.raw_data = data
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]


def load(data: bytes, source: str, fetch: Optional[Callable[[str], bytes]] = None):
    """The ModelProto of ``data``, external data read through ``fetch``, local functions inlined."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise OnnxImportError(f"{source}: not an ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if not model.graph.node:
        raise OnnxImportError(f"{source}: not an ONNX model (no graph nodes)")
    if fetch is not None:
        fill_external_data(model, fetch, source)
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return model


def opset_of(model) -> int:
    """The model's default-domain opset."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def image_input(model, source: str):
    """``(name, layout, (H, W) or None, fixed batch or None)`` of the model's one image input."""
    constants = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise OnnxImportError(f"{source}: expected one image input, found {len(inputs)}: {[i.name for i in inputs]}")
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    from onnx import TensorProto

    if len(dims) != 4 or tensor.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        raise OnnxImportError(f"{source}: input {inputs[0].name!r} is not an image batch: shape "
                              f"{[d if d else '?' for d in dims]}, expected (batch, 3, H, W) or (batch, H, W, 3) "
                              "floats")
    if dims[1] == 3 or (dims[1] is None and dims[3] != 3):
        layout, hw = "NCHW", (dims[2], dims[3])
    elif dims[3] == 3:
        layout, hw = "NHWC", (dims[1], dims[2])
    else:
        raise OnnxImportError(f"{source}: input {inputs[0].name!r} has shape {dims}: expected 3 colour channels, "
                              "(batch, 3, H, W) or (batch, H, W, 3)")
    size = hw if None not in hw else None
    return inputs[0].name, layout, size, dims[0]


def _evaluate(proto, feeds: list, opset: int, where: str) -> list:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [i for i in proto.input if i]
    try:
        graph = helper.make_graph([proto], "fold", [helper.make_tensor_value_info(n, 0, None) for n in names],
                                  [helper.make_tensor_value_info(n, 0, None) for n in proto.output if n])
        evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        return [np.asarray(v) for v in evaluator.run(None, dict(zip(names, feeds)))]
    except OnnxImportError:
        raise
    except Exception as e:  # noqa: BLE001 - the reference evaluator raises many kinds
        raise OnnxImportError(f"{where}: could not evaluate this constant node: {str(e).splitlines()[0]}") from e


def convert(model, source: str, size: Optional[tuple[int, int]] = None) -> Converted:
    """Convert a loaded ONNX ``model`` (``source`` names it in errors); ``size`` (H, W) for a model whose spatial
    size is dynamic (default 224x224).

    Raises:
        OnnxImportError: an opset outside 7-21, not one image input, or a node that cannot be converted (named).
    """
    import mxnet as mx
    import onnx
    from onnx import numpy_helper

    opset = opset_of(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxImportError(f"{source}: opset {opset} is not supported (this importer reads opsets "
                              f"{MIN_OPSET}-{MAX_OPSET}); re-export with opset_version={MAX_OPSET}")
    graph = model.graph
    if len(graph.output) != 1:
        raise OnnxImportError(f"{source}: expected one output, found {len(graph.output)}: "
                              f"{[o.name for o in graph.output]}")
    input_name, layout, fixed, batch = image_input(model, source)
    if fixed and size and tuple(size) != tuple(fixed):
        raise OnnxImportError(f"{source}: the model takes {fixed[0]}x{fixed[1]} images, not {size[0]}x{size[1]}")
    probe = tuple(fixed or size or DEFAULT_SIZE)
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)  # the caller's model stays as the exporter wrote it (the check runs that)
    fused = fuse(graph)
    g = Graph(opset, probe, batch)
    for t in graph.initializer:
        value = numpy_helper.to_array(t)
        g.known[t.name] = (value, value)
    g.values[input_name] = g.data if layout == "NCHW" else mx.sym.transpose(g.data, axes=(0, 2, 3, 1),
                                                                             name="data_nhwc")
    producer = {input_name: "input"}
    tensors: dict[str, str] = {}
    counts = _count(n.op_type for n in model.graph.node)  # as the exporter wrote it
    layers: set[str] = set()
    folded = 0
    for index, proto in enumerate(graph.node):
        op = proto.op_type
        layer = _name(proto.name or f"{op.lower()}{index}")
        while layer in layers:
            layer += "_"
        layers.add(layer)
        where = f"{source}: node {proto.name or index!r} (op {op})"
        if proto.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{where}: operator domain {proto.domain!r} is not supported")
        node = Node(op, list(proto.input), list(proto.output), _attrs(proto), layer, where)
        if _fold(g, proto, node, fused, opset, where):
            folded += 1
            continue
        outs = _convert_node(g, node, opset, where)
        for name, sym in zip(proto.output, outs):
            if name:
                g.values[name] = sym
                tensors[name] = sym.list_outputs()[0]
                producer[name] = producer.get(proto.input[0], op) if op in ("Identity", "Dropout", "Cast") else op
    final = graph.output[0].name
    if final not in g.values:
        raise OnnxImportError(f"{source}: the output {final!r} is a constant, not computed from the image")
    sym = g.values[final]
    try:
        sym.infer_shape(**{DATA_NAME: (PROBES[1], 3) + probe})
    except mx.base.MXNetError as e:
        raise OnnxImportError(f"{source}: the converted graph does not fit together: {_mx_reason(e)}") from e
    missing = [n for n in sym.list_arguments() if n != DATA_NAME and n not in g.arg]
    if missing:
        raise OnnxImportError(f"{source}: no weights for {missing}")
    keep, keep_aux = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    return Converted(sym.tojson(), {k: v for k, v in g.arg.items() if k in keep},
                     {k: v for k, v in g.aux.items() if k in keep_aux}, tuple(fixed) if fixed else None, probe,
                     layout, producer.get(final, ""), opset, input_name, batch, nodes=counts, folded=folded,
                     fused=_count(n.op_type for n in graph.node if n.name in fused), tensors=tensors)


def _fold(g: "Graph", proto, node: Node, fused: dict, opset: int, where: str) -> bool:
    """Fold ``proto`` into known values when it can be computed now: every input known (evaluated at both probe
    batch sizes; a fused node as the nodes it replaced), or ``Shape``/``Size`` of an image value.  Returns whether
    it was folded."""
    present = [i for i in proto.input if i]
    if all(i in g.known for i in present):
        for part in fused.get(proto.name, [proto]):
            feeds = [g.known[i] for i in part.input if i]
            first = _evaluate(part, [f[0] for f in feeds], opset, where)
            second = first if all(_same(*f) for f in feeds) else _evaluate(part, [f[1] for f in feeds], opset, where)
            for name, one, two in zip(part.output, first, second):
                if name:
                    g.known[name] = (one, two)
        return True
    if proto.op_type in ("Shape", "Size") and present and present[0] in g.values:
        shapes = [np.array(s, dtype=np.int64) for s in g.probe_shapes(present[0])]
        if proto.op_type == "Size":
            values = [np.array(np.prod(s), dtype=np.int64) for s in shapes]
        else:
            start, end = int(node.attr("start", 0)), node.attr("end", None)
            values = [s[start: None if end is None else int(end)] for s in shapes]
        g.known[proto.output[0]] = tuple(values)
        return True
    return False


def _convert_node(g: "Graph", node: Node, opset: int, where: str) -> list:
    """The MXNet symbols of one node's outputs, from its converter; any failure named as the node's."""
    import mxnet as mx

    try:
        out = converter_for(node.op, opset, where)(g, node)
    except OnnxImportError:
        raise
    except mx.base.MXNetError as e:
        raise OnnxImportError(f"{where}: MXNet cannot express this node: {_mx_reason(e)}") from e
    except Exception as e:  # noqa: BLE001 - a node of a form no converter expects: named, never a traceback
        raise OnnxImportError(f"{where}: this form of {node.op} is not supported ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    return out if isinstance(out, list) else [out]


def _count(items) -> dict:
    return dict(Counter(items))


def _mx_reason(e: Exception) -> str:
    """MXNet's one-line reason (its messages carry a C++ stack trace after the first lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(("Stack trace",
                                                                                                   "[bt]", "File"))]
    for ln in lines:
        if "Error in operator" in ln or "Check failed" in ln or "InferShape" in ln:
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]
