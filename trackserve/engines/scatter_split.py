"""A network whose scatter-adds run outside ONNX Runtime, with the same result bit for bit.

ONNX Runtime's CPU ``ScatterElements(reduction="add")`` walks the updates one element at
a time (tens of nanoseconds each): on a GNN of a million edges it costs several times
all the matrix products together. :class:`ScatterSplitNetwork` cuts the graph at each
such node into ONNX Runtime sessions and does the scatter between them with a sparse
incidence matrix (scipy CSR times dense), which adds, for every destination row, the
update rows in edge order starting from the zero data: exactly the float32 sums
``ScatterElements`` computes, in the same order, so the outputs are identical.

Only the pattern the networks export is cut (``scatter_add`` with an index expanded to
the message shape: ``ScatterElements(data, Expand(index[E, 1]), updates[E, C], axis=0,
reduction="add")``); the index is taken before the ``Expand``, so the ``[E, C]`` int64
index is never needed by the scatter. Anything else (non-zero data, other shapes) is
computed with ``numpy.add.at``, which also adds in update order. Splitting needs the
``onnx`` package; :func:`open_network` falls back to a plain
:class:`~trackserve.engines.onnx_runtime.OnnxNetwork` without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_array

from ..errors import BundleError, InputError
from .onnx_runtime import OnnxNetwork, session_options

#: Below this many input elements the whole-graph session is faster (fewer calls) and
#: gives the same bits; the pieces pay off on graphs of tens of thousands of edges.
SPLIT_MIN_INPUT_ELEMENTS = 50_000


@dataclass(frozen=True)
class _Session:
    """One piece of the graph run by ONNX Runtime."""

    session: object
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class _Scatter:
    """One ``ScatterElements(add, axis=0)`` done in numpy/scipy."""

    data: str
    index: str  # the tensor before the Expand: [E, 1]
    updates: str
    output: str


def splittable_scatters(model) -> list[int]:
    """Positions in ``model.graph.node`` of the scatter-adds :class:`ScatterSplitNetwork` takes over."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found = []
    for position, node in enumerate(model.graph.node):
        if node.op_type != "ScatterElements" or len(node.input) != 3:
            continue
        attributes = {a.name: a for a in node.attribute}
        reduction = attributes["reduction"].s.decode() if "reduction" in attributes else "none"
        axis = attributes["axis"].i if "axis" in attributes else 0
        expand = producers.get(node.input[1])
        if reduction == "add" and axis == 0 and expand is not None and expand.op_type == "Expand":
            found.append(position)
    return found


class ScatterSplitNetwork(OnnxNetwork):
    """An :class:`OnnxNetwork` whose scatter-adds are computed between ONNX Runtime sessions.

    Same constructor, attributes and :meth:`run` as :class:`OnnxNetwork` (whose whole-graph
    ``session`` stays available); :meth:`run` gives the same output bit for bit, faster.
    """

    def __init__(self, path, *, intra_op_threads=None, providers=("CPUExecutionProvider",), name=None):
        super().__init__(path, intra_op_threads=intra_op_threads, providers=providers, name=name)
        import onnx

        model = onnx.load(str(self.path))
        self._steps, self._last_use, self._constants = _plan(model, self.intra_op_threads, list(providers))
        self._final = model.graph.output[0].name

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        """Check the inputs, run the pieces and scatters in order (small inputs: the whole
        session), return the first output."""
        if sum(array.size for array in inputs.values() if isinstance(array, np.ndarray)) < SPLIT_MIN_INPUT_ELEMENTS:
            return super().run(**inputs)
        self.check_inputs(inputs)
        start = time.perf_counter()
        values = dict(self._constants)
        values.update(inputs)
        incidence: dict = {}
        for position, step in enumerate(self._steps):
            if isinstance(step, _Session):
                results = step.session.run(list(step.outputs), {n: values[n] for n in step.inputs})
                values.update(zip(step.outputs, results))
            else:
                values[step.output] = _scatter_add(
                    values[step.data], values[step.index], values[step.updates], incidence, self.name
                )
            for dead in self._last_use.get(position, ()):
                values.pop(dead, None)
        self.last_seconds = time.perf_counter() - start
        return values[self._final]


def open_network(path: str | Path, *, intra_op_threads: int | None = None, name: str | None = None) -> OnnxNetwork:
    """The fastest exact CPU runner of an ONNX network: :class:`ScatterSplitNetwork` when the
    graph has scatter-adds to take over and ``onnx`` is installed, else :class:`OnnxNetwork`."""
    try:
        import onnx
    except ImportError:
        return OnnxNetwork(path, intra_op_threads=intra_op_threads, name=name)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others
        raise BundleError(f"cannot read the ONNX file {path}: {error}") from error
    if splittable_scatters(model):
        return ScatterSplitNetwork(path, intra_op_threads=intra_op_threads, name=name)
    return OnnxNetwork(path, intra_op_threads=intra_op_threads, name=name)


def _scatter_add(data: np.ndarray, index: np.ndarray, updates: np.ndarray, incidence: dict, name: str) -> np.ndarray:
    """``ScatterElements(data, broadcast(index), updates, axis=0, reduction="add")``, additions in update order."""
    rows = data.shape[0]
    if index.size:
        low, high = int(index.min()), int(index.max())
        if low < -rows or high >= rows:
            raise InputError(
                f"network '{name}': a scatter index ({low if low < -rows else high}) is outside "
                f"[-{rows}, {rows}) (the graph refers to a node that does not exist)"
            )
    fast = (
        updates.ndim == 2 and data.ndim == 2 and index.shape == (updates.shape[0], 1)
        and data.dtype == updates.dtype and not data.any()
    )
    if not fast:
        full = np.broadcast_to(index, updates.shape).astype(np.int64)
        full = np.where(full < 0, full + rows, full)
        grid = list(np.indices(updates.shape, sparse=True))
        grid[0] = full
        out = data.copy()
        np.add.at(out, tuple(grid), updates)
        return out
    flat = index[:, 0].astype(np.int64, copy=False)
    key = (rows, flat.shape[0])
    cached = incidence.get(key)
    if cached is None or not np.array_equal(cached[0], flat):
        target = np.where(flat < 0, flat + rows, flat)
        order = np.argsort(target, kind="stable")  # each row's edges in edge order
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(target, minlength=rows), out=indptr[1:])
        matrix = csr_array((np.ones(flat.shape[0], dtype=updates.dtype), order, indptr), shape=(rows, flat.shape[0]))
        cached = (flat, matrix)
        incidence[key] = cached
    # CSR times dense adds 1.0 * update rows into a zero row in the order of the row's
    # column indices (edge order): the same float32 sums as ScatterElements.
    return np.ascontiguousarray(cached[1] @ np.ascontiguousarray(updates), dtype=updates.dtype)


def _plan(model, threads: int, providers: list[str]):
    """Cut ``model`` at its splittable scatters: the steps, the tensors each step frees, the constants."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = list(graph.node)
    cuts = splittable_scatters(model)
    producers = {out: node for node in nodes for out in node.output}
    scatters = {
        position: _Scatter(nodes[position].input[0], producers[nodes[position].input[1]].input[0],
                           nodes[position].input[2], nodes[position].output[0])
        for position in cuts
    }
    initializers = {init.name: init for init in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *graph.input, *graph.output)}
    types.update({name: init.data_type for name, init in initializers.items()})
    graph_outputs = [o.name for o in graph.output]

    # The pieces between scatters, in order; each scatter after its piece.
    pieces: list[list] = []
    begin = 0
    for position in [*cuts, len(nodes)]:
        pieces.append(nodes[begin:position])
        begin = position + 1
    # Tensors read after piece k: by the scatter right after it, later pieces and scatters, the outputs.
    consumed_later: list[set[str]] = [set() for _ in pieces]
    later: set[str] = set(graph_outputs)
    for k in range(len(pieces) - 1, -1, -1):
        if k < len(cuts):
            scatter = scatters[cuts[k]]
            later.update((scatter.data, scatter.index, scatter.updates))
        consumed_later[k] = set(later)
        for node in pieces[k]:
            later.update(node.input)

    steps: list = []
    constants: dict[str, np.ndarray] = {}
    for k, piece in enumerate(pieces):
        produced = {out for node in piece for out in node.output}
        wanted = [name for name in sorted(produced) if name in consumed_later[k]]
        kept = _needed_nodes(piece, set(wanted))
        if kept:
            needed_inputs = []
            used_initializers = []
            inside = {out for node in kept for out in node.output}
            for node in kept:
                for name in node.input:
                    if not name or name in inside or name in needed_inputs:
                        continue
                    if name in initializers:
                        if initializers[name] not in used_initializers:
                            used_initializers.append(initializers[name])
                    else:
                        needed_inputs.append(name)
            sub = helper.make_graph(
                kept, f"{graph.name}_piece{k}",
                [helper.make_tensor_value_info(name, types[name], None) for name in needed_inputs],
                [helper.make_tensor_value_info(name, types[name], None) for name in wanted],
                used_initializers,
            )
            sub_model = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
            steps.append(_Session(_open(sub_model, threads, providers), tuple(needed_inputs), tuple(wanted)))
        if k < len(cuts):
            scatter = scatters[cuts[k]]
            for name in (scatter.data, scatter.index, scatter.updates):
                if name in initializers:
                    constants[name] = numpy_helper.to_array(initializers[name])
            steps.append(scatter)

    last_use: dict[int, list[str]] = {}
    seen: set[str] = set(graph_outputs)
    for position in range(len(steps) - 1, -1, -1):
        step = steps[position]
        reads = step.inputs if isinstance(step, _Session) else (step.data, step.index, step.updates)
        last_use[position] = [name for name in reads if name not in seen]
        seen.update(reads)
    return steps, last_use, constants


def _needed_nodes(piece: list, wanted: set[str]) -> list:
    """The nodes of ``piece`` (in order) that the ``wanted`` tensors depend on."""
    needed = set(wanted)
    kept = []
    for node in reversed(piece):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    return kept


def _open(model, threads: int, providers: list[str]):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise BundleError(f"ONNX Runtime cannot load a piece of the split network {model.graph.name}: {error}") from error
