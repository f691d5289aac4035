"""Exact and fast CPU runners for networks with scatter-adds (the message-passing GNNs).

ONNX Runtime's CPU ``ScatterElements(reduction="add")`` walks the updates one element at
a time (tens of nanoseconds each) and needs its index expanded to the update shape: on
the default GNN it took 40 % of the time of a 1,000-hit event and more than all matrix
products together on a million edges. Two runners avoid it, both giving the float32 sums
``ScatterElements`` gives, in the same order (tested bit for bit):

* the *sequential* form (:func:`sequential_scatter_model`): the same graph with each
  scatter-add as a row-wise ``ScatterND(reduction="add")`` on the messages themselves
  (not on the full-size copy the export slices them into), run in a session of ONE
  intra-op thread, where ONNX Runtime's kernel adds the rows in order (with more threads
  it races and loses additions: ../shared/NOTES.md);
* the *split* form: the graph cut into sessions at each scatter, the scatters done in
  between with a sparse incidence matrix (scipy CSR times dense), the pieces at the
  configured thread count.

On large graphs the sequential form also runs as its *blocked* form
(:mod:`~trackserve.engines.row_blocks`: the row-wise work in cache-sized blocks of edges
and hits, on several threads when the caller hands it a part runner; the same bits):
:meth:`ScatterSplitNetwork.run` from :data:`BLOCKED_MIN_EDGES` edges on the calling
thread, :meth:`ScatterSplitNetwork.run_in_blocks` for the runtime's large single-component
graphs on all of an event's threads.

Measured on this project's 2-core machine with the default GNN (``benchmarks/
RESULTS.md``), the sequential form was faster than the split form at 2 threads, and than
the whole graph at 2 threads, at every size from 2,000 to 300,000 edges (4.6 against
8.2 ms at 2,000 edges; 1.17 against 1.47 s at 300,000), and it peaked at a quarter of
the split form's memory (0.56 against 2.1 GB at 300,000 edges). So
:class:`ScatterSplitNetwork` runs the sequential form (or its blocked form, below); the
split form only for a network without a blocked form, given at least
:data:`SPLIT_MIN_THREADS` threads and a large input, where parallel pieces may pay (not
measured here: two cores). With a blocked form, many cores work on component groups or
blocks of rows of one graph at once instead, measured faster at 2 threads than anything
else here; blocks of rows give the one-thread scores bit for bit whatever the number of
cores, component groups the same up to float32 rounding (each group is a call of its own
size, whose last rows ONNX Runtime rounds its own way).

Only the pattern the networks export is rewritten (``scatter_add`` with an index
expanded to the message shape: ``ScatterElements(data, Expand(index[E, 1]), updates[E,
C], axis=0, reduction="add")``); the index is taken before the ``Expand``. In the split
form anything else (non-zero data, other shapes) is computed with ``numpy.add.at``, which
also adds in update order. Both need the ``onnx`` package; :func:`open_network` falls
back to a plain :class:`~trackserve.engines.onnx_runtime.OnnxNetwork` without it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy.sparse import csr_array

from ..errors import BundleError, InputError
from .onnx_runtime import OnnxNetwork, session_options

#: The split form is used only with at least this many intra-op threads ...
SPLIT_MIN_THREADS = 4
#: ... and inputs of at least this many elements; otherwise the sequential form runs.
SPLIT_MIN_INPUT_ELEMENTS = 50_000

#: A call on the calling thread alone runs in blocks of rows (:mod:`~trackserve.engines.row_blocks`)
#: from this many edges. Measured on this project's 2-core machine with the default
#: pruner (one thread, azimuth slices of a 100k-hit event): 101,176 edges 174 ms in one
#: call against 193 ms in blocks, 212,172 edges 491 against 411 ms, 870,009 edges 2.30
#: against 2.00 s, the same logits bit for bit.
BLOCKED_MIN_EDGES = 150_000
#: With several threads for one graph, its blocks of rows run on all of them from this
#: many edges, where halo slices ran before (the same pruner at 2 threads, alternating
#: calls: 26,107 edges 36.8 ms against 44.2 ms as two halo slices and 38.9 ms in one call,
#: 48,934 edges 66 against 84 ms, 101,176 edges 115 against 209 ms, 212,172 edges 289
#: against 385 ms, 870,009 edges 1.15 against 1.50 s).
BLOCKED_MIN_EDGES_PARALLEL = 20_000


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
    """An :class:`OnnxNetwork` that runs a scatter-add network in its sequential or split form.

    Same constructor, attributes and :meth:`run` as :class:`OnnxNetwork`; its ``session``
    is the sequential form's (one thread, whatever ``intra_op_threads`` says, which sizes
    the split form's pieces). :meth:`run` gives, bit for bit and faster, the output of the
    whole graph in ONNX Runtime at one thread (sequential form) or at the configured
    threads (split form). ONNX Runtime's results can differ in the last bits between
    thread counts.
    """

    def __init__(self, path, *, intra_op_threads=None, providers=("CPUExecutionProvider",), name=None):
        self._sequential = None  # the sequential form, made by the first _open_session
        super().__init__(path, intra_op_threads=intra_op_threads, providers=providers, name=name)
        self._providers = tuple(providers)
        # The blocked form is built by the first call that needs it (blocked_form()).
        self._blocked = None
        self._blocked_lock = threading.Lock()
        #: Why this network does not run in blocks of rows (None: it does, or was not asked yet).
        self.blocked_form_problem: str | None = None
        edge_inputs = [i.name for i in self.inputs if i.dtype == np.int64 and len(i.shape) == 2 and i.shape[0] == 2]
        self._edge_input = edge_inputs[0] if len(edge_inputs) == 1 else None
        # The split form's sessions are opened only where it may run (see run()).
        self._steps = None
        if self.intra_op_threads >= SPLIT_MIN_THREADS:
            self._steps, self._last_use, self._constants = _plan(self._model, self.intra_op_threads, list(providers))
        del self._model

    def _open_session(self, options, providers: list[str]):
        """A session of the sequential form (one thread); the first call keeps the model for
        the split form's plan and the sequential form for the sessions opened later."""
        if self._sequential is None:
            import onnx

            self._model = onnx.load(str(self.path))
            self._sequential = sequential_scatter_model(self._model)
        return _open(self._sequential, 1, providers)

    def uses_one_thread(self, num_input_elements: int) -> bool:
        """True unless a call on this many input elements runs in the split form (see
        :meth:`run`): only a network without a blocked form does, since the blocked form
        uses the caller's threads instead (component groups or blocks of rows at once): blocks
        of rows give the one-thread result bit for bit whatever the number of cores."""
        return (self._steps is None or num_input_elements < SPLIT_MIN_INPUT_ELEMENTS
                or self.blocked_form() is not None)

    def blocked_form(self):
        """The network's :class:`~trackserve.engines.row_blocks.RowBlockedForm`, built on the
        first call; None when it has none (:attr:`blocked_form_problem` says why)."""
        with self._blocked_lock:
            if self._blocked is None and self.blocked_form_problem is None:
                from .row_blocks import BlockedFormUnavailable, RowBlockedForm

                try:
                    self._blocked = RowBlockedForm(self._sequential, self._providers)
                except BlockedFormUnavailable as problem:
                    self.blocked_form_problem = str(problem)
            return self._blocked

    def runs_in_blocks(self, num_edges: int, threads: int) -> bool:
        """Whether a call on ``num_edges`` edges with ``threads`` threads for it runs in blocks
        of rows: from :data:`BLOCKED_MIN_EDGES` edges on one thread, from
        :data:`BLOCKED_MIN_EDGES_PARALLEL` on several, when the network has a blocked form."""
        least = BLOCKED_MIN_EDGES if threads < 2 else BLOCKED_MIN_EDGES_PARALLEL
        return self._edge_input is not None and num_edges >= least and self.blocked_form() is not None

    def call_in_blocks(self, inputs: Mapping[str, np.ndarray]) -> bool:
        """Whether :meth:`run` on ``inputs`` runs in blocks of rows on the calling thread."""
        size = sum(array.size for array in inputs.values() if isinstance(array, np.ndarray))
        edges = inputs.get(self._edge_input)
        return (isinstance(edges, np.ndarray) and edges.ndim == 2 and self.uses_one_thread(size)
                and self.runs_in_blocks(edges.shape[1], 1))

    def run_in_blocks(self, parallel, **inputs: np.ndarray) -> np.ndarray:
        """Check the inputs and run the network's blocked form, its stages of rows on the
        threads of ``parallel`` (a :class:`~trackserve.runtime.parallel.PartRunner`, or None
        for the calling thread alone): the sequential form's output bit for bit."""
        self.check_inputs(inputs)
        form = self.blocked_form()
        if form is None:
            raise BundleError(f"network '{self.name}' has no blocked form: {self.blocked_form_problem}")
        start = time.perf_counter()
        try:
            output = form.run(inputs, parallel)
        except Exception as error:  # onnxruntime raises its own exception types
            raise InputError(f"network '{self.name}' cannot run on these inputs: {error}") from error
        self.last_seconds = time.perf_counter() - start
        return output

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        """Check the inputs, run the network and return its first output: in the sequential
        form (:func:`sequential_scatter_model`), in blocks of rows on the calling thread from
        :data:`BLOCKED_MIN_EDGES` edges, or, for a network without a blocked form, with at
        least :data:`SPLIT_MIN_THREADS` threads and :data:`SPLIT_MIN_INPUT_ELEMENTS` input
        elements, in the split form."""
        if self.call_in_blocks(inputs):
            return self.run_in_blocks(None, **inputs)
        size = sum(array.size for array in inputs.values() if isinstance(array, np.ndarray))
        if self.uses_one_thread(size):
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
        return values[self.outputs[0].name]


def sequential_scatter_model(model):
    """A copy of ``model`` whose splittable scatter-adds are ``ScatterND(reduction="add")``
    on the ``[E, 1]`` index, for a session with ONE intra-op thread.

    ``ScatterElements`` adds element by element (about 0.3 ms for 2,000 x 32 updates) and
    needs the index expanded to the update shape; ``ScatterND`` adds whole rows (about
    30 us). ONNX Runtime's CPU ``ScatterND`` splits the update rows over the session's
    pool with no guard against two rows of one destination, so at two threads or more it
    loses additions (../shared/NOTES.md; exported networks never contain it). With one
    thread its loop runs the rows in order on the calling thread: the same additions as
    ``ScatterElements`` in the same order, hence the same bits (tested).

    The expanded index is not built either: where the graph reads only its shape
    (``Shape`` nodes; the exports slice the messages with it), that shape is computed from
    the ``Expand``'s two inputs by the broadcasting rule (per axis: the target size where
    the index has 1, else the index's size), which needs both of the same rank."""
    import onnx
    from onnx import helper, numpy_helper

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    nodes = list(graph.node)
    producers = {out: node for node in nodes for out in node.output}
    dims = _known_dims(rewritten)
    one = "trackserve_sequential_one"
    for scatter in [nodes[position] for position in splittable_scatters(rewritten)]:
        expand = producers[scatter.input[1]]
        index, target = expand.input[0], expand.input[1]
        rows = helper.make_node(
            "ScatterND", [scatter.input[0], index, scatter.input[2]], list(scatter.output),
            name=f"{scatter.name}_rows", reduction="add",
        )
        nodes[next(i for i, node in enumerate(nodes) if node is scatter)] = rows
        readers = [n for n in nodes if expand.output[0] in n.input]
        shape_only = all(n.op_type == "Shape" and not n.attribute for n in readers)
        index_rank = len(dims[index]) if index in dims else None
        target_length = dims[target][0] if len(dims.get(target, [])) == 1 else None
        if not readers or not shape_only or index_rank is None or index_rank != target_length:
            continue
        shape = f"{expand.output[0]}_shape"
        at = next(i for i, node in enumerate(nodes) if node is expand)
        nodes[at:at + 1] = [
            helper.make_node("Shape", [index], [f"{shape}_index"]),
            helper.make_node("Equal", [f"{shape}_index", one], [f"{shape}_is_one"]),
            helper.make_node("Where", [f"{shape}_is_one", target, f"{shape}_index"], [shape]),
        ]
        for reader in readers:
            reader.op_type = "Identity"
            reader.input[0] = shape
        _skip_whole_slice(rows, expand, readers, producers, graph)
    kept = needed_nodes(nodes, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    initializers = [init for init in graph.initializer if init.name in used]
    if one in used:
        initializers.append(numpy_helper.from_array(np.array(1, dtype=np.int64), one))
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return rewritten


def _skip_whole_slice(rows, expand, shape_readers: list, producers: dict, graph) -> None:
    """Let the row scatter ``rows`` read its updates ``X`` directly where they come as
    ``Slice(X, starts=0, ends=<shape of the expanded index>)`` with the index expanded to
    ``Shape(X)`` (the exports' ``scatter_add``): a copy of all of ``X`` (6 % of the
    default GNN's time on a 100k-hit event went to its 12 of them). Per axis the ends are
    ``X``'s size where the index has 1 and the index's size elsewhere; ``ScatterND``
    checks that its updates have the index's rows, so an ``X`` of other rows than the
    index is still refused, never summed in part."""
    from onnx import numpy_helper

    updates = producers.get(rows.input[2])
    target = producers.get(expand.input[1])
    if updates is None or updates.op_type != "Slice" or len(updates.input) != 3:
        return
    if target is None or target.op_type != "Shape" or target.attribute or target.input[0] != updates.input[0]:
        return
    if updates.input[2] not in {reader.output[0] for reader in shape_readers}:
        return
    starts = producers.get(updates.input[1])
    initial = {init.name: init for init in graph.initializer}
    if starts is not None and starts.op_type == "Constant" and len(starts.attribute) == 1 and starts.attribute[0].name == "value":
        values = numpy_helper.to_array(starts.attribute[0].t)
    elif updates.input[1] in initial:
        values = numpy_helper.to_array(initial[updates.input[1]])
    else:
        return
    if values.size and not np.any(values):
        rows.input[2] = updates.input[0]


def _known_dims(model) -> dict[str, list]:
    """Every tensor's dims as shape inference knows them (an int, or None where unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    dims: dict[str, list] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return dims


def open_network(path: str | Path, *, intra_op_threads: int | None = None, name: str | None = None,
                 per_event: tuple[str, ...] = ()) -> OnnxNetwork:
    """The fastest exact CPU runner of an ONNX network: :class:`ScatterSplitNetwork` when the
    graph has scatter-adds to take over and ``onnx`` is installed, else :class:`OnnxNetwork`
    (with ``per_event``: its work on those inputs alone done once by ``prepare``)."""
    try:
        import onnx
    except ImportError:
        return OnnxNetwork(path, intra_op_threads=intra_op_threads, name=name, per_event=per_event)
    try:
        # with per-event inputs the whole model is cut in two, external data and all
        model = onnx.load(str(path), load_external_data=bool(per_event))
    except Exception as error:  # onnx raises DecodeError and others
        raise BundleError(f"cannot read the ONNX file {path}: {error}") from error
    if splittable_scatters(model):
        return ScatterSplitNetwork(path, intra_op_threads=intra_op_threads, name=name)
    # the model read here is the one cut for the per-event inputs: the file is read once
    return OnnxNetwork(path, intra_op_threads=intra_op_threads, name=name, per_event=per_event, model=model)


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
        kept = needed_nodes(piece, set(wanted))
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


def needed_nodes(piece: list, wanted: set[str]) -> list:
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
