"""Spelt-out layers put back together before conversion, where MXNet has one fast op for what an exporter wrote as
several (``bench/onnx_models.py`` measured each on MXNet 1.9.1's CPU kernels):

* **GELU** — ``x * 0.5 * (1 + erf(x / sqrt(2)))`` as torch.onnx writes ``nn.GELU`` before opset 20: five
  element-wise passes, the ``erf`` alone a third of a DeiT's forward, become one ``Gelu`` (oneDNN's vectorised
  kernel, which MXNet also fuses into the FullyConnected before it).
* **LayerNorm** — ``(x - mean) / sqrt(var + eps) * gamma + beta`` over the last axis, as exporters write
  ``nn.LayerNorm`` before opset 17: eight passes become one ``LayerNormalization``.
* **Linear** — ``MatMul`` by a 2-D constant followed by ``Add`` of a 1-D constant (dynamo's and tf2onnx's
  spelling of a dense layer) becomes ``FusedMatMulAdd``: one FullyConnected with its bias.

A rewrite only replaces nodes whose intermediate values nothing else reads, and the import still checks the
result against ONNX Runtime on the original file.
"""

from __future__ import annotations

import math
from typing import Optional


class _Graph:
    """The node list with who produces and who reads each value, and the graph's constants."""

    def __init__(self, graph, nodes: list) -> None:
        from onnx import numpy_helper

        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in nodes:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.consts:  # torch.onnx's shared weights
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.outputs = {o.name for o in graph.output}
        self.producer = {o: n for n in nodes for o in n.output}
        self.readers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)

    def only_reader(self, value: str, op: str):
        """The one node reading ``value`` if it is a ``op`` (and the value is not a graph output)."""
        readers = self.readers.get(value, [])
        if len(readers) == 1 and readers[0].op_type == op and value not in self.outputs:
            return readers[0]
        return None

    def scalar(self, value: str) -> Optional[float]:
        c = self.consts.get(value)
        return float(c.ravel()[0]) if c is not None and c.size == 1 else None

    def other(self, node, value: str) -> str:
        """The input of a binary ``node`` that is not ``value``."""
        return node.input[1] if node.input[0] == value else node.input[0]

    def axes(self, node) -> Optional[list]:
        for a in node.attribute:
            if a.name == "axes":
                return list(a.ints)
        return [int(v) for v in self.consts[node.input[1]].ravel()] if len(node.input) > 1 and \
            node.input[1] in self.consts else None


def _close(value: Optional[float], want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-4 * abs(want)


def _gelu(g: _Graph, erf) -> Optional[tuple[list, str, str]]:
    """``(nodes replaced, x, output)`` of the GELU around this Erf node, or None."""
    pre = g.producer.get(erf.input[0])
    if pre is None or pre.op_type not in ("Div", "Mul") or len(pre.input) != 2 or len(g.readers[pre.output[0]]) != 1:
        return None
    x = pre.input[0]
    if not (_close(g.scalar(pre.input[1]), math.sqrt(2)) if pre.op_type == "Div"
            else _close(g.scalar(pre.input[1]), 1 / math.sqrt(2))):
        return None
    add = g.only_reader(erf.output[0], "Add")
    if add is None or not _close(g.scalar(g.other(add, erf.output[0])), 1.0):
        return None
    times = g.only_reader(add.output[0], "Mul")
    if times is None:
        return None
    other = g.other(times, add.output[0])
    if _close(g.scalar(other), 0.5):  # 0.5 * (1 + erf), then * x (torch's dynamo exporter)
        last = g.only_reader(times.output[0], "Mul")
        if last is None or g.other(last, times.output[0]) != x:
            return None
        return [pre, erf, add, times, last], x, last.output[0]
    if other == x:  # x * (1 + erf) then * 0.5
        half = g.only_reader(times.output[0], "Mul")
        if half is None or not _close(g.scalar(g.other(half, times.output[0])), 0.5):
            return None
        return [pre, erf, add, times, half], x, half.output[0]
    scaled = g.producer.get(other)  # (x * 0.5) * (1 + erf)
    if scaled is not None and scaled.op_type == "Mul" and x in scaled.input and \
            _close(g.scalar(g.other(scaled, x)), 0.5) and len(g.readers.get(other, [])) == 1:
        return [pre, erf, add, scaled, times], x, times.output[0]
    return None


def _layer_norm(g: _Graph, mean) -> Optional[tuple[list, list, str, float]]:
    """``(nodes replaced, inputs [x, gamma, beta], output, eps)`` of the LayerNorm starting at this ReduceMean."""
    x = mean.input[0]
    axes = g.axes(mean)
    if axes is None or len(axes) != 1 or axes[0] != -1:
        return None
    subs = [n for n in g.readers.get(mean.output[0], []) if n.op_type == "Sub" and list(n.input) == [x, mean.output[0]]]
    if len(subs) != 1 or len(g.readers[mean.output[0]]) != 1:
        return None
    sub = subs[0]
    readers = g.readers.get(sub.output[0], [])
    pows = [n for n in readers if n.op_type == "Pow" and _close(g.scalar(n.input[1]), 2.0)]
    divs = [n for n in readers if n.op_type == "Div" and n.input[0] == sub.output[0]]
    if len(pows) != 1 or len(divs) != 1 or len(readers) != 2:
        return None
    var = g.only_reader(pows[0].output[0], "ReduceMean")
    if var is None or g.axes(var) != [-1]:
        return None
    add = g.only_reader(var.output[0], "Add")
    eps = g.scalar(g.other(add, var.output[0])) if add is not None else None
    root = g.only_reader(add.output[0], "Sqrt") if add is not None else None
    if eps is None or root is None or divs[0].input[1] != root.output[0] or len(g.readers[root.output[0]]) != 1:
        return None
    nodes, out = [mean, sub, pows[0], var, add, root, divs[0]], divs[0].output[0]
    scale = g.only_reader(out, "Mul")
    if scale is None or g.other(scale, out) not in g.consts:
        return None
    shift = g.only_reader(scale.output[0], "Add")
    if shift is None or g.other(shift, scale.output[0]) not in g.consts:
        return None
    return nodes + [scale, shift], [x, g.other(scale, out), g.other(shift, scale.output[0])], shift.output[0], eps


def _linear(g: _Graph, matmul) -> Optional[tuple[list, list, str]]:
    w = g.consts.get(matmul.input[1])
    if w is None or w.ndim != 2:
        return None
    add = g.only_reader(matmul.output[0], "Add")
    if add is None:
        return None
    b = g.consts.get(g.other(add, matmul.output[0]))
    if b is None or b.size != w.shape[1] or any(d != 1 for d in b.shape[:-1]):
        return None
    return [matmul, add], [matmul.input[0], matmul.input[1], g.other(add, matmul.output[0])], add.output[0]


FUSED_OPS = ("Gelu", "LayerNormalization", "FusedMatMulAdd")


def fuse(graph) -> dict[str, list]:
    """Rewrite ``graph`` in place (see the module's docstring).

    Returns:
        ``{fused node's name: the nodes it replaced, in order}``: a fused node whose inputs turn out to be
        constants is folded by evaluating those (the reference evaluator knows no ``FusedMatMulAdd``).
    """
    from onnx import helper

    nodes = list(graph.node)  # one list of the same message objects throughout (ids stay valid)
    position = {id(n): i for i, n in enumerate(nodes)}
    g = _Graph(graph, nodes)
    replaced: dict[int, object] = {}  # id of a pattern's last node -> its replacement
    originals: dict[str, list] = {}
    gone: set[int] = set()
    for node in nodes:
        if id(node) in gone:
            continue
        found = None
        if node.op_type == "Erf" and (m := _gelu(g, node)):
            found = m[0], helper.make_node("Gelu", [m[1]], [m[2]], name=f"{node.name or m[2]}_gelu")
        elif node.op_type == "ReduceMean" and (m := _layer_norm(g, node)):
            found = m[0], helper.make_node("LayerNormalization", m[1], [m[2]], name=f"{node.name or m[2]}_ln",
                                           axis=-1, epsilon=m[3])
        elif node.op_type == "MatMul" and (m := _linear(g, node)):
            found = m[0], helper.make_node("FusedMatMulAdd", m[1], [m[2]], name=m[0][1].name or f"{m[2]}_linear")
        if found is None or any(id(n) in gone for n in found[0]):
            continue
        pattern, new = found
        pattern = sorted(pattern, key=lambda n: position[id(n)])
        replaced[id(pattern[-1])] = new
        originals[new.name] = pattern
        gone.update(id(n) for n in pattern)
    if replaced:
        from onnx import NodeProto

        def copy(n):
            out = NodeProto()
            out.CopyFrom(n)
            return out

        originals = {name: [copy(n) for n in pattern] for name, pattern in originals.items()}
        kept = [copy(replaced.get(id(n), n)) for n in nodes if id(n) in replaced or id(n) not in gone]
        del graph.node[:]
        graph.node.extend(kept)
    return originals
