"""Large message-passing graphs in cache-sized blocks of rows: the blocked form of a GNN.

Between two scatter-adds, a message-passing network's work is row by row: the edge
network computes each edge's row from that edge's own rows and from whole tables (the
hits' node products, the weights), the node network each hit's row from its own.
ONNX Runtime runs each operator over all the rows before the next one starts, so on a
large graph every intermediate ``[E, 32]`` tensor (111 MB at 870,000 edges) goes through
main memory between operators. Measured on this project's 2-core machine with the default
pruner (one thread, its sequential form): 1.33 us per edge on 13,343 edges of a 100k-hit
event, 1.47 on 48,934, 2.11 on 169,584 and 2.57 on all 870,009.

The blocked form (:class:`RowBlockedForm`) cuts the sequential form of
:mod:`~trackserve.engines.scatter_split` into stages of four kinds:

* *edge rows*: operators whose every output row depends only on the same row of their
  edge-row inputs (and on whole tensors that are not edge rows), run in blocks of
  :data:`BLOCK_ROWS` edges, each block through the whole stage while it is in the caches;
* *hit rows*: the same over the hits (the node network, the node products);
* *scatters*: the row scatter-adds (``ScatterND`` add of whole edge rows into the hits),
  each in a call of its own, those of one stage at once;
* *whole*: everything else (shapes, the zero tensors the scatters add into), in one call.

Each stage of rows is cut into contiguous parts, one per thread of the
:class:`~trackserve.runtime.parallel.PartRunner` it is given, each part's blocks one after
the other in a session of one thread; so one large graph also uses several cores, with
no halo (compare :class:`~trackserve.runtime.parallel.HaloSplit`).

Exactness: a row-wise operator computes each row the same whatever other rows are in
the call, and the scatters add in edge order in one thread as the sequential form does,
so the result is the sequential form's bit for bit. Which operators count as row-wise is
a short list checked with their attributes against the shapes of a probe run (hits and
edges of distinct counts); a node not on it runs whole. Before a network is run blocked,
its blocked form runs the probe inputs in blocks of a few rows on two parts and must give
the sequential form's output exactly; where it does not, or where the network's inputs
are not one edge index ``[2, E]`` and hit tables ``[N, F]``, the network runs as before
(:attr:`~trackserve.engines.scatter_split.ScatterSplitNetwork.blocked_form_problem` says
why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..errors import BundleError
from ..runtime.parallel import row_parts
from .onnx_runtime import SessionPool, session_options

#: Rows (edges or hits) per call of a stage of rows: its intermediate tensors stay near the
#: core. Measured on this project's 2-core machine with the default pruner on a 100k-hit
#: event's 870,009 edges at 2 threads: blocks of 4,096 / 8,192 / 16,384 / 32,768 / 65,536
#: rows took 0.92 / 1.02 / 0.93 / 0.98 / 0.99 s (medians of 3, within the machine's noise;
#: an early version's sweep had 4,096 rows 40 % slower than 16,384).
BLOCK_ROWS = 16_384
#: The fewest rows of a part of a stage of rows (smaller stages run as one part).
MIN_PART_ROWS = 1_024
#: Every block and part starts at a multiple of this many rows: ONNX Runtime's vectorised
#: element-wise kernels can round an element on a vector lane and one in a loop's
#: remainder differently, so a cut elsewhere can change the last bit of an element of a
#: narrow tensor (cut at every 97 rows, the default pruner's derived eta column differed
#: in the last bit at the blocks' last rows); at these cuts every element is computed
#: where one call computes it.
ROW_ALIGN = 64

#: Element-wise operators: row-wise when no input broadcasts across rows.
ELEMENTWISE = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Cos", "Div", "Elu", "Equal", "Erf", "Exp", "Floor",
    "Greater", "GreaterOrEqual", "HardSigmoid", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "Max", "Min", "Mul", "Neg", "Not", "Or", "Pow", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid",
    "Sign", "Sin", "Softplus", "Sqrt", "Sub", "Tanh", "Where",
})

#: Stage kinds, in the order one message-passing step needs them.
KINDS = ("whole", "hits", "edges", "scatter")
#: Hits and edges of the probe run: counts no layer width takes, so a tensor's first
#: dimension tells which rows it has.
PROBE_HITS, PROBE_EDGES = 613, 1009
#: Rows per block in the check on the probe inputs (several blocks, the last one short).
CHECK_BLOCK_ROWS = 2 * ROW_ALIGN


class BlockedFormUnavailable(BundleError):
    """The network cannot run in blocks of rows (the message says why); it runs as it is."""


@dataclass
class _Stage:
    """One stage: its kind, its sub-model's sessions (one pool per scatter for scatters),
    the tensors it reads and writes, the row inputs it cuts and its outputs' row shapes."""

    kind: str
    pools: list
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    row_inputs: tuple[str, ...] = ()
    row_shapes: dict = field(default_factory=dict)  # output -> (shape after the first axis, dtype)
    frees: tuple[str, ...] = ()


def _attribute(node, name: str, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _constants_as_initializers(model):
    """A copy of ``model`` whose ``Constant`` nodes are initializers (so every stage that reads
    one carries it, and an operator's parameters are known to be constant)."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(node.attribute[0].t), node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return copy


def probe_inputs(model) -> dict[str, np.ndarray]:
    """Inputs for the probe run: one int64 edge index ``[2, E]`` (random hits, so destinations
    repeat) and float32 hit tables ``[N, F]`` (values in [0.1, 1]). Raises
    :class:`BlockedFormUnavailable` for a network with other inputs."""
    from onnx import TensorProto

    rng = np.random.default_rng(20261130)
    initializers = {init.name for init in model.graph.initializer}
    inputs: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if tensor.elem_type == TensorProto.INT64 and len(dims) == 2 and dims[0] == 2:
            inputs[value.name] = rng.integers(0, PROBE_HITS, (2, PROBE_EDGES), dtype=np.int64)
        elif tensor.elem_type == TensorProto.FLOAT and len(dims) == 2 and dims[1] is not None:
            inputs[value.name] = rng.uniform(0.1, 1.0, (PROBE_HITS, dims[1])).astype(np.float32)
        else:
            raise BlockedFormUnavailable(f"input '{value.name}' is neither an edge index [2, E] nor a hit table [N, F]")
    edge_inputs = sum(array.dtype == np.int64 for array in inputs.values())
    if edge_inputs != 1 or len(inputs) == edge_inputs:
        raise BlockedFormUnavailable("the network needs exactly one edge index input [2, E] and a hit table [N, F]")
    return inputs


def probe_values(model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of ``model`` (inputs, initializers, each node's outputs) on ``inputs``;
    :class:`BlockedFormUnavailable` when ONNX Runtime cannot give them all."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [name for node in probe.graph.node for name in node.output if name]
    del probe.graph.output[:]
    probe.graph.output.extend([helper.make_value_info(name, onnx.TypeProto()) for name in names])
    try:
        session = ort.InferenceSession(probe.SerializeToString(), sess_options=session_options(1),
                                       providers=["CPUExecutionProvider"])
        values = dict(zip(names, session.run(names, dict(inputs))))
    except Exception as error:  # onnxruntime raises its own exception types
        raise BlockedFormUnavailable(f"the probe run of every tensor failed: {error}") from error
    if not all(isinstance(value, np.ndarray) for value in values.values()):
        raise BlockedFormUnavailable("the network has tensors that are not arrays (sequences or maps)")
    values.update(inputs)
    values.update((init.name, numpy_helper.to_array(init)) for init in model.graph.initializer)
    return values


def is_row_wise(node, values: Mapping[str, np.ndarray], rows: set[str], constants: set[str]) -> bool:
    """Whether each output row of ``node`` depends only on the same row of its inputs in
    ``rows`` (the tensors whose first axis is the rows) and on whole other tensors.

    ``values``: the probe run's tensors; ``constants``: the initializers (an operator's
    axes, slice bounds and column indices must be among them)."""
    outputs = [name for name in node.output if name]
    inputs = [name for name in node.input if name]
    if not outputs or not all(name in rows for name in outputs):
        return False
    rank = values[outputs[0]].ndim
    op = node.op_type
    if op in ELEMENTWISE:
        for name in inputs:
            shape = values[name].shape
            if name in rows:
                if len(shape) != rank:
                    return False
            elif len(shape) == rank and shape[0] != 1:
                return False
        return True
    if op == "Gather":
        data, index = inputs
        axis = _attribute(node, "axis", 0) % values[data].ndim
        if axis == 0:
            return data not in rows and index in rows and values[index].ndim == 1
        return data in rows and index in constants
    if op == "MatMul":
        return (inputs[0] in rows and inputs[1] not in rows and values[inputs[0]].ndim == 2
                and values[inputs[1]].ndim == 2)
    if op == "Gemm":
        return (inputs[0] in rows and not _attribute(node, "transA", 0) and all(n not in rows for n in inputs[1:])
                and (len(inputs) < 3 or values[inputs[2]].ndim < 2 or values[inputs[2]].shape[0] == 1))
    if op in ("LayerNormalization", "Softmax", "LogSoftmax"):
        axis = _attribute(node, "axis", -1) % values[inputs[0]].ndim
        return inputs[0] in rows and axis != 0 and all(n not in rows for n in inputs[1:])
    if op == "Concat":
        return _attribute(node, "axis") % rank != 0 and all(n in rows for n in inputs)
    if op in ("Unsqueeze", "Squeeze"):
        if inputs[0] not in rows or any(n not in constants for n in inputs[1:]):
            return False
        axes = values[inputs[1]] if len(inputs) > 1 else _attribute(node, "axes")
        if axes is None:  # Squeeze of every size-1 axis: not the rows while there are several
            return False
        axes_rank = rank if op == "Unsqueeze" else values[inputs[0]].ndim
        return all(int(axis) % axes_rank != 0 for axis in np.ravel(axes))
    if op == "Slice":
        if inputs[0] not in rows or any(n not in constants for n in inputs[1:]):
            return False
        axes = values[inputs[3]] if len(inputs) > 3 else np.arange(values[inputs[1]].size)
        return all(int(axis) % values[inputs[0]].ndim != 0 for axis in np.ravel(axes))
    return False


def _is_row_scatter(node, values: Mapping[str, np.ndarray], edge_rows: set[str], hit_rows: set[str]) -> bool:
    """A scatter-add of whole edge rows into hit rows (the sequential form's scatters)."""
    reduction = _attribute(node, "reduction", b"none")
    return (node.op_type == "ScatterND" and reduction in (b"add", "add") and node.input[1] in edge_rows
            and values[node.input[1]].shape == (PROBE_EDGES, 1) and node.output[0] in hit_rows)


def stage_numbers(kinds: list[str], inputs_of: list[list[int]], consumers_of: list[list[int]],
                  pinned: list[bool]) -> list[int]:
    """The stage of each node (``kinds``: its kind; ``inputs_of``/``consumers_of``: the nodes
    whose outputs it reads / that read its outputs; ``pinned``: nodes that produce a graph
    output). Stage ``s`` has kind ``KINDS[s % 4]``; every node comes no earlier than what it
    reads, two scatters that depend on each other never share a stage, and a node of edge
    rows moves as late as its readers allow, so that ONNX Runtime still fuses it with them:
    otherwise the product of each edge's features for the next step's edge network leaves
    its stage as a whole ``[E, W]`` tensor instead of joining that network's sum in one
    ``Gemm`` (measured: the edge stages about 30 % slower)."""
    code = {kind: position for position, kind in enumerate(KINDS)}
    stage = [0] * len(kinds)
    for node, kind in enumerate(kinds):
        earliest = max((stage[p] for p in inputs_of[node]), default=0)
        number = earliest + (code[kind] - earliest) % len(KINDS)
        if kind == "scatter" and any(stage[p] == number and kinds[p] == "scatter" for p in inputs_of[node]):
            number += len(KINDS)
        stage[node] = number
    for node in range(len(kinds) - 1, -1, -1):
        if kinds[node] != "edges" or pinned[node] or not consumers_of[node]:
            continue
        latest = min(stage[c] for c in consumers_of[node])
        number = latest - (latest - code[kinds[node]]) % len(KINDS)
        stage[node] = max(stage[node], number)
    return stage


class RowBlockedForm:
    """The blocked form of a network's sequential form (``model``, as
    :func:`~trackserve.engines.scatter_split.sequential_scatter_model` gives it).

    Raises :class:`BlockedFormUnavailable` when the network does not fit (see the module
    docstring) or when its blocked run on the probe inputs is not the sequential form's
    output bit for bit (checked against a session of the sequential form itself: the probe
    run, which exposes every tensor, keeps ONNX Runtime from fusing and so may round
    differently). :meth:`run` is safe from several threads at once. ``counts``: how many of
    the network's nodes fell to each kind of stage."""

    def __init__(self, model, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort
        from onnx import helper

        model = _constants_as_initializers(model)
        graph = model.graph
        if len(graph.output) != 1:
            raise BlockedFormUnavailable(f"the network has {len(graph.output)} outputs (one is needed)")
        inputs = probe_inputs(model)
        values = probe_values(model, inputs)
        self.output = graph.output[0].name
        self._edge_input = next(name for name, array in inputs.items() if array.dtype == np.int64)
        self._hit_inputs = tuple(name for name in inputs if name != self._edge_input)
        edge_rows = {n for n, v in values.items() if v.ndim >= 1 and v.shape[0] == PROBE_EDGES}
        hit_rows = {n for n, v in values.items() if v.ndim >= 1 and v.shape[0] == PROBE_HITS}
        # a row tensor's other axes must not grow with the graph (the blocks' outputs are preallocated)
        for rows in (edge_rows, hit_rows):
            rows -= {n for n in rows if any(d in (PROBE_HITS, PROBE_EDGES) for d in values[n].shape[1:])}
        constants = {init.name for init in graph.initializer}
        nodes = list(graph.node)
        kinds = []
        for node in nodes:
            if _is_row_scatter(node, values, edge_rows, hit_rows):
                kinds.append("scatter")
            elif is_row_wise(node, values, edge_rows, constants):
                kinds.append("edges")
            elif is_row_wise(node, values, hit_rows, constants):
                kinds.append("hits")
            else:
                kinds.append("whole")
        producer = {name: position for position, node in enumerate(nodes) for name in node.output if name}
        inputs_of = [sorted({producer[n] for n in node.input if n in producer}) for node in nodes]
        consumers_of: list[list[int]] = [[] for _ in nodes]
        for position, sources in enumerate(inputs_of):
            for source in sources:
                consumers_of[source].append(position)
        pinned = [self.output in node.output for node in nodes]
        stages = stage_numbers(kinds, inputs_of, consumers_of, pinned)
        self.counts = {kind: kinds.count(kind) for kind in KINDS}

        readers: dict[str, set[int]] = {}
        for node, number in zip(nodes, stages):
            for name in node.input:
                readers.setdefault(name, set()).add(number)
        initializers = {init.name: init for init in graph.initializer}

        def tensor_info(name: str):
            dims = ["num_edges" if d == PROBE_EDGES else "num_hits" if d == PROBE_HITS else d
                    for d in values[name].shape]
            return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(values[name].dtype), dims)

        def pool(stage_nodes: list, wanted: list[str], tag: str) -> tuple[SessionPool, tuple[str, ...]]:
            made = {name for node in stage_nodes for name in node.output}
            needed: list[str] = []
            for node in stage_nodes:
                for name in node.input:
                    if name and name not in made and name not in initializers and name not in needed:
                        needed.append(name)
            used = sorted({name for node in stage_nodes for name in node.input if name in initializers})
            sub = helper.make_graph(stage_nodes, f"{graph.name}_{tag}", [tensor_info(n) for n in needed],
                                    [tensor_info(n) for n in wanted], [initializers[n] for n in used])
            serialized = helper.make_model(sub, opset_imports=list(model.opset_import),
                                           ir_version=model.ir_version).SerializeToString()
            try:
                session_pool = SessionPool(lambda: ort.InferenceSession(
                    serialized, sess_options=session_options(1), providers=list(providers)))
            except Exception as error:  # onnxruntime raises its own exception types
                raise BlockedFormUnavailable(f"ONNX Runtime cannot load the blocked stage {tag}: {error}") from error
            return session_pool, tuple(needed)

        self.stages: list[_Stage] = []
        for number in sorted(set(stages)):
            stage_nodes = [node for node, s in zip(nodes, stages) if s == number]
            kind = KINDS[number % len(KINDS)]
            made = [name for node in stage_nodes for name in node.output if name]
            wanted = [name for name in made if name == self.output or readers.get(name, set()) - {number}]
            if kind == "scatter":
                pools, needed = [], []
                for position, node in enumerate(stage_nodes):
                    session_pool, reads = pool([node], list(node.output), f"stage{number}_scatter{position}")
                    pools.append((session_pool, reads, tuple(node.output)))
                    needed.extend(n for n in reads if n not in needed)
                self.stages.append(_Stage(kind, pools, tuple(needed), tuple(wanted)))
                continue
            session_pool, needed = pool(stage_nodes, wanted, f"stage{number}_{kind}")
            rows = edge_rows if kind == "edges" else hit_rows
            row_inputs = tuple(n for n in needed if n in rows) if kind != "whole" else ()
            row_shapes = {n: (values[n].shape[1:], values[n].dtype) for n in wanted} if kind != "whole" else {}
            self.stages.append(_Stage(kind, [session_pool], needed, tuple(wanted), row_inputs, row_shapes))
        # the tensors each stage reads last
        seen = {self.output}
        for stage in reversed(self.stages):
            stage.frees = tuple(n for n in stage.inputs if n not in seen)
            seen.update(stage.inputs)
        self._check(model, inputs)

    def _check(self, model, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise BlockedFormUnavailable unless a blocked run of the probe inputs (blocks of a
        few rows, two parts) is the sequential form's output bit for bit."""
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(1),
                                       providers=["CPUExecutionProvider"])
        expected = session.run([self.output], dict(inputs))[0]
        try:
            got = self.run(inputs, _SerialParts(2), block_rows=CHECK_BLOCK_ROWS, min_part_rows=1)
        except Exception as error:  # onnxruntime raises its own exception types
            raise BlockedFormUnavailable(f"the blocked form could not run the probe inputs: {error}") from error
        if expected.shape != got.shape or not np.array_equal(expected, got, equal_nan=True):
            raise BlockedFormUnavailable("the blocked form's output on the probe inputs differs from the network's")

    def run(self, inputs: Mapping[str, np.ndarray], parallel=None, *, block_rows: int = BLOCK_ROWS,
            min_part_rows: int = MIN_PART_ROWS) -> np.ndarray:
        """The network's output on checked ``inputs``; stages of rows cut into parts for the
        threads of ``parallel`` (a :class:`~trackserve.runtime.parallel.PartRunner`; None:
        the calling thread alone), each part in calls of ``block_rows`` rows (a multiple of
        :data:`ROW_ALIGN`)."""
        if block_rows < ROW_ALIGN or block_rows % ROW_ALIGN:
            raise ValueError(f"block_rows must be a positive multiple of {ROW_ALIGN}; got {block_rows}")
        threads = 1 if parallel is None else parallel.threads
        values = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        counts = {"edges": values[self._edge_input].shape[1], "hits": values[self._hit_inputs[0]].shape[0]}
        for stage in self.stages:
            if stage.kind == "whole":
                values.update(zip(stage.outputs, stage.pools[0].run(list(stage.outputs),
                                                                    {n: values[n] for n in stage.inputs})))
            elif stage.kind == "scatter":
                groups = [stage.pools[start::threads] for start in range(min(threads, len(stage.pools)))]

                def scatter(group: list) -> list:
                    return [(outputs, session_pool.run(list(outputs), {n: values[n] for n in reads}))
                            for session_pool, reads, outputs in group]

                results = [scatter(groups[0])] if len(groups) == 1 else parallel.map(scatter, groups)
                for outputs, arrays in (pair for group in results for pair in group):
                    values.update(zip(outputs, arrays))
            else:
                values.update(self._rows(stage, values, counts[stage.kind], threads, parallel, block_rows,
                                         min_part_rows))
            for name in stage.frees:
                values.pop(name, None)
        return values[self.output]

    @staticmethod
    def _rows(stage: _Stage, values: dict, count: int, threads: int, parallel, block_rows: int,
              min_part_rows: int) -> dict[str, np.ndarray]:
        """A stage of rows: its outputs, preallocated, written block by block (ONNX Runtime
        writes each block's rows in place)."""
        outputs = {name: np.empty((count, *shape), dtype=dtype) for name, (shape, dtype) in stage.row_shapes.items()}
        whole = {n: values[n] for n in stage.inputs if n not in stage.row_inputs}
        session_pool = stage.pools[0]

        def run_part(part: slice) -> None:
            for begin in range(part.start, part.stop, block_rows):
                block = slice(begin, min(begin + block_rows, part.stop))
                feed = dict(whole)
                feed.update((n, values[n][block]) for n in stage.row_inputs)
                session_pool.run_into(feed, {n: array[block] for n, array in outputs.items()})

        parts = aligned_parts(count, threads, min_part_rows)
        if len(parts) > 1:
            parallel.map(run_part, parts)
        elif parts:
            run_part(parts[0])
        return outputs


def aligned_parts(count: int, parts: int, min_rows: int) -> list[slice]:
    """:func:`~trackserve.runtime.parallel.row_parts` of ``count`` rows whose every start is a
    multiple of :data:`ROW_ALIGN` (none for no rows)."""
    if count == 0:
        return []
    units = row_parts(-(-count // ROW_ALIGN), parts, max(1, min_rows // ROW_ALIGN))
    return [slice(unit.start * ROW_ALIGN, min(unit.stop * ROW_ALIGN, count)) for unit in units]


class _SerialParts:
    """A stand-in for a PartRunner with ``threads`` parts run one after the other (the check)."""

    def __init__(self, threads: int):
        self.threads = threads

    def map(self, function: Callable, parts) -> list:
        return [function(part) for part in parts]

