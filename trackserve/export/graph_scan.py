"""Find operators in an ONNX graph that are known to compute wrong sums in ONNX Runtime.

Two patterns (see ``NOTES.md``):

* ``ScatterND`` with a ``reduction``: ONNX Runtime's CPU kernel loses updates when it
  runs on more than one thread (onnxruntime issue 18048), so results drift from run
  to run. The dynamo exporter emits it for ``scatter_add``/``index_add``.
* A scatter *without* reduction (``ScatterElements`` or ``ScatterND``) whose result is
  added to something: how the legacy exporter writes ``index_add`` and
  ``index_put(accumulate=True)``. Repeated indices overwrite each other before the
  addition instead of being summed, so message aggregation is silently wrong.

The fix for both is :func:`trackserve.export.scatter.scatter_sum` (``scatter_add`` over
an expanded index), which exports as ``ScatterElements(reduction="add")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_ADDING_OPS = ("Add", "Sum")
_FIX = "aggregate with trackserve.export.scatter.scatter_sum (scatter_add over an expanded index)"


@dataclass(frozen=True)
class GraphHazard:
    """One node of the graph that computes a wrong aggregation, and why."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op_type}): {self.reason}"


def _nodes(graph):
    """Every node of ``graph`` and of its subgraphs (If/Loop bodies), depth first."""
    import onnx

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _nodes(subgraph)


def _reduction(node) -> str:
    for attribute in node.attribute:
        if attribute.name == "reduction":
            return attribute.s.decode() if isinstance(attribute.s, bytes) else str(attribute.s)
    return "none"


def scan_graph(model) -> list[GraphHazard]:
    """The hazards in ``model`` (an ``onnx.ModelProto`` or a path to an ONNX file), in graph order."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    nodes = list(_nodes(model.graph))
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    hazards = []
    for node in nodes:
        if node.op_type not in ("ScatterND", "ScatterElements"):
            continue
        reduction = _reduction(node)
        label = node.name or (node.output[0] if node.output else "?")
        if node.op_type == "ScatterND" and reduction != "none":
            hazards.append(GraphHazard(
                label, f"ScatterND(reduction='{reduction}')",
                "ONNX Runtime's CPU kernel loses updates with more than one thread (onnxruntime issue 18048); "
                + _FIX,
            ))
        elif reduction == "none":
            adders = [c for output in node.output for c in consumers.get(output, ()) if c.op_type in _ADDING_OPS]
            if adders:
                hazards.append(GraphHazard(
                    label, f"{node.op_type} without reduction",
                    f"its result is summed by {adders[0].op_type} '{adders[0].name or adders[0].output[0]}': an "
                    "accumulating scatter (index_add or index_put(accumulate=True)) exported as overwrite-then-add, "
                    "so repeated indices overwrite each other instead of adding; " + _FIX,
                ))
    return hazards
