"""The corpus of real exporters' ONNX files, kept small: weights out, a recipe in (needs ``onnx``).

``make onnx-corpus`` exports real architectures with the real tools (torch.onnx's TorchScript and
dynamo exporters over torchvision and timm, tf2onnx over Keras applications, paddle2onnx over
paddle.vision) in environments of their own (testkit/corpus/), and keeps each graph exactly as the
exporter wrote it except for its large float tensors: :func:`strip` removes their data and records,
per tensor, how to make it again (the exporter's own values' mean and standard deviation, or their
range for an all-positive tensor such as a BatchNorm variance).  :func:`fill` puts seeded random
tensors of those statistics back, so a test gets a complete model of the same graph, the same
shapes and similar numbers, reproducibly, without the 5 GB of frameworks that wrote it.

Tensors are stripped wherever the exporter put them: initializers (torch.onnx, tf2onnx) and
``Constant`` nodes (paddle2onnx writes its weights that way).  Integer tensors and small float
tensors (shape arithmetic, epsilons, scales) stay verbatim.
"""

from __future__ import annotations

import json
import zlib
from typing import Iterator

import numpy as np

RECIPE_KEY = "shardinfer.recipe"
SOURCE_KEY = "shardinfer.source"
KEEP_BELOW = 64  # float tensors with fewer elements stay as written


def _tensors(model) -> Iterator:
    """Every TensorProto that holds a graph constant: initializers, then Constant nodes' values (subgraphs too)."""
    def walk(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value":
                    yield a.t
                for g in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                    yield from walk(g)
    yield from walk(model.graph)


def _recipe(array: np.ndarray) -> list:
    a = array.astype(np.float64).ravel()
    if a.min() > 0:
        return ["uniform", float(a.min()), float(a.max())]
    return ["normal", float(a.mean()), float(a.std())]


def strip(model, source: dict):
    """``model`` (a ModelProto, changed in place and returned) without its large float tensors' data.

    ``source`` (exporter, versions, architecture, opset...) is stored beside the recipe.
    """
    from onnx import TensorProto, numpy_helper

    recipe = {}
    for index, t in enumerate(_tensors(model)):
        if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            continue
        array = numpy_helper.to_array(t)
        if array.size < KEEP_BELOW:
            continue
        key = f"{index}:{t.name}"
        recipe[key] = _recipe(array)
        dims, dtype, name = list(t.dims), t.data_type, t.name
        t.Clear()
        t.dims.extend(dims)
        t.data_type, t.name = dtype, name
    del model.metadata_props[:]
    model.metadata_props.add(key=RECIPE_KEY, value=json.dumps(recipe, sort_keys=True))
    model.metadata_props.add(key=SOURCE_KEY, value=json.dumps(source, sort_keys=True))
    return model


def source_of(model) -> dict:
    """What :func:`strip` recorded about where the model came from."""
    return json.loads({p.key: p.value for p in model.metadata_props}.get(SOURCE_KEY, "{}"))


def _roles(model) -> dict:
    """Tensor name -> a recipe by what reads it, where that sets the scale a healthy network needs.

    The exporter's own statistics are a poor recipe for a layer's weights once each value is drawn
    independently: BatchNorm statistics no longer match the activations they normalise, and an image's
    signal vanishes or explodes over fifty layers (seen: a Keras MobileNet whose outputs no longer
    depended on the image).  So a weight read by Conv, Gemm or MatMul is drawn He-normal for its fan-in
    (variance-preserving through ReLU-like layers), convolution biases, normalisation shifts and means near 0,
    scales near 1,
    variances in [0.5, 1.5]; everything else (biases, embeddings, tokens) keeps its recorded statistics.
    """
    roles = {}

    def walk(graph):
        for node in graph.node:
            attrs = {a.name: a for a in node.attribute}
            for i, name in enumerate(node.input):
                if not name:
                    continue
                if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and i == 1:
                    roles.setdefault(name, ("he", node.op_type, attrs.get("transB").i if "transB" in attrs else 0))
                elif node.op_type in ("Conv", "ConvTranspose") and i == 2:
                    roles.setdefault(name, ("normal", 0.0, 0.1))
                elif node.op_type == "BatchNormalization" and i >= 1:
                    roles.setdefault(name, {1: ("uniform", 0.8, 1.2), 2: ("normal", 0.0, 0.1),
                                            3: ("normal", 0.0, 0.1), 4: ("uniform", 0.5, 1.5)}[i])
                elif node.op_type in ("LayerNormalization", "InstanceNormalization") and i >= 1:
                    roles.setdefault(name, ("uniform", 0.8, 1.2) if i == 1 else ("normal", 0.0, 0.1))
            for a in node.attribute:
                for g in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                    walk(g)
    walk(model.graph)
    return roles


def _fan_in(op: str, trans_b: int, shape: tuple) -> int:
    if op == "Conv":
        return int(np.prod(shape[1:]))
    if op == "ConvTranspose":
        return int(np.prod(shape[1:]))
    if op == "Gemm":
        return int(shape[1] if trans_b else shape[0])
    return int(shape[-2]) if len(shape) >= 2 else int(shape[0])


def fill(data: bytes) -> bytes:
    """A complete ONNX model from a stripped one: each recorded tensor made again (see :func:`_roles`).

    The values depend only on the tensor's position, name and recipe (a seeded generator each), so
    every run builds the same model.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_model_from_string(data)
    recipe = json.loads({p.key: p.value for p in model.metadata_props}.get(RECIPE_KEY, "{}"))
    roles = _roles(model)
    # a Constant node's tensor has no name of its own: it is known by the node's output
    outputs = {id(a.t): node.output[0] for node in model.graph.node if node.op_type == "Constant"
               for a in node.attribute if a.name == "value"}
    for index, t in enumerate(_tensors(model)):
        key = f"{index}:{t.name}"
        if key not in recipe:
            continue
        kind, a, b = recipe[key]
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        shape = tuple(t.dims)
        role = roles.get(t.name or outputs.get(id(t), ""))
        if role and role[0] == "he" and len(shape) >= 2:
            kind, a, b = "normal", 0.0, float(np.sqrt(2.0 / max(_fan_in(role[1], role[2], shape), 1)))
        elif role and role[0] != "he":
            kind, a, b = role
        values = rng.uniform(a, b, shape) if kind == "uniform" else rng.normal(a, b, shape)
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        t.CopyFrom(numpy_helper.from_array(values.astype(dtype), t.name))
    return model.SerializeToString()
