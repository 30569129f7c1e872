"""A model's graph: the symbol checked against its params, the inference head (a training-only SoftmaxOutput
stripped, a softmax applied where the model has none), the ``--output-layer`` output and the surgery that keeps
oneDNN from fusing it away.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from common.errors import ModelError
from common.images import input_hw
from common.model_files import DATA_NAME, ModelFiles, ModelSpec


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
