"""Each converter of infer/onnx_ops.py against ONNX Runtime on a small graph of that op (and the opsets where its
semantics or its inputs changed): the per-op half of the importer's proof; the whole importer is proven on what
real exporters wrote (tests/test_onnx_import.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.corpus

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(5)
SIZE = (8, 8)


def w(*shape, positive=False):
    a = RNG.normal(0, 0.5, shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def i64(*values):
    return np.array(values, dtype=np.int64)


# id: (opset, [(op, inputs, outputs, attrs)], constants) -- the graph reads "x" (N, 3, 8, 8) and writes "y"
CASES = {
    "conv-bias-stride2-pads": (13, [("Conv", ["x", "w", "b"], ["y"], dict(strides=[2, 2], pads=[1, 1, 1, 1]))],
                               {"w": w(4, 3, 3, 3), "b": w(4)}),
    "conv-asymmetric-pads": (13, [("Conv", ["x", "w"], ["y"], dict(pads=[0, 0, 1, 1], strides=[2, 2]))],
                             {"w": w(4, 3, 3, 3)}),
    "conv-same-upper": (11, [("Conv", ["x", "w"], ["y"], dict(auto_pad="SAME_UPPER", strides=[2, 2]))],
                        {"w": w(4, 3, 4, 4)}),
    "conv-same-lower": (11, [("Conv", ["x", "w"], ["y"], dict(auto_pad="SAME_LOWER", strides=[2, 2]))],
                        {"w": w(4, 3, 4, 4)}),
    "conv-depthwise-dilated": (13, [("Conv", ["x", "w"], ["y"], dict(group=3, dilations=[2, 2], pads=[2, 2, 2, 2]))],
                               {"w": w(3, 1, 3, 3)}),
    "conv-transpose": (13, [("ConvTranspose", ["x", "w", "b"], ["y"], dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                                                          output_padding=[1, 1]))],
                       {"w": w(3, 4, 3, 3), "b": w(4)}),
    "conv-transpose-grouped": (17, [("ConvTranspose", ["x", "w"], ["y"], dict(strides=[2, 2], group=3))],
                               {"w": w(3, 2, 2, 2)}),
    "batchnorm": (9, [("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], dict(epsilon=1e-3))],
                  {"s": w(3), "b": w(3), "m": w(3), "v": w(3, positive=True)}),
    "instancenorm": (13, [("InstanceNormalization", ["x", "s", "b"], ["y"], dict(epsilon=1e-4))],
                     {"s": w(3), "b": w(3)}),
    "layernorm": (17, [("LayerNormalization", ["x", "s", "b"], ["y"], dict(epsilon=1e-5))], {"s": w(8), "b": w(8)}),
    "relu": (13, [("Relu", ["x"], ["y"], {})], {}),
    "leakyrelu": (13, [("LeakyRelu", ["x"], ["y"], dict(alpha=0.2))], {}),
    "prelu-channel": (13, [("PRelu", ["x", "s"], ["y"], {})], {"s": w(3, 1, 1)}),
    "prelu-width": (13, [("PRelu", ["x", "s"], ["y"], {})], {"s": w(8)}),
    # 3 values, the channel count: numpy's broadcasting lines them up with the last axis, not the channels
    "prelu-last-axis": (13, [("Slice", ["x", "st", "en", "ax"], ["c"], {}), ("PRelu", ["c", "s"], ["y"], {})],
                        {"st": i64(0), "en": i64(3), "ax": i64(3), "s": w(3)}),
    "elu": (13, [("Elu", ["x"], ["y"], dict(alpha=0.7))], {}),
    "selu": (13, [("Selu", ["x"], ["y"], {})], {}),
    "selu-attrs": (13, [("Selu", ["x"], ["y"], dict(alpha=1.5, gamma=1.1))], {}),
    "sigmoid": (13, [("Sigmoid", ["x"], ["y"], {})], {}),
    "hardsigmoid": (13, [("HardSigmoid", ["x"], ["y"], dict(alpha=0.3, beta=0.4))], {}),
    "hardswish": (14, [("HardSwish", ["x"], ["y"], {})], {}),
    "tanh": (13, [("Tanh", ["x"], ["y"], {})], {}),
    "softplus": (13, [("Softplus", ["x"], ["y"], {})], {}),
    "softsign": (13, [("Softsign", ["x"], ["y"], {})], {}),
    "erf": (13, [("Erf", ["x"], ["y"], {})], {}),
    "gelu": (20, [("Gelu", ["x"], ["y"], {})], {}),
    "gelu-tanh": (20, [("Gelu", ["x"], ["y"], dict(approximate="tanh"))], {}),
    "mish": (18, [("Mish", ["x"], ["y"], {})], {}),
    "clip-attrs": (9, [("Clip", ["x"], ["y"], dict(min=-0.5, max=0.7))], {}),
    "clip-inputs": (13, [("Clip", ["x", "lo", "hi"], ["y"], {})], {"lo": np.float32(-0.3), "hi": np.float32(0.4)}),
    "clip-max-only": (13, [("Clip", ["x", "", "hi"], ["y"], {})], {"hi": np.float32(0.4)}),
    "maxpool-ceil": (13, [("MaxPool", ["x"], ["y"], dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))], {}),
    "maxpool-pads": (13, [("MaxPool", ["x"], ["y"], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))],
                     {}),
    "maxpool-asymmetric": (13, [("MaxPool", ["x"], ["y"], dict(kernel_shape=[2, 2], strides=[2, 2],
                                                                pads=[0, 0, 1, 1]))], {}),
    "avgpool-exclude-pad": (13, [("AveragePool", ["x"], ["y"], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]))], {}),
    "avgpool-include-pad": (13, [("AveragePool", ["x"], ["y"], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                                                    count_include_pad=1))], {}),
    "avgpool-asymmetric-exclude": (9, [("AveragePool", ["x"], ["y"], dict(kernel_shape=[3, 3], strides=[2, 2],
                                                                          pads=[0, 0, 1, 1]))], {}),
    "lppool": (13, [("LpPool", ["x"], ["y"], dict(kernel_shape=[2, 2], strides=[2, 2], p=2))], {}),
    "global-avg": (13, [("GlobalAveragePool", ["x"], ["y"], {})], {}),
    "global-max": (13, [("GlobalMaxPool", ["x"], ["y"], {})], {}),
    "global-lp": (13, [("GlobalLpPool", ["x"], ["y"], dict(p=2))], {}),
    "lrn": (13, [("LRN", ["x"], ["y"], dict(size=3, alpha=1e-2, beta=0.75, bias=1.0))], {}),
    "pad-attrs-reflect": (10, [("Pad", ["x"], ["y"], dict(pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect"))], {}),
    "pad-inputs-edge": (11, [("Pad", ["x", "p"], ["y"], dict(mode="edge"))], {"p": i64(0, 0, 1, 1, 0, 0, 2, 0)}),
    "pad-constant-value": (13, [("Pad", ["x", "p", "v"], ["y"], {})],
                           {"p": i64(0, 0, 1, 1, 0, 0, 1, 1), "v": np.float32(0.5)}),
    "pad-axes": (18, [("Pad", ["x", "p", "", "a"], ["y"], {})], {"p": i64(1, 2, 0, 1), "a": i64(2, 3)}),
    "pad-negative": (13, [("Pad", ["x", "p"], ["y"], {})], {"p": i64(0, 0, -1, 1, 0, 0, 1, -2)}),
    "add-channel-bias": (13, [("Add", ["x", "c"], ["y"], {})], {"c": w(3, 1, 1)}),
    "sub-const-first": (13, [("Sub", ["c", "x"], ["y"], {})], {"c": w(8)}),
    "mul-scalar": (13, [("Mul", ["x", "c"], ["y"], {})], {"c": np.float32(1.5)}),
    "div-const-first": (13, [("Abs", ["x"], ["a"], {}), ("Add", ["a", "one"], ["b"], {}),
                             ("Div", ["c", "b"], ["y"], {})], {"one": np.float32(1.0), "c": w(1, 3, 1, 8)}),
    "pow-3": (13, [("Pow", ["x", "c"], ["y"], {})], {"c": np.float32(3.0)}),
    "pow-2": (13, [("Pow", ["x", "c"], ["y"], {})], {"c": np.float32(2.0)}),
    "max-min-variadic": (13, [("Max", ["x", "c", "d"], ["m"], {}), ("Min", ["m", "x", "e"], ["y"], {})],
                         {"c": w(3, 1, 1), "d": w(8), "e": np.float32(0.3)}),
    "sum-mean-variadic": (13, [("Sum", ["x", "c", "x"], ["s"], {}), ("Mean", ["s", "x", "d"], ["y"], {})],
                          {"c": w(8), "d": w(3, 1, 1)}),
    "unary": (13, [("Abs", ["x"], ["a"], {}), ("Sqrt", ["a"], ["b"], {}), ("Exp", ["b"], ["c"], {}),
                   ("Log", ["c"], ["d"], {}), ("Reciprocal", ["c"], ["e"], {}), ("Neg", ["e"], ["f"], {}),
                   ("Add", ["d", "f"], ["g"], {}), ("Sign", ["x"], ["h"], {}), ("Mul", ["g", "h"], ["y"], {})], {}),
    "flatten-gemm": (13, [("Flatten", ["x"], ["f"], {}),
                          ("Gemm", ["f", "w", "b"], ["y"], dict(transB=1, alpha=0.5, beta=2.0))],
                     {"w": w(5, 192), "b": w(1, 5)}),
    "gemm-no-transb": (9, [("Flatten", ["x"], ["f"], {}), ("Gemm", ["f", "w", "b"], ["y"], {})],
                       {"w": w(192, 5), "b": w(5)}),
    "gemm-image-bias": (13, [("Flatten", ["x"], ["f"], {}), ("Gemm", ["f", "w", "f"], ["y"], dict(beta=0.5))],
                        {"w": w(192, 192)}),
    "gemm-image-b": (13, [("Reshape", ["x", "s"], ["r"], {}), ("Gemm", ["r", "r"], ["g"], dict(transB=1)),
                          ("Flatten", ["g"], ["y"], dict(axis=0))], {"s": i64(-1, 64)}),
    "matmul-const": (13, [("MatMul", ["x", "w"], ["y"], {})], {"w": w(8, 6)}),
    "matmul-batched": (13, [("Transpose", ["x"], ["t"], dict(perm=[0, 1, 3, 2])), ("MatMul", ["x", "t"], ["y"], {})],
                       {}),
    "matmul-3d": (13, [("Reshape", ["x", "s"], ["r"], {}), ("Transpose", ["r"], ["t"], dict(perm=[0, 2, 1])),
                       ("MatMul", ["r", "t"], ["y"], {})], {"s": i64(0, 3, 64)}),
    "reshape-transpose": (13, [("Reshape", ["x", "s"], ["r"], {}), ("Transpose", ["r"], ["y"], dict(perm=[0, 2, 1]))],
                          {"s": i64(0, 3, -1)}),
    "squeeze-unsqueeze-attrs": (11, [("ReduceMean", ["x"], ["m"], dict(axes=[2, 3])),
                                     ("Squeeze", ["m"], ["s"], dict(axes=[3, 2])),
                                     ("Unsqueeze", ["s"], ["y"], dict(axes=[1, -1]))], {}),
    "squeeze-unsqueeze-inputs": (13, [("GlobalAveragePool", ["x"], ["m"], {}),
                                      ("Squeeze", ["m", "a"], ["s"], {}), ("Unsqueeze", ["s", "b"], ["y"], {})],
                                 {"a": i64(2, 3), "b": i64(0)}),
    # a constant expanded to the batch, as torch.onnx writes ``token.expand(x.shape[0], -1, -1, -1)``
    "concat-const-expanded": (13, [("Shape", ["x"], ["s"], {}), ("Gather", ["s", "zero"], ["b"], dict(axis=0)),
                                   ("Unsqueeze", ["b", "zeros"], ["b1"], {}), ("Concat", ["b1", "rest"], ["t"],
                                                                               dict(axis=0)),
                                   ("Expand", ["c", "t"], ["e"], {}), ("Concat", ["x", "e"], ["y"], dict(axis=-1))],
                              {"c": w(1, 3, 8, 2), "zero": np.array(0, np.int64), "zeros": i64(0),
                               "rest": i64(3, 8, 2)}),
    "split-equal": (13, [("Split", ["x"], ["a", "b"], dict(axis=3)), ("Sub", ["a", "b"], ["y"], {})], {}),
    "split-unequal": (13, [("Split", ["x", "s"], ["a", "b", "c"], dict(axis=2)),
                           ("Concat", ["c", "a", "b"], ["y"], dict(axis=2))], {"s": i64(2, 5, 1)}),
    "split-attr": (11, [("Split", ["x"], ["a", "b"], dict(axis=1, split=[1, 2])),
                        ("ReduceSum", ["b"], ["s"], dict(axes=[1])), ("Mul", ["a", "s"], ["y"], {})], {}),
    "split-num-outputs": (18, [("Split", ["x"], ["a", "b", "c"], dict(axis=3, num_outputs=3)),
                               ("Concat", ["c", "b", "a"], ["y"], dict(axis=3))], {}),
    "slice-attrs": (9, [("Slice", ["x"], ["y"], dict(starts=[1, 2], ends=[3, 1000], axes=[1, 3]))], {}),
    "slice-inputs-steps": (13, [("Slice", ["x", "st", "en", "ax", "sp"], ["y"], {})],
                           {"st": i64(-1, 0), "en": i64(-9, 8), "ax": i64(3, 2), "sp": i64(-2, 3)}),
    "gather-scalar": (13, [("Gather", ["x", "i"], ["y"], dict(axis=2))], {"i": np.array(3, dtype=np.int64)}),
    "gather-contiguous": (13, [("Gather", ["x", "i"], ["y"], dict(axis=1))], {"i": i64(1, 2)}),
    "gather-any": (13, [("Gather", ["x", "i"], ["y"], dict(axis=3))], {"i": i64(7, 0, 3, 3, -1)}),
    "expand": (13, [("ReduceMean", ["x"], ["m"], dict(axes=[2], keepdims=1)), ("Expand", ["m", "s"], ["y"], {})],
               {"s": i64(1, 3, 4, 8)}),
    "tile": (13, [("Tile", ["x", "r"], ["y"], {})], {"r": i64(1, 2, 1, 3)}),
    "reduce-attrs": (13, [("ReduceMax", ["x"], ["a"], dict(axes=[1], keepdims=1)),
                          ("ReduceMin", ["x"], ["b"], dict(axes=[1], keepdims=1)),
                          ("ReduceL2", ["x"], ["c"], dict(axes=[1], keepdims=1)),
                          ("ReduceSum", ["x", "ax"], ["d"], dict(keepdims=1)),
                          ("ReduceSumSquare", ["x"], ["e"], dict(axes=[1], keepdims=1)),
                          ("Sum", ["a", "b", "c", "d", "e"], ["y"], {})], {"ax": i64(1)}),
    "reduce-inputs": (18, [("ReduceMax", ["x", "ax"], ["a"], dict(keepdims=0)),
                           ("ReduceMean", ["x", "ax"], ["b"], dict(keepdims=0)),
                           ("ReduceL2", ["x", "ax"], ["c"], dict(keepdims=0)),
                           ("Sum", ["a", "b", "c"], ["y"], {})], {"ax": i64(2, 3)}),
    "softmax-11": (11, [("Softmax", ["x"], ["y"], dict(axis=1))], {}),
    "softmax-13": (13, [("Softmax", ["x"], ["y"], dict(axis=1))], {}),
    "logsoftmax-13": (13, [("LogSoftmax", ["x"], ["y"], {})], {}),
    "resize-nearest-scales": (11, [("Resize", ["x", "roi", "s"], ["y"], dict(mode="nearest"))],
                              {"roi": np.zeros(0, np.float32), "s": np.array([1, 1, 2, 2], np.float32)}),
    # sizes as exporters compute them: Shape(x)[:2] joined to the new H, W
    "resize-nearest-sizes-13": (13, [("Shape", ["x"], ["s"], {}), ("Slice", ["s", "b", "e"], ["nc"], {}),
                                     ("Concat", ["nc", "hw"], ["z"], dict(axis=0)),
                                     ("Resize", ["x", "", "", "z"], ["y"], dict(mode="nearest", nearest_mode="floor",
                                                                               coordinate_transformation_mode=
                                                                               "asymmetric"))],
                                {"b": i64(0), "e": i64(2), "hw": i64(24, 24)}),
    "resize-linear-half-pixel": (13, [("Resize", ["x", "", "s"], ["y"], dict(mode="linear"))],
                                 {"s": np.array([1, 1, 2, 2], np.float32)}),
    "resize-linear-sizes": (13, [("Shape", ["x"], ["s"], {}), ("Slice", ["s", "b", "e"], ["nc"], {}),
                                 ("Concat", ["nc", "hw"], ["z"], dict(axis=0)),
                                 ("Resize", ["x", "", "", "z"], ["y"], dict(mode="linear"))],
                            {"b": i64(0), "e": i64(2), "hw": i64(12, 20)}),
    "resize-linear-align-corners": (13, [("Shape", ["x"], ["s"], {}), ("Slice", ["s", "b", "e"], ["nc"], {}),
                                         ("Concat", ["nc", "hw"], ["z"], dict(axis=0)),
                                         ("Resize", ["x", "", "", "z"], ["y"],
                                          dict(mode="linear", coordinate_transformation_mode="align_corners"))],
                                    {"b": i64(0), "e": i64(2), "hw": i64(15, 15)}),
    "resize-10": (10, [("Resize", ["x", "s"], ["y"], dict(mode="nearest"))], {"s": np.array([1, 1, 3, 3], np.float32)}),
    "upsample-7": (7, [("Upsample", ["x"], ["y"], dict(mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]))], {}),
    "upsample-9": (9, [("Upsample", ["x", "s"], ["y"], dict(mode="nearest"))], {"s": np.array([1, 1, 2, 2], np.float32)}),
    "dropout-identity-cast": (13, [("Dropout", ["x"], ["a"], {}), ("Identity", ["a"], ["b"], {}),
                                   ("Cast", ["b"], ["y"], dict(to=TensorProto.FLOAT))], {}),
    "where-greater": (13, [("Greater", ["x", "t"], ["g"], {}), ("Exp", ["x"], ["e"], {}),
                           ("Where", ["g", "x", "e"], ["y"], {})], {"t": np.float32(0.2)}),
    "where-less-const": (13, [("Less", ["x", "t"], ["g"], {}), ("Where", ["g", "c", "x"], ["y"], {})],
                         {"t": w(8), "c": w(3, 1, 1)}),
}


def _model(opset: int, nodes: list, constants: dict) -> bytes:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
    graph = helper.make_graph([helper.make_node(op, ins, outs, name=f"n{i}_{op}", **attrs)
                               for i, (op, ins, outs, attrs) in enumerate(nodes)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *SIZE])],
                              [helper.make_empty_tensor_value_info("y")], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8 if opset < 19 else 9
    return model.SerializeToString()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_converter_computes_what_onnx_runtime_does(case):
    import mxnet as mx

    from common.model import BoundModel
    from infer import onnx_graph

    opset, nodes, constants = CASES[case]
    data = _model(opset, nodes, constants)
    converted = onnx_graph.convert(onnx_graph.load(data, case), case, SIZE)
    x = np.random.default_rng(1).normal(0, 1, (2, 3, *SIZE)).astype(np.float32)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = BoundModel(mx.sym.load_json(converted.symbol_json), converted.arg, converted.aux, 2,
                     image_size=SIZE).forward_all(x)[0]
    want = np.asarray(want, dtype=np.float32).reshape(len(x), -1)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max())), np.abs(got - want).max()


def test_the_docs_list_what_the_converter_table_holds():
    """docs/models.md's operator list and result table are generated (scripts/onnx_docs.py), never edited by hand."""
    import subprocess
    import sys

    from testkit.localdev import ROOT

    out = subprocess.run([sys.executable, "scripts/onnx_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
