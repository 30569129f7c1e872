"""ONNX image models written the way real exporters write them, for the importer's tests (needs ``onnx``).

* :func:`torchvision_style` — what ``torch.onnx.export`` of a torchvision ResNet writes: bias-free
  Conv → BatchNormalization → Relu, MaxPool with pads, residual blocks joined by Add (one with a
  strided 1×1 downsample), GlobalAveragePool, then Flatten (opset 17) or, as older exports spell
  ``x.view(x.size(0), -1)``, Shape → Gather → Unsqueeze → Concat with a Constant → Reshape (opset
  13), and Gemm with ``transB=1``: logits; a dynamic batch dimension (``dim_param``).
* :func:`keras_style` — what tf2onnx writes for a Keras mobile-style net: Conv with bias, Clip
  (ReLU6; attributes before opset 11, inputs after), AveragePool, two branches joined by Concat,
  a squeeze-and-excitation gate (ReduceMean → Conv → Relu → Conv → Sigmoid → Mul), Identity,
  Dropout, ReduceMean without keepdims, Reshape, MatMul + Add, Softmax: probabilities.
* :func:`mxnet_exported` — the test zoo ResNet-18 through ``mx.onnx.export_model`` (weights among
  the graph inputs, as that exporter leaves them).

Weights are seeded random, scaled so activations stay in range; BatchNorm statistics are
non-trivial so a wrong epsilon or variance shows.  Tooling for tests only.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

CLASSES = 10


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name: str, array: np.ndarray, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> str:
        w = self.const(f"w{self.n}", self.rng.randn(cout, cin, k, k) * np.sqrt(2.0 / (cin * k * k)))
        ins = [x, w] + ([self.const(f"b{self.n}", self.rng.randn(cout) * 0.1)] if bias else [])
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)

    def bn(self, x: str, c: int) -> str:
        p = f"bn{self.n}"
        ins = [x, self.const(p + "_scale", 1 + 0.2 * self.rng.randn(c)), self.const(p + "_bias", 0.1 * self.rng.randn(c)),
               self.const(p + "_mean", 0.2 * self.rng.randn(c)), self.const(p + "_var", 0.5 + self.rng.rand(c))]
        return self.node("BatchNormalization", ins, epsilon=1e-3)

    def model(self, x_name: str, size: int, out: str, opset: int, batch="N"):
        from onnx import TensorProto, helper

        graph = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT,
                                                                                   [batch, 3, size, size])],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, CLASSES])], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="shardinfer-tests")
        m.ir_version = 8
        return m


def torchvision_style(opset: int = 13, size: int = 64, seed: int = 1) -> bytes:
    """A small torchvision-like ResNet (see the module docstring), serialised."""
    import onnx

    b = _Builder(seed)
    x = b.node("Relu", [b.bn(b.conv("input.1", 3, 16, 3, 2), 16)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for cin, cout, stride in ((16, 16, 1), (16, 32, 2)):
        y = b.node("Relu", [b.bn(b.conv(x, cin, cout, 3, stride), cout)])
        y = b.bn(b.conv(y, cout, cout, 3), cout)
        skip = x if stride == 1 else b.bn(b.conv(x, cin, cout, 1, stride), cout)
        x = b.node("Relu", [b.node("Add", [y, skip])])
    x = b.node("GlobalAveragePool", [x])
    if opset < 17:  # older torch.onnx spelled x.view(x.size(0), -1) out: Shape, Gather, Unsqueeze, Concat, Reshape
        from onnx import helper, numpy_helper

        batch = b.node("Gather", [b.node("Shape", [x]), b.const("zero", np.array(0), np.int64)], axis=0)
        batch = b.node("Unsqueeze", [batch, b.const("axes0", np.array([0]), np.int64)])
        b.nodes.append(helper.make_node("Constant", [], ["minus_one"], name="Constant_flat",
                                        value=numpy_helper.from_array(np.array([-1], dtype=np.int64))))
        x = b.node("Reshape", [x, b.node("Concat", [batch, "minus_one"], axis=0)])
    else:
        x = b.node("Flatten", [x], axis=1)
    w = b.const("fc.weight", b.rng.randn(CLASSES, 32) * 0.5)
    out = b.node("Gemm", [x, w, b.const("fc.bias", b.rng.randn(CLASSES) * 0.1)], alpha=1.0, beta=1.0, transB=1)
    m = b.model("input.1", size, out, opset)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def keras_style(opset: int = 17, size: int = 64, seed: int = 2) -> bytes:
    """A small Keras-like mobile net (see the module docstring), serialised."""
    import onnx

    b = _Builder(seed)
    relu6 = (lambda v: b.node("Clip", [v, b.const(f"lo{b.n}", np.array(0.0)), b.const(f"hi{b.n}", np.array(6.0))])
             ) if opset >= 11 else (lambda v: b.node("Clip", [v], min=0.0, max=6.0))
    x = relu6(b.conv("image", 3, 16, 3, 2, bias=True))
    x = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    x = b.node("Concat", [relu6(b.conv(x, 16, 8, 1, bias=True)), relu6(b.conv(x, 16, 8, 3, bias=True))], axis=1)
    gate = b.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
    gate = b.node("Relu", [b.conv(gate, 16, 4, 1, bias=True)])
    gate = b.node("Sigmoid", [b.conv(gate, 4, 16, 1, bias=True)])
    x = b.node("Identity", [b.node("Mul", [x, gate])])
    x = b.node("Dropout", [x])
    x = b.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
    x = b.node("Reshape", [x, b.const("shape", np.array([-1, 16]), np.int64)])
    x = b.node("MatMul", [x, b.const("dense/kernel", b.rng.randn(16, CLASSES) * 0.5)])
    x = b.node("Add", [x, b.const("dense/bias", b.rng.randn(CLASSES) * 0.1)])
    out = b.node("Softmax", [x], axis=-1 if opset >= 13 else 1)
    m = b.model("image", size, out, opset, batch="unk__0")
    onnx.checker.check_model(m)
    return m.SerializeToString()


def unsupported_op(opset: int = 13) -> bytes:
    """A net with a Resize (not supported): the importer's one-line error."""
    b = _Builder(3)
    x = b.node("Relu", [b.conv("x", 3, 4, 3)])
    scales = b.const("scales", np.array([1.0, 1.0, 2.0, 2.0]))
    x = b.node("Resize", [x, "", scales], mode="nearest")
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.model("x", 32, x, opset).SerializeToString()


def mxnet_exported(files: dict[str, bytes], size: int = 224) -> bytes:
    """The zoo-format model ``files`` (testkit.zoo_builder.build_model) through ``mx.onnx.export_model``.

    MXNet 1.9's exporter uses ``onnx.mapping``, which onnx removed in 1.16: a module of the same two
    tables, built from ``onnx.helper``, stands in for it; and it labels the graph with the installed
    onnx's newest opset while writing opset-13 operators: it is told 13.
    """
    import sys
    import types

    import mxnet as mx
    import onnx

    from testkit import zoo_builder

    if not hasattr(onnx, "mapping"):
        kinds = [onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64,
                 onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL]
        mapping = types.ModuleType("onnx.mapping")
        mapping.TENSOR_TYPE_TO_NP_TYPE = {t: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)) for t in kinds}
        mapping.NP_TYPE_TO_TENSOR_TYPE = {d: t for t, d in mapping.TENSOR_TYPE_TO_NP_TYPE.items()}
        sys.modules["onnx.mapping"] = onnx.mapping = mapping

    with tempfile.TemporaryDirectory() as tmp:
        sym = os.path.join(tmp, "m-symbol.json")
        params = os.path.join(tmp, "m-0000.params")
        # the inference graph (softmax instead of the training head SoftmaxOutput, which wants a label input)
        net = mx.sym.load_json(files[zoo_builder.SYMBOL_FILE].decode())
        mx.sym.softmax(net.get_children()[0], axis=1, name="prob").save(sym)
        with open(params, "wb") as f:
            f.write(files[zoo_builder.PARAMS_FILE])
        out = os.path.join(tmp, "m.onnx")
        # the exporter labels its graph with the installed onnx's newest opset but writes opset-13 operators:
        # have it say 13, as it did with the onnx releases of its time
        newest = onnx.defs.onnx_opset_version
        onnx.defs.onnx_opset_version = lambda: 13
        try:
            mx.onnx.export_model(sym, params, [(1, 3, size, size)], [np.float32], out, dynamic=True,
                                 dynamic_input_shapes=[(None, 3, size, size)])
        finally:
            onnx.defs.onnx_opset_version = newest
        m = onnx.load(out)
        m.ir_version = 7  # what opset 13 was written with (the installed onnx stamps its own, newer than ORT reads)
        return m.SerializeToString()
