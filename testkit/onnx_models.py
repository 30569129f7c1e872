"""The test zoo ResNet-18 as MXNet's own exporter writes it (``mx.onnx.export_model``; needs ``onnx``).

The importer's other models come from the real exporters' corpus (testkit/corpus/, testkit/onnx_corpus.py).
Tooling for tests only.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


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
