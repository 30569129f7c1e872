"""Import an ONNX image model as an MXNet symbol + params that infer loads: ``python -m infer.import_onnx --help``.

    python -m infer.import_onnx MODEL.onnx --output URI/ [--name NAME]

``MODEL.onnx`` is a local path, ``s3://`` or ``http(s)://`` URL.  Writes
``<output><name>-symbol.json`` and ``<output><name>-0000.params`` (``name`` defaults to the
file's stem) and prints the infer flags to use with them.  Needs the ``onnx`` package (the
``import`` extra: ``pip install onnx==1.23.2``) where it runs; the nodes that run infer do not.

What converts (opsets 7 to 17, as PyTorch's, TensorFlow's and MXNet's exporters write them):
Conv, BatchNormalization, Relu, Clip, Sigmoid, MaxPool, AveragePool, GlobalAveragePool,
Flatten, Gemm, MatMul, Add, Mul, Concat, Reshape, ReduceMean, Softmax, Identity, Dropout and
Constant.  The one image input is renamed ``data`` (what infer binds); a dynamic batch
dimension is fine.  Weights may be initializers or, as ``mx.onnx.export_model`` writes them,
graph inputs with initializers.  Anything else is a one-line error naming the node and its
op, and nothing is written.  Each MXNet layer is named after its ONNX node, so
``--output-layer <node>_output`` picks an internal output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import storage  # noqa: E402
from common.cli import UsageError, add_common_arguments, endpoint_from, exit_process, run_cli  # noqa: E402
from common.model import DATA_NAME, ModelError, params_bytes  # noqa: E402

PROG = "import_onnx"
MIN_OPSET, MAX_OPSET = 7, 17
SUPPORTED = ("Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Flatten", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Concat", "Reshape", "ReduceMean", "Softmax",
             "Identity", "Dropout", "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "Cast")
# Operators that only compute shapes (exporters spell "flatten, keeping the batch" this way): evaluated here,
# for two probe batch sizes, so a dimension that follows the batch is told from a fixed one.
SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "Cast", "Concat", "Add", "Sub", "Mul", "Div",
             "Identity")
_ARITH = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
# What torchvision and the ONNX Model Zoo's ImageNet models expect, on 0..255 pixels.
IMAGENET_MEAN = "123.675,116.28,103.53"
IMAGENET_STD = "58.395,57.12,57.375"


class OnnxImportError(ModelError):
    """An ONNX model that cannot be converted; the message names the file, and the node and op where it stopped."""


@dataclass
class Converted:
    """An imported model: the symbol's JSON, its parameters, and what the import could tell about its input."""

    symbol_json: str
    arg: dict
    aux: dict
    image_size: Optional[int]
    head: str  # the last op: "Softmax" (probabilities) or another (logits: infer applies softmax)
    opset: int
    nodes: dict = field(default_factory=dict)  # op -> how many


def _name(text: str) -> str:
    """An MXNet-friendly name (letters, digits, _)."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", text).strip("_")
    return out if out and not out[0].isdigit() else f"n_{out}"


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs: dict, where: str, dims: int = 2) -> tuple:
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise OnnxImportError(f"{where}: auto_pad={attrs['auto_pad']!r} is not supported (export with explicit pads)")
    if pads[:dims] != pads[dims:]:
        raise OnnxImportError(f"{where}: asymmetric pads {pads} are not supported")
    return tuple(int(p) for p in pads[:dims])


def convert(data: bytes, source: str) -> Converted:
    """Convert the serialised ONNX model ``data`` (``source`` names it in errors).

    Raises:
        OnnxImportError: not ONNX, an opset outside 7-17, not one image input, or a node that cannot be
            converted (named with its op).
    """
    import mxnet as mx
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise OnnxImportError(f"{source}: not an ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxImportError(f"{source}: opset {opset} is not supported (this importer reads opsets "
                              f"{MIN_OPSET}-{MAX_OPSET}); re-export with opset_version={MAX_OPSET}")
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    images = [i for i in graph.input if i.name not in consts]
    if len(images) != 1:
        raise OnnxImportError(f"{source}: expected one image input, found {[i.name for i in images]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in images[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise OnnxImportError(f"{source}: input {images[0].name!r} has shape {dims}; expected (batch, 3, H, W)")
    image_size = dims[2] if dims[2] is not None and dims[2] == dims[3] else None
    if len(graph.output) != 1:
        raise OnnxImportError(f"{source}: expected one output, found {[o.name for o in graph.output]}")

    values: dict = {images[0].name: mx.sym.var(DATA_NAME)}
    arg: dict = {}
    aux: dict = {}
    used: dict[str, str] = {}  # onnx constant name -> mxnet variable name

    def param(name: str, array: np.ndarray, aux_state: bool = False):
        if name not in used:
            var = _name(name)
            while var in arg or var in aux:
                var += "_"
            used[name] = var
            (aux if aux_state else arg)[var] = mx.nd.array(np.asarray(array, dtype=np.float32))
        var = used[name]
        return mx.sym.var(var, shape=(aux if var in aux else arg)[var].shape)  # broadcast ops infer no shapes

    probe = (1, 3, image_size or 224, image_size or 224)
    # shape tensors: name -> (value with a batch of 1, value with a batch of 2)
    shapes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def sym_shape(sym, batch: int) -> tuple:
        """A value's shape for a probe image batch (shape inference only)."""
        return sym.infer_shape(**{DATA_NAME: (batch,) + probe[1:]})[1][0]

    def value(name: str, where: str):
        if name in values:
            return values[name]
        if name in consts:
            return param(name, consts[name])
        raise OnnxImportError(f"{where}: input {name!r} is produced by nothing converted before it")

    def const(name: str, where: str) -> np.ndarray:
        if name in shapes and np.array_equal(*shapes[name]):
            return shapes[name][0]
        if name not in consts:
            raise OnnxImportError(f"{where}: input {name!r} must be a constant here")
        return consts[name]

    def known(name: str):
        """A shape tensor or a constant, as (batch 1, batch 2); None for an image-dependent value."""
        if name in shapes:
            return shapes[name]
        if name in consts:
            return consts[name], consts[name]
        return None

    def shape_op(op: str, ins: list[str], a: dict):
        """Evaluate a shape-only operator on both probes; None when an input depends on the image."""
        if op == "Shape":
            if ins[0] in shapes:  # the shape of a shape tensor
                full = [np.array(x.shape, dtype=np.int64) for x in shapes[ins[0]]]
            elif ins[0] in values:
                full = [np.array(sym_shape(values[ins[0]], b), dtype=np.int64) for b in (1, 2)]
            else:
                return None
            return tuple(x[a.get("start", 0):a.get("end")] for x in full)
        args = [known(i) if i else None for i in ins]
        if not args or args[0] is None or any(x is None for x, i in zip(args, ins) if i):
            return None
        if not any(i in shapes for i in ins):
            if op in ("Concat", "Identity", "Add", "Sub", "Mul", "Div"):
                return None  # constants alone are folded by the value path
        out = []
        for probe in (0, 1):
            v = [x[probe] if x is not None else None for x in args]
            if op == "Gather":
                r = np.take(v[0], v[1], axis=int(a.get("axis", 0)))
            elif op == "Unsqueeze":
                r = v[0]
                for ax in sorted(int(x) for x in (a["axes"] if "axes" in a else v[1])):
                    r = np.expand_dims(r, ax)
            elif op == "Squeeze":
                axes = a.get("axes", v[1] if len(v) > 1 else None)
                r = np.squeeze(v[0], axis=tuple(int(x) for x in axes) if axes is not None else None)
            elif op == "Slice":
                starts, ends = (a["starts"], a["ends"]) if "starts" in a else (v[1], v[2])
                axes = a.get("axes", v[3] if len(v) > 3 and v[3] is not None else range(len(starts)))
                steps = v[4] if len(v) > 4 and v[4] is not None else [1] * len(starts)
                index = [slice(None)] * v[0].ndim
                for st, en, ax, sp in zip(starts, ends, axes, steps):
                    index[int(ax)] = slice(int(st), int(min(en, 2 ** 62)), int(sp))
                r = v[0][tuple(index)]
            elif op == "Cast" or op == "Identity":
                r = v[0]
            elif op == "Concat":
                r = np.concatenate([np.atleast_1d(x) for x in v], axis=int(a.get("axis", 0)))
            elif op == "Div":
                r = v[0] // v[1] if v[0].dtype.kind in "iu" and v[1].dtype.kind in "iu" else v[0] / v[1]
            else:
                r = _ARITH[op](v[0], v[1])
            out.append(np.asarray(r))
        return tuple(out)

    counts: dict[str, int] = {}
    layers: set[str] = set()
    last_op = ""
    for index, node in enumerate(graph.node):
        op = node.op_type
        layer = _name(node.name or f"{op.lower()}{index}")
        while layer in layers:
            layer += "_"
        layers.add(layer)
        where = f"{source}: node {node.name or index!r} (op {op})"
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{where}: operator domain {node.domain!r} is not supported")
        if op not in SUPPORTED:
            raise OnnxImportError(f"{where}: {op} is not supported (supported: {', '.join(SUPPORTED)})")
        a = _attrs(node)
        ins = list(node.input)
        counts[op] = counts.get(op, 0) + 1
        last_op = op
        if op == "Constant":
            if "value" not in a:
                raise OnnxImportError(f"{where}: only a tensor 'value' is supported")
            consts[node.output[0]] = numpy_helper.to_array(a["value"])
            continue
        if op in SHAPE_OPS:
            folded = shape_op(op, ins, a)
            if folded is not None:
                shapes[node.output[0]] = folded
                continue
            if op in ("Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "Cast"):
                raise OnnxImportError(f"{where}: {op} is supported only on shapes, not on image values")
        if op in ("Identity", "Dropout"):  # inference: the input, unchanged
            if ins[0] in consts:
                consts[node.output[0]] = consts[ins[0]]
            else:
                values[node.output[0]] = value(ins[0], where)
            continue
        if op == "Conv":
            w = const(ins[1], where)
            kernel = tuple(int(k) for k in a.get("kernel_shape", w.shape[2:]))
            if len(kernel) != 2:
                raise OnnxImportError(f"{where}: only 2-D convolutions are supported, kernel {kernel}")
            bias = param(ins[2], const(ins[2], where)) if len(ins) > 2 and ins[2] else None
            out = mx.sym.Convolution(value(ins[0], where), weight=param(ins[1], w), bias=bias, kernel=kernel,
                                     num_filter=int(w.shape[0]), stride=tuple(a.get("strides", (1, 1))),
                                     pad=_pads(a, where), dilate=tuple(a.get("dilations", (1, 1))),
                                     num_group=int(a.get("group", 1)), no_bias=bias is None, name=layer)
        elif op == "BatchNormalization":
            if len(node.output) > 1 and any(node.output[1:]):
                raise OnnxImportError(f"{where}: training-mode BatchNormalization (extra outputs) is not supported")
            scale, b, mean, var = (const(i, where) for i in ins[1:5])
            out = mx.sym.BatchNorm(value(ins[0], where), gamma=param(ins[1], scale), beta=param(ins[2], b),
                                   moving_mean=param(ins[3], mean, True), moving_var=param(ins[4], var, True),
                                   eps=float(a.get("epsilon", 1e-5)), fix_gamma=False, use_global_stats=True,
                                   name=layer)
        elif op == "Relu":
            out = mx.sym.Activation(value(ins[0], where), act_type="relu", name=layer)
        elif op == "Sigmoid":
            out = mx.sym.Activation(value(ins[0], where), act_type="sigmoid", name=layer)
        elif op == "Clip":
            lo = float(const(ins[1], where)) if len(ins) > 1 and ins[1] else float(a.get("min", -3.4e38))
            hi = float(const(ins[2], where)) if len(ins) > 2 and ins[2] else float(a.get("max", 3.4e38))
            out = mx.sym.clip(value(ins[0], where), a_min=lo, a_max=hi, name=layer)
        elif op in ("MaxPool", "AveragePool"):
            if a.get("dilations", (1, 1)) not in ((1, 1), [1, 1]) or a.get("storage_order", 0):
                raise OnnxImportError(f"{where}: dilations or storage_order are not supported")
            kernel = tuple(int(k) for k in a["kernel_shape"])
            out = mx.sym.Pooling(value(ins[0], where), kernel=kernel, stride=tuple(a.get("strides", (1, 1))),
                                 pad=_pads(a, where), pool_type="max" if op == "MaxPool" else "avg",
                                 pooling_convention="full" if a.get("ceil_mode", 0) else "valid",
                                 count_include_pad=bool(a.get("count_include_pad", 0)), name=layer)
        elif op == "GlobalAveragePool":
            out = mx.sym.Pooling(value(ins[0], where), kernel=(1, 1), global_pool=True, pool_type="avg", name=layer)
        elif op == "Flatten":
            x = value(ins[0], where)
            dims = sym_shape(x, 1)
            axis = int(a.get("axis", 1)) % len(dims)
            if axis == 1:
                out = mx.sym.flatten(x, name=layer)
            elif axis == len(dims) - 1:  # every dimension but the last into the first
                out = mx.sym.reshape(x, shape=(-1, int(dims[-1])), name=layer)
            else:
                raise OnnxImportError(f"{where}: Flatten axis {a['axis']} of a {len(dims)}-D value is not supported")
        elif op == "Gemm":
            if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
                raise OnnxImportError(f"{where}: Gemm with transA, alpha or beta other than 0, 1, 1 is not supported")
            w = const(ins[1], where)
            w = w if a.get("transB", 0) else w.T
            c = const(ins[2], where) if len(ins) > 2 and ins[2] else None
            if c is not None and c.size not in (1, w.shape[0]):
                raise OnnxImportError(f"{where}: bias of shape {c.shape} is not supported")
            out = mx.sym.FullyConnected(value(ins[0], where), weight=param(ins[1], w),
                                        bias=None if c is None else param(ins[2], np.broadcast_to(c, (w.shape[0],))),
                                        num_hidden=int(w.shape[0]), no_bias=c is None, flatten=False, name=layer)
        elif op == "MatMul":
            w = const(ins[1], where)
            if w.ndim != 2:
                raise OnnxImportError(f"{where}: MatMul by a {w.ndim}-D constant is not supported (only 2-D)")
            out = mx.sym.FullyConnected(value(ins[0], where), weight=param(ins[1], w.T), num_hidden=int(w.shape[1]),
                                        no_bias=True, flatten=False, name=layer)
        elif op in ("Add", "Sub", "Mul", "Div"):
            if a.get("broadcast") == 1 and "axis" in a:  # opset < 7 style
                raise OnnxImportError(f"{where}: legacy broadcast with axis is not supported")
            operands = []
            for i in ins:
                if i in consts and i not in values:
                    c = np.asarray(consts[i], dtype=np.float32)
                    operands.append(("const", i, c))
                else:
                    operands.append(("value", i, None))
            if all(kind == "const" for kind, _, _ in operands):
                x, y = (c for _, _, c in operands)
                consts[node.output[0]] = x / y if op == "Div" else _ARITH[op](x, y)
                continue
            others = [value(i, where) for kind, i, _ in operands if kind == "value"]
            want = max(len(sym_shape(x, 1)) for x in others)
            syms = []
            for kind, i, c in operands:  # a constant gets leading 1s: numpy's broadcasting, which MXNet spells out
                syms.append(param(f"{i}@{layer}", c.reshape((1,) * max(0, want - c.ndim) + c.shape)) if kind == "const"
                            else value(i, where))
            fn = {"Add": mx.sym.broadcast_add, "Sub": mx.sym.broadcast_sub, "Mul": mx.sym.broadcast_mul,
                  "Div": mx.sym.broadcast_div}[op]
            out = fn(*syms, name=layer)
        elif op == "Concat":
            out = mx.sym.concat(*[value(i, where) for i in ins], dim=int(a["axis"]), name=layer)
        elif op == "Reshape":
            if a.get("allowzero", 0):
                raise OnnxImportError(f"{where}: allowzero=1 is not supported")
            if len(ins) > 1 and ins[1] in shapes:  # computed from the input's shape: the batch follows it
                one, two = (np.asarray(x).astype(np.int64).ravel() for x in shapes[ins[1]])
                moving = [i for i in range(len(one)) if one[i] != two[i]]
                if moving not in ([], [0]):
                    raise OnnxImportError(f"{where}: a target shape whose dimensions {moving} follow the batch "
                                          "is not supported (only the first)")
                shape = tuple(0 if i in moving else int(one[i]) for i in range(len(one)))
            else:
                shape = tuple(int(s) for s in (const(ins[1], where) if len(ins) > 1 else a["shape"]))
            out = mx.sym.reshape(value(ins[0], where), shape=shape, name=layer)
        elif op == "ReduceMean":
            axes = a.get("axes")
            if axes is None and len(ins) > 1 and ins[1]:
                axes = const(ins[1], where).tolist()
            out = mx.sym.mean(value(ins[0], where), axis=tuple(int(x) for x in axes) if axes is not None else None,
                              keepdims=bool(a.get("keepdims", 1)), name=layer)
        elif op == "Softmax":
            x = value(ins[0], where)
            dims = len(sym_shape(x, 1))
            axis = int(a.get("axis", 1 if opset < 13 else -1)) % dims
            if opset < 13 and axis != dims - 1:  # before 13: over everything from axis on, as one row
                flat = mx.sym.softmax(mx.sym.reshape(x, shape=(0,) * axis + (-1,)), axis=-1)
                out = mx.sym.reshape_like(flat, x, name=layer)
            else:
                out = mx.sym.softmax(x, axis=axis, name=layer)
        values[node.output[0]] = out
    final = graph.output[0].name
    if final not in values:
        raise OnnxImportError(f"{source}: the output {final!r} is a constant, not computed from the image")
    sym = values[final]
    missing = [n for n in sym.list_arguments() if n != DATA_NAME and n not in arg]
    if missing:
        raise OnnxImportError(f"{source}: no weights for {missing}")
    keep = set(sym.list_arguments())
    keep_aux = set(sym.list_auxiliary_states())
    return Converted(sym.tojson(), {k: v for k, v in arg.items() if k in keep},
                     {k: v for k, v in aux.items() if k in keep_aux}, image_size, last_op, opset, counts)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m infer.import_onnx", description="Convert an ONNX image classifier or "
                                "feature extractor to the MXNet symbol + params that infer loads, and print the infer "
                                "flags to use with them.")
    p.add_argument("model", help="the .onnx file: a local path, s3:// or http(s):// URL")
    p.add_argument("--output", required=True, help="where the two files go, e.g. s3://BUCKET/models/ (or a folder)")
    p.add_argument("--name", default=None, help="file name stem (default: the model file's stem)")
    add_common_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Convert and write; print the infer flags."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise UsageError("python -m infer.import_onnx needs the onnx package: pip install onnx==1.23.2 "
                         "(shardinfer's 'import' extra)") from e
    endpoint = endpoint_from(args)
    name = args.name or os.path.basename(args.model.rstrip("/")).rsplit(".", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise UsageError(f"--name {name!r}: use letters, digits and . _ + - only")
    converted = convert(storage.read_bytes(args.model, endpoint), args.model)  # all in memory: an error writes nothing
    params = params_bytes(converted.arg, converted.aux)
    sym_uri = storage.join(args.output, f"{name}-symbol.json")
    param_uri = storage.join(args.output, f"{name}-0000.params")
    storage.write_bytes(param_uri, params, endpoint)
    storage.write_bytes(sym_uri, converted.symbol_json.encode(), endpoint, "application/json")
    ops = ", ".join(f"{op} {n}" for op, n in sorted(converted.nodes.items()))
    print(f"{PROG}: {args.model}: opset {converted.opset}, {sum(converted.nodes.values())} nodes ({ops}); "
          f"{len(converted.arg) + len(converted.aux)} parameters")
    print(f"{PROG}: wrote {sym_uri} and {param_uri}")
    head = ("its output is a Softmax: probabilities" if converted.head == "Softmax"
            else "its output is logits: infer applies the softmax")
    print(f"{PROG}: {head}; the input was renamed {DATA_NAME!r}")
    size = f" --image-size {converted.image_size}" if converted.image_size else " --image-size S"
    print(f"{PROG}: infer flags:\n  --sym-url {sym_uri} --param-url {param_uri} --label-url LABELS.txt{size}")
    print(f"{PROG}: the model does not say how it was normalised; torchvision and ONNX Model Zoo ImageNet models "
          f"want --mean {IMAGENET_MEAN} --std {IMAGENET_STD} --resize shorter-side-crop")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``python -m infer.import_onnx`` and tests."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    exit_process(main())
