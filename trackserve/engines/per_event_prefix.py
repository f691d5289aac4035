"""Split an edge network into the part that reads the hits alone and the part per edge.

The exported edge networks (the filter) take the event's ``features [N, F]`` and an
``edge_index [2, E]`` and begin with work on the hits alone: the derived pseudorapidity
of every hit and the features it is appended to, before any edge is gathered. Run over
the edges in blocks (a block's activations then stay in the core's caches), every call
would redo that work on all the event's hits: on a 30,000-hit event in blocks of 1,024
edges it cost about 0.5 ms a call, more than the block's own work.

:func:`split_per_event` cuts the graph in two: the *prefix*, every operator whose inputs
depend on the per-event inputs alone (``features``), run once per event; and the *rest*,
which takes the tensors the prefix hands over (and the per-edge inputs) and runs once per
block. The operators are the same, on the same values, so the outputs are those of the
whole graph (tested bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .scatter_split import needed_nodes


@dataclass(frozen=True)
class PrefixSplit:
    """The two models of a split network and the tensors the first hands to the second."""

    prefix: object  # onnx.ModelProto: the per-event inputs -> the handed tensors
    rest: object  # onnx.ModelProto: the handed tensors + the other inputs -> the outputs
    handed: tuple[str, ...]  # computed by the prefix
    passed: tuple[str, ...]  # per-event graph inputs the rest reads as they are


def split_per_event(model, per_event: Sequence[str]) -> PrefixSplit | None:
    """Cut ``model`` (an ``onnx.ModelProto``) after the operators that read only the inputs
    named in ``per_event`` (and constants). None when there is nothing to hoist (no such
    operator feeds the rest), when an output depends on the per-event inputs alone, or
    when the graph has subgraphs (control flow), which this cut does not follow."""
    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    if not set(per_event) <= set(inputs):
        raise ValueError(f"per-event inputs {sorted(set(per_event) - set(inputs))} are not inputs of the model")
    if any(attribute.type in (5, 10) for node in graph.node for attribute in node.attribute):  # GRAPH, GRAPHS
        return None
    initializers = {init.name for init in graph.initializer}
    per_event_tensors = set(per_event) | initializers
    constant_outputs: set[str] = set()
    prefix_nodes, rest_nodes = [], []
    for node in graph.node:
        if all(name in per_event_tensors for name in node.input if name):
            per_event_tensors.update(node.output)
            if not node.input:
                constant_outputs.update(node.output)
            prefix_nodes.append(node)
        else:
            rest_nodes.append(node)
    outputs = [value.name for value in graph.output]
    if any(name in per_event_tensors for name in outputs):
        return None
    read_by_rest = [name for node in rest_nodes for name in node.input if name]
    crossing = list(dict.fromkeys(
        name for name in read_by_rest
        if name in per_event_tensors and name not in initializers and name not in constant_outputs
    ))
    handed = tuple(name for name in crossing if name not in inputs)
    passed = tuple(name for name in crossing if name in inputs)
    if not handed:
        return None
    # Constants the rest reads are repeated there (they cost nothing).
    rest_constants = [node for node in prefix_nodes if not node.input
                      and any(out in read_by_rest for out in node.output)]
    types = _tensor_types(model)
    if any(name not in types for name in handed):
        return None  # a handed tensor of unknown type cannot be declared as an input
    prefix = _model_like(
        model, needed_nodes(prefix_nodes, set(handed)), [inputs[name] for name in per_event],
        [types[name] for name in handed], "prefix",
    )
    rest_inputs = [inputs[name] for name in passed] + [types[name] for name in handed]
    rest_inputs += [value for value in graph.input if value.name not in per_event]
    rest = _model_like(model, rest_constants + rest_nodes, rest_inputs, list(graph.output), "rest")
    return PrefixSplit(prefix, rest, handed, passed)


def _tensor_types(model) -> dict:
    """Each tensor's value info (type, and shape where known) after shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if value.type.tensor_type.elem_type:
            known[value.name] = value
    return known


def _model_like(model, nodes: list, inputs: list, outputs: list, suffix: str):
    """A model with ``model``'s opsets and IR version over ``nodes``, with the initializers they read."""
    from onnx import helper

    used = {name for node in nodes for name in node.input}
    initializers = [init for init in model.graph.initializer if init.name in used]
    graph = helper.make_graph(nodes, f"{model.graph.name}_{suffix}", inputs, outputs, initializers)
    piece = helper.make_model(graph, opset_imports=list(model.opset_import))
    piece.ir_version = model.ir_version
    return piece
