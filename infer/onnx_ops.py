"""One small function per ONNX operator, in a table keyed by op and the opset its semantics start at.

:func:`converter_for` picks, for a node, the newest registration not after the model's opset (the
shape onnx2torch's registry and MXNet's own ``_op_translations`` take).  Every function receives the
conversion state (:class:`infer.onnx_graph.Graph`: image-dependent values as MXNet symbols, constants
as arrays) and the node, and returns the node's MXNet symbol (or one per output).  Constant subgraphs
never reach this table: :mod:`infer.onnx_graph` folds every node whose inputs are all known first.

:func:`supported` lists the operators, for ``--help``, the errors and docs/models.md.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from common.errors import ModelError


class OnnxImportError(ModelError):
    """An ONNX model that cannot be converted; the message names the file, and the node and op where it stopped."""


Converter = Callable  # (graph, node) -> symbol | list of symbols
_CONVERTERS: dict[tuple[str, int], Converter] = {}


def converts(*ops: str, since: int = 1):
    """Register a function for ``ops`` from opset ``since`` on."""
    def register(fn: Converter) -> Converter:
        for op in ops:
            _CONVERTERS[(op, since)] = fn
        return fn
    return register


def converter_for(op: str, opset: int, where: str) -> Converter:
    """The function for ``op`` at the model's ``opset``: the newest registration not after it."""
    versions = [v for (o, v) in _CONVERTERS if o == op and v <= opset]
    if not versions:
        raise OnnxImportError(f"{where}: {op} is not supported (supported: {', '.join(supported())})")
    return _CONVERTERS[(op, max(versions))]


def supported() -> list[str]:
    """Every ONNX operator some opset converts (plus those only ever folded), sorted; not the import's own fused
    forms (:data:`INTERNAL`)."""
    return sorted(({op for op, _ in _CONVERTERS} | set(FOLDED_ONLY)) - set(INTERNAL))


# What infer.onnx_fuse writes for a pattern that has no ONNX operator of its own: never in a user's file.
INTERNAL = ("FusedMatMulAdd",)


# Operators that only ever compute constants or shapes: folded at import, never converted.
FOLDED_ONLY = ("Constant", "ConstantOfShape", "Shape", "Size", "Range", "NonZero", "ReduceProd", "CumSum")


def _mx():
    import mxnet as mx

    return mx


def _ints(values) -> tuple:
    return tuple(int(v) for v in values)


# ---- padding -------------------------------------------------------------------------------------------------

def spatial_pads(g, node, x: str, kernel: tuple, strides: tuple, dilations: tuple) -> tuple[tuple, tuple]:
    """``(begin, end)`` pads per spatial axis, from ``pads`` or ``auto_pad`` (SAME_UPPER/LOWER made explicit)."""
    n = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        dims = g.shape(x)[2:]
        begin, end = [], []
        for size, k, s, d in zip(dims, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return tuple(begin), tuple(end)
    if auto == "VALID":
        return (0,) * n, (0,) * n
    pads = _ints(node.attr("pads", [0] * 2 * n))
    return pads[:n], pads[n:]


def _explicit_pad(g, x, begin: tuple, end: tuple, value: float, node):
    """``x`` (N, C, spatial...) padded with ``value``: MXNet's pad op, for the asymmetric part of a pad."""
    mx = _mx()
    if len(begin) not in (2, 3):
        raise OnnxImportError(f"{node.where}: asymmetric padding of a {len(begin)}-D spatial value is not supported")
    width = (0, 0, 0, 0) + tuple(v for pair in zip(begin, end) for v in pair)
    return mx.sym.pad(x, mode="constant", pad_width=width, constant_value=value, name=f"{node.layer}_pad")


def _split_pads(g, x, begin, end, value, node):
    """``(input, the op's own pad)``: symmetric pads stay the op's; asymmetric ones are all made an explicit pad."""
    if begin == end:
        return x, begin
    return _explicit_pad(g, x, begin, end, value, node), (0,) * len(begin)


# ---- convolution, normalisation ------------------------------------------------------------------------------

@converts("Conv")
def conv(g, node):
    mx = _mx()
    w = g.const(node.inputs[1], node)
    kernel = _ints(node.attr("kernel_shape", w.shape[2:]))
    if len(kernel) not in (1, 2, 3):
        raise OnnxImportError(f"{node.where}: a {len(kernel)}-D convolution is not supported")
    strides = _ints(node.attr("strides", [1] * len(kernel)))
    dilations = _ints(node.attr("dilations", [1] * len(kernel)))
    begin, end = spatial_pads(g, node, node.inputs[0], kernel, strides, dilations)
    x, pad = _split_pads(g, g.sym(node.inputs[0], node), begin, end, 0.0, node)
    bias = node.input(2)
    return mx.sym.Convolution(x, weight=g.param(node.inputs[1], w, var=f"{node.layer}_weight"),
                              bias=g.param(bias, g.const(bias, node), var=f"{node.layer}_bias") if bias else None,
                              kernel=kernel, num_filter=int(w.shape[0]), stride=strides, pad=pad, dilate=dilations,
                              num_group=int(node.attr("group", 1)), no_bias=not bias, name=node.layer)


@converts("ConvTranspose")
def conv_transpose(g, node):
    mx = _mx()
    w = g.const(node.inputs[1], node)
    kernel = _ints(node.attr("kernel_shape", w.shape[2:]))
    strides = _ints(node.attr("strides", [1] * len(kernel)))
    dilations = _ints(node.attr("dilations", [1] * len(kernel)))
    if node.attr("output_shape", None) is not None or node.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise OnnxImportError(f"{node.where}: ConvTranspose with output_shape or auto_pad is not supported "
                              "(export with explicit pads)")
    pads = _ints(node.attr("pads", [0] * 2 * len(kernel)))
    if pads[:len(kernel)] != pads[len(kernel):]:
        raise OnnxImportError(f"{node.where}: ConvTranspose with asymmetric pads {list(pads)} is not supported")
    group = int(node.attr("group", 1))
    bias = node.input(2)
    return mx.sym.Deconvolution(g.sym(node.inputs[0], node), weight=g.param(node.inputs[1], w,
                                                                            var=f"{node.layer}_weight"),
                                bias=g.param(bias, g.const(bias, node), var=f"{node.layer}_bias") if bias else None,
                                kernel=kernel, num_filter=int(w.shape[1]) * group, stride=strides,
                                pad=pads[:len(kernel)],
                                adj=_ints(node.attr("output_padding", [0] * len(kernel))), dilate=dilations,
                                num_group=group, no_bias=not bias, name=node.layer)


@converts("BatchNormalization")
def batch_norm(g, node):
    mx = _mx()
    if any(node.outputs[1:]) or node.attr("training_mode", 0):
        raise OnnxImportError(f"{node.where}: training-mode BatchNormalization is not supported")
    scale, bias, mean, var = (node.inputs[i] for i in range(1, 5))
    return mx.sym.BatchNorm(g.sym(node.inputs[0], node), gamma=g.param(scale, g.const(scale, node),
                                                                       var=f"{node.layer}_gamma"),
                            beta=g.param(bias, g.const(bias, node), var=f"{node.layer}_beta"),
                            moving_mean=g.param(mean, g.const(mean, node), True, var=f"{node.layer}_moving_mean"),
                            moving_var=g.param(var, g.const(var, node), True, var=f"{node.layer}_moving_var"),
                            eps=float(node.attr("epsilon", 1e-5)), fix_gamma=False, use_global_stats=True,
                            name=node.layer)


@converts("InstanceNormalization")
def instance_norm(g, node):
    mx = _mx()
    scale, bias = node.inputs[1], node.inputs[2]
    return mx.sym.InstanceNorm(g.sym(node.inputs[0], node),
                               gamma=g.param(scale, g.const(scale, node), var=f"{node.layer}_gamma"),
                               beta=g.param(bias, g.const(bias, node), var=f"{node.layer}_beta"),
                               eps=float(node.attr("epsilon", 1e-5)), name=node.layer)


@converts("LayerNormalization", since=1)  # opset 17's op, and what infer.onnx_fuse makes of older spellings
def layer_norm(g, node):
    mx = _mx()
    rank = len(g.shape(node.inputs[0]))
    axis = int(node.attr("axis", -1)) % rank
    if axis != rank - 1 or any(node.outputs[1:]):
        raise OnnxImportError(f"{node.where}: LayerNormalization over axes {axis}..{rank - 1} (or with mean/inv-std "
                              "outputs) is not supported: MXNet normalises over one axis")
    width = g.shape(node.inputs[0])[-1]
    scale = np.broadcast_to(g.const(node.inputs[1], node), (width,))
    bias = np.broadcast_to(g.const(node.inputs[2], node), (width,)) if node.input(2) else np.zeros(width, np.float32)
    return mx.sym.LayerNorm(g.sym(node.inputs[0], node),
                            gamma=g.param(node.inputs[1], scale, var=f"{node.layer}_gamma"),
                            beta=g.param(node.input(2) or f"{node.layer}@beta", bias, var=f"{node.layer}_beta"),
                            axis=-1, eps=float(node.attr("epsilon", 1e-5)), name=node.layer)


@converts("LRN")
def lrn(g, node):
    mx = _mx()
    return mx.sym.LRN(g.sym(node.inputs[0], node), alpha=float(node.attr("alpha", 1e-4)),
                      beta=float(node.attr("beta", 0.75)), knorm=float(node.attr("bias", 1.0)),
                      nsize=int(node.attr("size")), name=node.layer)


# ---- activations ---------------------------------------------------------------------------------------------

def _activation(kind: str):
    def convert(g, node):
        return _mx().sym.Activation(g.sym(node.inputs[0], node), act_type=kind, name=node.layer)
    return convert


for _op, _kind in (("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"), ("Softplus", "softrelu"),
                   ("Softsign", "softsign")):
    converts(_op)(_activation(_kind))


@converts("LeakyRelu")
def leaky_relu(g, node):
    return _mx().sym.LeakyReLU(g.sym(node.inputs[0], node), act_type="leaky", slope=float(node.attr("alpha", 0.01)),
                               name=node.layer)


@converts("Elu")
def elu(g, node):
    return _mx().sym.LeakyReLU(g.sym(node.inputs[0], node), act_type="elu", slope=float(node.attr("alpha", 1.0)),
                               name=node.layer)


@converts("Selu")
def selu(g, node):
    mx = _mx()
    x = g.sym(node.inputs[0], node)
    alpha, gamma = float(node.attr("alpha", 1.67326319217681884765625)), float(node.attr("gamma",
                                                                                          1.05070102214813232421875))
    negative = mx.sym.expm1(mx.sym.minimum(x, 0.0)) * alpha
    return mx.sym._internal._mul_scalar(mx.sym.relu(x) + negative, scalar=gamma, name=node.layer)


@converts("PRelu")
def prelu(g, node):
    mx = _mx()
    x = g.sym(node.inputs[0], node)
    slope = g.const(node.inputs[1], node)
    shape = g.shape(node.inputs[0])
    # channel-wise only when the slope lines up with axis 1 under numpy's broadcasting: (C, 1, 1) for NCHW (a 1-D
    # slope of C values lines up with the last axis)
    if len(shape) >= 3 and slope.ndim == len(shape) - 1 and slope.shape[0] == shape[1] and \
            all(d == 1 for d in slope.shape[1:]):
        return mx.sym.LeakyReLU(x, gamma=g.param(node.inputs[1], slope.reshape(-1)), act_type="prelu", name=node.layer)
    negative = mx.sym.broadcast_mul(mx.sym.minimum(x, 0.0), g.broadcastable(node.inputs[1], len(shape), node))
    return mx.sym.broadcast_add(mx.sym.relu(x), negative, name=node.layer)


@converts("HardSigmoid")
def hard_sigmoid(g, node):
    return _mx().sym.hard_sigmoid(g.sym(node.inputs[0], node), alpha=float(node.attr("alpha", 0.2)),
                                  beta=float(node.attr("beta", 0.5)), name=node.layer)


@converts("HardSwish", since=14)
def hard_swish(g, node):
    mx = _mx()
    x = g.sym(node.inputs[0], node)
    return mx.sym.elemwise_mul(x, mx.sym.hard_sigmoid(x, alpha=1.0 / 6, beta=0.5), name=node.layer)


@converts("Mish", since=18)
def mish(g, node):
    mx = _mx()
    x = g.sym(node.inputs[0], node)
    return mx.sym.elemwise_mul(x, mx.sym.tanh(mx.sym.Activation(x, act_type="softrelu")), name=node.layer)


@converts("Erf")
def erf(g, node):
    return _mx().sym.erf(g.sym(node.inputs[0], node), name=node.layer)


@converts("Gelu", since=1)  # opset 20's op, and what infer.onnx_fuse makes of torch's erf spelling
def gelu(g, node):
    mx = _mx()
    x = g.sym(node.inputs[0], node)
    approximate = node.attr("approximate", "none")
    if (approximate.decode() if isinstance(approximate, bytes) else approximate) == "tanh":
        inner = mx.sym.tanh((x + 0.044715 * x ** 3) * math.sqrt(2 / math.pi))
        return mx.sym.elemwise_mul(x * 0.5, inner + 1.0, name=node.layer)
    return mx.sym.LeakyReLU(x, act_type="gelu", name=node.layer)


@converts("Clip")
def clip(g, node):
    lo, hi = node.attr("min", -3.4028234663852886e38), node.attr("max", 3.4028234663852886e38)
    return _mx().sym.clip(g.sym(node.inputs[0], node), a_min=float(lo), a_max=float(hi), name=node.layer)


@converts("Clip", since=11)
def clip_inputs(g, node):
    lo = float(g.const(node.input(1), node)) if node.input(1) else -3.4028234663852886e38
    hi = float(g.const(node.input(2), node)) if node.input(2) else 3.4028234663852886e38
    return _mx().sym.clip(g.sym(node.inputs[0], node), a_min=lo, a_max=hi, name=node.layer)


def _unary(fn_name: str):
    def convert(g, node):
        return getattr(_mx().sym, fn_name)(g.sym(node.inputs[0], node), name=node.layer)
    return convert


for _op, _fn in (("Sqrt", "sqrt"), ("Reciprocal", "reciprocal"), ("Neg", "negative"), ("Abs", "abs"), ("Exp", "exp"),
                 ("Log", "log"), ("Floor", "floor"), ("Ceil", "ceil"), ("Sign", "sign")):
    converts(_op)(_unary(_fn))


@converts("Identity", "Dropout")
def identity(g, node):
    """Inference: the input unchanged (Dropout's mask output is not made: a node that reads it fails)."""
    return g.alias(node.inputs[0], node)


@converts("Cast")
def cast(g, node):
    from onnx import TensorProto

    if node.attr("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        raise OnnxImportError(f"{node.where}: Cast of an image value to a non-float type is not supported")
    return g.alias(node.inputs[0], node)


# ---- element-wise arithmetic ---------------------------------------------------------------------------------

_BINARY = {"Add": ("broadcast_add", "_plus_scalar", "_plus_scalar"),
           "Sub": ("broadcast_sub", "_minus_scalar", "_rminus_scalar"),
           "Mul": ("broadcast_mul", "_mul_scalar", "_mul_scalar"),
           "Div": ("broadcast_div", "_div_scalar", "_rdiv_scalar"),
           "Pow": ("broadcast_power", "_power_scalar", "_rpower_scalar"),
           "Max": ("broadcast_maximum", "_maximum_scalar", "_maximum_scalar"),
           "Min": ("broadcast_minimum", "_minimum_scalar", "_minimum_scalar")}


_ELEMWISE = {"Add": "elemwise_add", "Sub": "elemwise_sub", "Mul": "elemwise_mul", "Div": "elemwise_div"}


def _binary(g, node, op: str, a: str, b: str, name: str):
    """``a op b`` with numpy broadcasting: a scalar constant as a scalar op, anything else with leading 1s."""
    mx = _mx()
    full, scalar, rscalar = _BINARY[op]
    ka, kb = g.is_const(a), g.is_const(b)
    if kb and g.const(b, node).size == 1 and g.const(b, node).ndim <= len(g.shape(a)):
        return getattr(mx.sym._internal, scalar)(g.sym(a, node), scalar=float(g.const(b, node).ravel()[0]), name=name)
    if ka and g.const(a, node).size == 1 and g.const(a, node).ndim <= len(g.shape(b)):
        return getattr(mx.sym._internal, rscalar)(g.sym(b, node), scalar=float(g.const(a, node).ravel()[0]), name=name)
    if not ka and not kb and g.probe_shapes(a) == g.probe_shapes(b) and op in _ELEMWISE:
        # the same shape: MXNet's element-wise kernel (its broadcast kernel is several times slower)
        return getattr(mx.sym, _ELEMWISE[op])(g.sym(a, node), g.sym(b, node), name=name)
    rank = max(len(g.shape(a)), len(g.shape(b)))
    return getattr(mx.sym, full)(g.broadcastable(a, rank, node), g.broadcastable(b, rank, node), name=name)


_COMPARE = {"Greater": "broadcast_greater", "Less": "broadcast_lesser", "Equal": "broadcast_equal",
            "GreaterOrEqual": "broadcast_greater_equal", "LessOrEqual": "broadcast_lesser_equal"}


def _compare(op: str):
    """A comparison of image values: 1.0 where true, 0.0 where false (what Where and Not read here)."""
    def convert(g, node):
        a, b = node.inputs[0], node.inputs[1]
        rank = max(len(g.shape(a)), len(g.shape(b)))
        return getattr(_mx().sym, _COMPARE[op])(g.broadcastable(a, rank, node),
                                                g.broadcastable(b, rank, node), name=node.layer)
    return convert


for _op in _COMPARE:
    converts(_op, since=7)(_compare(_op))


@converts("Not")
def logical_not(g, node):
    return _mx().sym._internal._rminus_scalar(g.sym(node.inputs[0], node), scalar=1.0, name=node.layer)


@converts("Where", since=9)
def where(g, node):
    """``cond ? x : y`` with numpy broadcasting: each operand broadcast to the output's shape first (MXNet's where
    takes equal shapes; a product with the condition would turn an unused inf into nan)."""
    mx = _mx()
    names = node.inputs[:3]
    rank = max(len(g.shape(n)) for n in names)
    shapes = [[(1,) * (rank - len(s)) + tuple(s) for s in g.probe_shapes(n)] for n in names]
    full = [tuple(max(d) for d in zip(*(s[k] for s in shapes))) for k in (0, 1)]
    syms = []
    for name, (one, two) in zip(names, shapes):
        sym = g.broadcastable(name, rank, node)
        for axis in range(rank):
            if full[0][axis] != full[1][axis] and one[axis] == two[axis]:  # a 1 where the output follows the batch
                sym = mx.sym.broadcast_like(sym, g.data, lhs_axes=(axis,), rhs_axes=(0,))
        target = tuple(0 if full[0][a] != full[1][a] else full[0][a] for a in range(rank))
        syms.append(mx.sym.broadcast_to(sym, shape=target) if one != full[0] or two != full[1] else sym)
    return mx.sym.where(*syms, name=node.layer)


def _binary_op(op: str):
    def convert(g, node):
        if op == "Pow" and g.is_const(node.inputs[1]) and g.const(node.inputs[1], node).size == 1:
            exponent = float(g.const(node.inputs[1], node).ravel()[0])
            if exponent == 2.0:  # x * x: exact, and what a LayerNorm's variance is made of
                x = g.sym(node.inputs[0], node)
                return _mx().sym.elemwise_mul(x, x, name=node.layer)
        return _binary(g, node, op, node.inputs[0], node.inputs[1], node.layer)
    return convert


for _op in ("Add", "Sub", "Mul", "Div", "Pow"):
    converts(_op, since=7)(_binary_op(_op))


def _variadic(op: str, mean: bool = False):
    """Sum, Mean, Max, Min of any number of inputs: a chain of broadcasting binary ops."""
    def convert(g, node):
        ins = [i for i in node.inputs if i]
        if len(ins) == 1:
            return g.alias(ins[0], node)
        acc = ins[0]
        for k, other in enumerate(ins[1:]):
            last = k == len(ins) - 2 and not mean
            acc = g.temp(_binary(g, node, op, acc, other, node.layer if last else f"{node.layer}_{k}"), node)
        if mean:
            return _mx().sym._internal._div_scalar(g.values[acc], scalar=float(len(ins)), name=node.layer)
        return g.values[acc]
    return convert


converts("Sum", since=6)(_variadic("Add"))
converts("Mean", since=6)(_variadic("Add", mean=True))
converts("Max", since=6)(_variadic("Max"))
converts("Min", since=6)(_variadic("Min"))


# ---- linear layers -------------------------------------------------------------------------------------------

def _fc_flatten(g, node) -> bool:
    """FullyConnected's ``flatten``: True on a 2-D input (the same product, and the only form MXNet's int8
    quantization takes: with flatten=False it fails looking up the quantized weight), False on more axes (a
    token-wise linear layer)."""
    return len(g.shape(node.inputs[0])) == 2


@converts("Gemm")
def gemm(g, node):
    """``alpha * A' B' + beta * C``: FullyConnected when B is a constant (the classifier), a matrix product else."""
    mx = _mx()
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    a = g.sym(node.inputs[0], node)
    if node.attr("transA", 0):
        a = mx.sym.transpose(a, name=f"{node.layer}_transA")
    c = node.input(2)
    const_bias = bool(c) and g.is_const(c)
    product = node.layer if not c or const_bias else f"{node.layer}_product"
    if g.is_const(node.inputs[1]):
        w = g.const(node.inputs[1], node)
        w = (w if node.attr("transB", 0) else w.T) * alpha  # FullyConnected's weight is (out, in)
        bias = None
        if const_bias:
            cv = g.const(c, node) * beta
            if cv.size not in (1, w.shape[0]):
                raise OnnxImportError(f"{node.where}: a Gemm bias of shape {cv.shape} is not supported")
            bias = g.param(f"{c}@{node.layer}", np.broadcast_to(cv.reshape(-1), (w.shape[0],)), var=f"{product}_bias")
        out = mx.sym.FullyConnected(a, weight=g.param(f"{node.inputs[1]}@{node.layer}", w, var=f"{product}_weight"),
                                    bias=bias,
                                    num_hidden=int(w.shape[0]), no_bias=bias is None, flatten=_fc_flatten(g, node),
                                    name=product)
        if not c or const_bias:
            return out
    else:
        out = mx.sym.linalg.gemm2(a, g.sym(node.inputs[1], node), transpose_b=bool(node.attr("transB", 0)),
                                  alpha=alpha, name=product if not c else f"{node.layer}_product")
        if not c:
            return out
    scaled = c if beta == 1.0 else g.temp(mx.sym._internal._mul_scalar(g.sym(c, node), scalar=beta), node)
    return _binary(g, node, "Add", g.temp(out, node), scaled, node.layer)


@converts("FusedMatMulAdd")
def matmul_add(g, node):
    """``MatMul(x, W) + b`` (infer.onnx_fuse): one FullyConnected with its bias."""
    mx = _mx()
    w, b = g.const(node.inputs[1], node), g.const(node.inputs[2], node)
    return mx.sym.FullyConnected(g.sym(node.inputs[0], node),
                                 weight=g.param(f"{node.inputs[1]}@T", w.T, var=f"{node.layer}_weight"),
                                 bias=g.param(node.inputs[2], b.reshape(-1), var=f"{node.layer}_bias"),
                                 num_hidden=int(w.shape[1]),
                                 flatten=_fc_flatten(g, node), name=node.layer)


@converts("MatMul")
def matmul(g, node):
    mx = _mx()
    a, b = node.inputs[0], node.inputs[1]
    if g.is_const(b) and g.const(b, node).ndim == 2:
        w = g.const(b, node)
        return mx.sym.FullyConnected(g.sym(a, node), weight=g.param(f"{b}@T", w.T, var=f"{node.layer}_weight"),
                                     num_hidden=int(w.shape[1]),
                                     no_bias=True, flatten=_fc_flatten(g, node), name=node.layer)
    sa, sb = g.shape(a), g.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        raise OnnxImportError(f"{node.where}: MatMul of a {len(sa)}-D and a {len(sb)}-D value is not supported")
    rank = max(len(sa), len(sb))
    x, y = g.broadcastable(a, rank, node), g.broadcastable(b, rank, node)
    sa, sb = (1,) * (rank - len(sa)) + tuple(sa), (1,) * (rank - len(sb)) + tuple(sb)
    if sa[:-2] != sb[:-2]:
        lead = tuple(max(p, q) for p, q in zip(sa[:-2], sb[:-2]))
        if sa[:-2] != lead:
            x = mx.sym.broadcast_like(x, y, lhs_axes=tuple(range(rank - 2)), rhs_axes=tuple(range(rank - 2)))
        else:
            y = mx.sym.broadcast_like(y, x, lhs_axes=tuple(range(rank - 2)), rhs_axes=tuple(range(rank - 2)))
    if rank == 2:
        return mx.sym.dot(x, y, name=node.layer)
    if rank == 3:
        return mx.sym.batch_dot(x, y, name=node.layer)
    if rank == 4:  # attention's (batch, heads, n, d): batch_dot over batch x heads (linalg.gemm2 is 4x slower)
        heads = max(sa[1], sb[1])
        merged = mx.sym.batch_dot(mx.sym.reshape(x, shape=(-3, 0, 0)), mx.sym.reshape(y, shape=(-3, 0, 0)),
                                  name=f"{node.layer}_dot")
        return mx.sym.reshape(merged, shape=(-4, -1, heads, 0, 0), name=node.layer)
    return mx.sym.linalg.gemm2(x, y, name=node.layer)  # over the last two axes, the leading ones as a batch


# ---- pooling -------------------------------------------------------------------------------------------------

def _pool(g, node, kind: str):
    mx = _mx()
    kernel = _ints(node.attr("kernel_shape"))
    strides = _ints(node.attr("strides", [1] * len(kernel)))
    if any(d != 1 for d in node.attr("dilations", [1] * len(kernel))) or node.attr("storage_order", 0):
        raise OnnxImportError(f"{node.where}: pooling with dilations or storage_order is not supported")
    if any(node.outputs[1:]):
        raise OnnxImportError(f"{node.where}: MaxPool's indices output is not supported")
    begin, end = spatial_pads(g, node, node.inputs[0], kernel, strides, (1,) * len(kernel))
    include = bool(node.attr("count_include_pad", 0))
    x = g.sym(node.inputs[0], node)
    ceil = bool(node.attr("ceil_mode", 0))
    if begin != end and kind == "avg" and not include:
        return _average_excluding_pads(g, node, x, kernel, strides, begin, end, ceil)
    if begin != end:
        x, pad = _split_pads(g, x, begin, end, -3.4e38 if kind == "max" else 0.0, node)
    else:
        pad = begin
    if ceil:
        # ONNX (and PyTorch) drop a last window that would start in the right padding; MXNet's "full" keeps it
        for size, k, s, p in zip(g.shape(node.inputs[0])[2:], kernel, strides, pad):
            out = math.ceil((size + 2 * p - k) / s) + 1
            if (out - 1) * s >= size + p:
                raise OnnxImportError(f"{node.where}: ceil_mode pooling whose last window starts in the padding "
                                      "is not supported")
    extra = {"p_value": int(node.attr("p", 2))} if kind == "lp" else {}
    return mx.sym.Pooling(x, kernel=kernel, stride=strides, pad=pad, pool_type=kind,
                          pooling_convention="full" if ceil else "valid", count_include_pad=include,
                          name=node.layer, **extra)


def _average_excluding_pads(g, node, x, kernel, strides, begin, end, ceil):
    """AveragePool with asymmetric pads that are not counted (Caffe's and TF's "SAME" average): the sum over each
    window of the zero-padded input, divided by how many real pixels the window covers (computed here)."""
    mx = _mx()
    if ceil:
        raise OnnxImportError(f"{node.where}: AveragePool with asymmetric pads and ceil_mode is not supported")
    dims = g.shape(node.inputs[0])[2:]
    ones = np.pad(np.ones(dims), list(zip(begin, end)))
    windows = np.lib.stride_tricks.sliding_window_view(ones, kernel)[tuple(slice(None, None, s) for s in strides)]
    counts = windows.sum(axis=tuple(range(len(kernel), 2 * len(kernel))))
    padded = _explicit_pad(g, x, begin, end, 0.0, node)
    mean_all = mx.sym.Pooling(padded, kernel=kernel, stride=strides, pool_type="avg", count_include_pad=True,
                              name=f"{node.layer}_sum")
    scale = (np.prod(kernel) / counts).reshape((1, 1) + counts.shape)
    return mx.sym.broadcast_mul(mean_all, g.param(f"{node.layer}@count", scale), name=node.layer)


converts("MaxPool")(lambda g, node: _pool(g, node, "max"))
converts("AveragePool")(lambda g, node: _pool(g, node, "avg"))
converts("LpPool")(lambda g, node: _pool(g, node, "lp"))


def _global_pool(kind: str):
    def convert(g, node):
        extra = {"p_value": int(node.attr("p", 2))} if kind == "lp" else {}
        return _mx().sym.Pooling(g.sym(node.inputs[0], node), kernel=(1, 1), global_pool=True, pool_type=kind,
                                 name=node.layer, **extra)
    return convert


converts("GlobalAveragePool")(_global_pool("avg"))
converts("GlobalMaxPool")(_global_pool("max"))
converts("GlobalLpPool")(_global_pool("lp"))


@converts("Pad")
def pad_attrs(g, node):
    return _pad(g, node, _ints(node.attr("pads", node.attr("paddings", []))), float(node.attr("value", 0.0)), None)


@converts("Pad", since=11)
def pad_inputs(g, node):
    value = float(g.const(node.input(2), node).ravel()[0]) if node.input(2) else 0.0
    axes = _ints(g.const(node.input(3), node)) if node.input(3) else None
    return _pad(g, node, _ints(g.const(node.inputs[1], node)), value, axes)


def _pad(g, node, pads: tuple, value: float, axes):
    mx = _mx()
    rank = len(g.shape(node.inputs[0]))
    if axes is not None:
        full = [0] * 2 * rank
        for k, ax in enumerate(axes):
            full[ax % rank], full[ax % rank + rank] = pads[k], pads[k + len(axes)]
        pads = tuple(full)
    begin, end = pads[:rank], pads[rank:]
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x = g.sym(node.inputs[0], node)
    if any(p < 0 for p in pads):  # a negative pad crops
        x = mx.sym.slice(x, begin=tuple(-min(p, 0) for p in begin),
                         end=tuple(min(p, 0) or None for p in end), name=f"{node.layer}_crop")
        begin, end = tuple(max(p, 0) for p in begin), tuple(max(p, 0) for p in end)
    if not any(begin + end):
        return mx.sym.identity(x, name=node.layer)
    if rank not in (4, 5) or any(begin[:2] + end[:2]):
        raise OnnxImportError(f"{node.where}: Pad of a {rank}-D value on other than its spatial axes is not supported")
    if mode not in ("constant", "reflect", "edge"):
        raise OnnxImportError(f"{node.where}: Pad mode {mode!r} is not supported")
    width = tuple(v for pair in zip(begin, end) for v in pair)
    return mx.sym.pad(x, mode=mode, pad_width=width, constant_value=value, name=node.layer)


# ---- shapes and layout ---------------------------------------------------------------------------------------

@converts("Flatten")
def flatten(g, node):
    mx = _mx()
    shape = g.shape(node.inputs[0])
    axis = int(node.attr("axis", 1)) % max(len(shape), 1)
    x = g.sym(node.inputs[0], node)
    if axis == 1:
        return mx.sym.flatten(x, name=node.layer)
    if axis == 0:
        return mx.sym.reshape(x, shape=(1, -1), name=node.layer)
    if g.follows_batch(node.inputs[0], 0):
        return mx.sym.reshape(x, shape=(-1, int(np.prod(shape[axis:]))), name=node.layer)
    return mx.sym.reshape(x, shape=(int(np.prod(shape[:axis])), -1), name=node.layer)


@converts("Reshape")
def reshape_attr(g, node):
    return _reshape(g, node, [np.asarray(node.attr("shape"))] * 2)


@converts("Reshape", since=5)
def reshape(g, node):
    return _reshape(g, node, g.probes(node.inputs[1], node))


def _reshape(g, node, targets):
    """The target resolved at both probe batches (0 and -1 made explicit); the one dimension that follows the
    batch becomes -1."""
    mx = _mx()
    x = node.inputs[0]
    allowzero = int(node.attr("allowzero", 0))
    resolved = []
    for target, shape in zip(targets, g.probe_shapes(x)):
        target = [int(t) for t in np.asarray(target).ravel()]
        if not allowzero:
            target = [shape[i] if t == 0 else t for i, t in enumerate(target)]
        if -1 in target:
            rest = int(np.prod([t for t in target if t != -1]))
            target[target.index(-1)] = int(np.prod(shape)) // max(rest, 1)
        resolved.append(target)
    one, two = resolved
    moving = [i for i in range(len(one)) if one[i] != two[i]]
    if not moving and g.fixed_batch and g.follows_batch(x, 0) and one and one[0] == g.fixed_batch:
        moving = [0]  # a model exported at a fixed batch: its first dimension is the batch
    if len(moving) > 1:
        raise OnnxImportError(f"{node.where}: a target shape whose dimensions {moving} all follow the batch "
                              "is not supported")
    shape = tuple(-1 if i in moving else one[i] for i in range(len(one)))
    return mx.sym.reshape(g.sym(x, node), shape=shape, name=node.layer)


@converts("Transpose")
def transpose(g, node):
    rank = len(g.shape(node.inputs[0]))
    perm = _ints(node.attr("perm", list(reversed(range(rank)))))
    return _mx().sym.transpose(g.sym(node.inputs[0], node), axes=perm, name=node.layer)


def _axes(g, node, since_input: int, opset: int):
    """A node's ``axes``: attribute before ``since_input``, the second input from it (None: not given)."""
    if opset < since_input:
        axes = node.attr("axes", None)
        return None if axes is None else _ints(axes)
    return _ints(g.const(node.input(1), node).ravel()) if node.input(1) else None


@converts("Squeeze")
def squeeze(g, node):
    shape = g.shape(node.inputs[0])
    axes = _axes(g, node, 13, g.opset)
    if axes is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1 and not g.follows_batch(node.inputs[0], i))
    axes = tuple(sorted(a % len(shape) for a in axes))
    return _mx().sym.reshape(g.sym(node.inputs[0], node),
                             shape=tuple(-1 if g.follows_batch(node.inputs[0], i) else d for i, d in enumerate(shape)
                                         if i not in axes), name=node.layer)


@converts("Unsqueeze")
def unsqueeze(g, node):
    mx = _mx()
    axes = _axes(g, node, 13, g.opset)
    rank = len(g.shape(node.inputs[0])) + len(axes)
    x = g.sym(node.inputs[0], node)
    ordered = sorted(a % rank for a in axes)
    for k, axis in enumerate(ordered):
        x = mx.sym.expand_dims(x, axis=axis, name=node.layer if k == len(ordered) - 1 else f"{node.layer}_{k}")
    return x


@converts("Concat")
def concat(g, node):
    mx = _mx()
    ins = [i for i in node.inputs if i]
    rank = len(g.shape(ins[0]))
    axis = int(node.attr("axis")) % rank
    images = [i for i in ins if not g.is_const(i)]
    parts = []
    for i in ins:
        if g.is_const(i) and images and axis != 0 and g.follows_batch(images[0], 0) and g.const(i, node).shape[0] == 1:
            # a constant row beside batch-shaped values (a class token, in a model exported at batch 1): one per image
            parts.append(mx.sym.broadcast_like(g.sym(i, node), g.sym(images[0], node), lhs_axes=(0,), rhs_axes=(0,)))
        else:
            parts.append(g.sym(i, node))
    return mx.sym.concat(*parts, dim=axis, name=node.layer)


@converts("Split")
def split_attr(g, node):
    return _split(g, node, node.attr("split", None))


@converts("Split", since=13)
def split(g, node):
    return _split(g, node, _ints(g.const(node.input(1), node)) if node.input(1) else None)


def _split(g, node, sizes):
    mx = _mx()
    shape = g.shape(node.inputs[0])
    axis = int(node.attr("axis", 0)) % len(shape)
    n = len(node.outputs)
    if sizes is None:
        if shape[axis] % n == 0:
            out = mx.sym.split(g.sym(node.inputs[0], node), num_outputs=n, axis=axis, name=node.layer)
            return [out[k] for k in range(n)]
        step = -(-shape[axis] // n)  # opset 18's num_outputs: the last part smaller
        sizes = [min(step, shape[axis] - k * step) for k in range(n)]
    x = g.sym(node.inputs[0], node)
    starts = np.cumsum([0] + list(sizes))
    return [mx.sym.slice_axis(x, axis=axis, begin=int(starts[k]), end=int(starts[k + 1]), name=f"{node.layer}_{k}")
            for k in range(n)]


@converts("Slice")
def slice_attr(g, node):
    return _slice(g, node, node.attr("starts"), node.attr("ends"), node.attr("axes", None), None)


@converts("Slice", since=10)
def slice_inputs(g, node):
    def opt(i):
        return _ints(g.const(node.input(i), node).ravel()) if node.input(i) else None
    return _slice(g, node, opt(1), opt(2), opt(3), opt(4))


def _slice(g, node, starts, ends, axes, steps):
    mx = _mx()
    shape = g.shape(node.inputs[0])
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    begin, end, step = [None] * len(shape), [None] * len(shape), [None] * len(shape)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % len(shape)
        lo, hi, sp = slice(int(st), int(en), int(sp)).indices(shape[ax])
        if g.follows_batch(node.inputs[0], ax):
            if (lo, hi, sp) != (0, shape[ax], 1):
                raise OnnxImportError(f"{node.where}: a Slice of the batch axis is not supported")
            continue
        begin[ax], end[ax], step[ax] = lo, (None if hi < 0 else hi), sp
    return mx.sym.slice(g.sym(node.inputs[0], node), begin=tuple(begin), end=tuple(end), step=tuple(step),
                        name=node.layer)


@converts("Gather")
def gather(g, node):
    mx = _mx()
    shape = g.shape(node.inputs[0])
    axis = int(node.attr("axis", 0)) % len(shape)
    index = g.const(node.inputs[1], node).astype(np.int64)
    index = np.where(index < 0, index + shape[axis], index)
    x = g.sym(node.inputs[0], node)
    if index.ndim == 0:  # x[:, i]: one slice, the axis dropped
        part = mx.sym.slice_axis(x, axis=axis, begin=int(index), end=int(index) + 1, name=f"{node.layer}_slice")
        return mx.sym.squeeze(part, axis=axis, name=node.layer)
    flat = index.ravel()
    if index.ndim == 1 and len(flat) and np.array_equal(flat, np.arange(flat[0], flat[0] + len(flat))):
        return mx.sym.slice_axis(x, axis=axis, begin=int(flat[0]), end=int(flat[0]) + len(flat), name=node.layer)
    if index.ndim != 1 or not len(flat):
        raise OnnxImportError(f"{node.where}: Gather by {index.ndim}-D indices is not supported")
    parts = [mx.sym.slice_axis(x, axis=axis, begin=int(i), end=int(i) + 1) for i in flat]  # one slice per index
    return mx.sym.concat(*parts, dim=axis, name=node.layer)


@converts("Expand", since=8)
def expand(g, node):
    mx = _mx()
    x = node.inputs[0]
    outs = []
    for target, shape in zip(g.probes(node.inputs[1], node), g.probe_shapes(x)):
        target = [int(t) for t in np.asarray(target).ravel()]
        rank = max(len(target), len(shape))
        a = (1,) * (rank - len(shape)) + tuple(shape)
        b = (1,) * (rank - len(target)) + tuple(target)
        outs.append(tuple(max(p, q) if min(p, q) == 1 else p for p, q in zip(a, b)))
    one, two = outs
    sym = g.broadcastable(x, len(one), node)
    have = [(1,) * (len(one) - len(s)) + tuple(s) for s in g.probe_shapes(x)]
    moving = [i for i in range(len(one)) if one[i] != two[i]]
    for i in moving:
        if not (one[i] == 1 and two[i] == 2):
            raise OnnxImportError(f"{node.where}: an Expand to a size that follows the batch is not supported")
        if have[0][i] == have[1][i]:  # a dimension of 1 made the batch's: one copy per image
            sym = mx.sym.broadcast_like(sym, g.data, lhs_axes=(i,), rhs_axes=(0,))
    fixed = tuple(0 if i in moving else one[i] for i in range(len(one)))
    return mx.sym.broadcast_to(sym, shape=fixed, name=node.layer)


@converts("Tile", since=6)
def tile(g, node):
    one, two = g.probes(node.inputs[1], node)
    if not np.array_equal(one, two):
        raise OnnxImportError(f"{node.where}: Tile repeats that follow the batch are not supported")
    return _mx().sym.tile(g.sym(node.inputs[0], node), reps=_ints(one), name=node.layer)


# ---- reductions, softmax -------------------------------------------------------------------------------------

def _reduce(fn: str, axes_input_since: int):
    def convert(g, node):
        mx = _mx()
        axes = _axes(g, node, axes_input_since, g.opset)
        keep = bool(node.attr("keepdims", 1))
        x = g.sym(node.inputs[0], node)
        if axes is None and node.attr("noop_with_empty_axes", 0):
            return mx.sym.identity(x, name=node.layer)
        axis = None if axes is None else axes
        if fn == "l2":
            total = mx.sym.sum(mx.sym.square(x), axis=axis, keepdims=keep)
            return mx.sym.sqrt(total, name=node.layer)
        if fn == "sumsquare":
            return mx.sym.sum(mx.sym.square(x), axis=axis, keepdims=keep, name=node.layer)
        return getattr(mx.sym, fn)(x, axis=axis, keepdims=keep, name=node.layer)
    return convert


for _op, _fn, _since in (("ReduceMean", "mean", 18), ("ReduceSum", "sum", 13), ("ReduceMax", "max", 18),
                         ("ReduceMin", "min", 18), ("ReduceL2", "l2", 18), ("ReduceSumSquare", "sumsquare", 18)):
    converts(_op)(_reduce(_fn, _since))


def _softmax(log: bool):
    def convert(g, node):
        mx = _mx()
        x = g.sym(node.inputs[0], node)
        rank = len(g.shape(node.inputs[0]))
        axis = int(node.attr("axis", 1 if g.opset < 13 else -1)) % rank
        fn = mx.sym.log_softmax if log else mx.sym.softmax
        if g.opset < 13 and axis != rank - 1:  # before 13: everything from axis on, as one row
            flat = fn(mx.sym.reshape(x, shape=(0,) * axis + (-1,)), axis=-1)
            return mx.sym.reshape_like(flat, x, name=node.layer)
        return fn(x, axis=axis, name=node.layer)
    return convert


converts("Softmax")(_softmax(False))
converts("LogSoftmax")(_softmax(True))


# ---- resizing ------------------------------------------------------------------------------------------------

@converts("Upsample", since=7)
def upsample(g, node):
    scales = node.attr("scales", None)
    if scales is None:
        scales = g.const(node.input(1), node)
    return _resize(g, node, np.asarray(scales, dtype=np.float64), None, node.attr("mode", "nearest"), "asymmetric")


@converts("Resize", since=10)
def resize(g, node):
    if g.opset < 11:
        scales, sizes = g.const(node.input(1), node), None
    else:
        scales = g.const(node.input(2), node) if node.input(2) and g.const(node.input(2), node).size else None
        sizes = None
        if node.input(3):  # (batch, channels, H, W): often Shape(x)[:2] joined to the new H, W
            one, two = g.probes(node.input(3), node)
            if not np.array_equal(np.asarray(one).ravel()[2:], np.asarray(two).ravel()[2:]):
                raise OnnxImportError(f"{node.where}: a Resize to a size that follows the batch is not supported")
            sizes = one
    if node.attr("antialias", 0) or node.attr("axes", None) is not None:
        raise OnnxImportError(f"{node.where}: Resize with antialias or axes is not supported")
    return _resize(g, node, scales, sizes, node.attr("mode", "nearest"),
                   node.attr("coordinate_transformation_mode", "half_pixel"))


def _resize(g, node, scales, sizes, mode, transform):
    mx = _mx()
    mode = mode.decode() if isinstance(mode, bytes) else mode
    transform = transform.decode() if isinstance(transform, bytes) else transform
    shape = g.shape(node.inputs[0])
    if len(shape) != 4:
        raise OnnxImportError(f"{node.where}: resizing a {len(shape)}-D value is not supported")
    if sizes is not None:
        out = [int(v) for v in np.asarray(sizes).ravel()]
        if out[:2] != list(shape[:2]) and not g.follows_batch(node.inputs[0], 0):
            raise OnnxImportError(f"{node.where}: Resize of the batch or channel axis is not supported")
        height, width = out[2], out[3]
        factors = (height / shape[2], width / shape[3])
    else:
        s = [float(v) for v in np.asarray(scales).ravel()]
        if s[:2] != [1.0, 1.0]:
            raise OnnxImportError(f"{node.where}: Resize of the batch or channel axis is not supported")
        factors = (s[2], s[3])
        height, width = int(math.floor(shape[2] * s[2])), int(math.floor(shape[3] * s[3]))
    x = g.sym(node.inputs[0], node)
    if mode == "nearest":
        f = factors[0]
        if f != factors[1] or f != int(f) or transform == "align_corners":
            raise OnnxImportError(f"{node.where}: nearest Resize by {factors} ({transform}) is not supported "
                                  "(integer, equal scales only)")
        return mx.sym.UpSampling(x, scale=int(f), sample_type="nearest", num_args=1, name=node.layer)
    if mode == "linear":
        if transform not in ("align_corners", "half_pixel", "pytorch_half_pixel"):
            raise OnnxImportError(f"{node.where}: linear Resize with {transform} coordinates is not supported")
        return mx.sym.contrib.BilinearResize2D(x, height=height, width=width,
                                               align_corners=transform == "align_corners", name=node.layer)
    raise OnnxImportError(f"{node.where}: Resize mode {mode!r} is not supported")
