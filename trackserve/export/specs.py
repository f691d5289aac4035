"""Export specs: for each network kind, what its ONNX file looks like and how it is validated.

One small declarative :class:`ExportSpec` per kind (after Optimum's exporter): the
interface (input and output names, dtypes, dims, shared with the bundle through
:data:`trackserve.bundle.NETWORK_INTERFACES`), the dynamic axes derived from it, the
shape the export traces at, the shapes it is validated at (all different from the
traced one) and the tolerance. :meth:`ExportSpec.make_inputs` generates the dummy
inputs for any of those shapes. Only numpy is needed here.

Validation shapes include the degenerate ones (no hit, one hit, one edge) and, for edge
classifiers, a graph of 50,000 edges whose endpoints follow a power law, so that some
hits are the destination of thousands of edges: an aggregation that overwrites instead
of adding, or that loses updates between threads, shows up there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bundle import DYNAMIC_DIMS, NETWORK_INTERFACES, NetworkInterface, TensorInfo

#: Relative tolerance of the parity check: ``max|onnx - torch| <= TOLERANCE * max(1, max|torch|)``.
TOLERANCE = 1e-4

#: Pipeline roles accepted as kinds, and the export kind each one uses.
KIND_ALIASES: dict[str, str] = {
    "embedding": "embedding",
    "edge_classifier": "edge_classifier",
    "filter": "edge_classifier",
    "gnn": "edge_classifier",
}


@dataclass(frozen=True)
class ShapeCase:
    """One set of input sizes: ``num_hits`` hits and ``num_edges`` edges.

    ``power_law``: draw edge endpoints from a power law over the hits (a few hubs are
    the endpoints of a large share of the edges); otherwise endpoints are uniform.
    """

    name: str
    num_hits: int
    num_edges: int = 0
    power_law: bool = False

    def describe(self, with_edges: bool = True) -> str:
        """The case name with its sizes (the edge count only ``with_edges``), for reports."""
        sizes = f"{self.num_hits} hit{'' if self.num_hits == 1 else 's'}"
        if with_edges:
            sizes += f", {self.num_edges} edge{'' if self.num_edges == 1 else 's'}"
        return f"{self.name} ({sizes})"


def power_law_edges(num_hits: int, num_edges: int, rng: np.random.Generator, exponent: float = 1.1) -> np.ndarray:
    """``edge_index[2, num_edges]`` (int64) whose endpoints follow a power law over the hits.

    Hit of rank ``k`` (in a random order) is chosen with probability proportional to
    ``(k + 1) ** -exponent``, independently for sources and destinations; with 5,000 hits
    and 50,000 edges the busiest hit is the destination of several thousand edges.
    """
    if num_hits < 1:
        if num_edges:
            raise ValueError(f"cannot draw {num_edges} edges over {num_hits} hits")
        return np.zeros((2, 0), dtype=np.int64)
    weights = (np.arange(num_hits, dtype=np.float64) + 1.0) ** -exponent
    weights /= weights.sum()
    ends = []
    for _ in range(2):
        order = rng.permutation(num_hits)
        ends.append(order[rng.choice(num_hits, size=num_edges, p=weights)])
    return np.stack(ends).astype(np.int64)


def uniform_edges(num_hits: int, num_edges: int, rng: np.random.Generator) -> np.ndarray:
    """``edge_index[2, num_edges]`` (int64) with endpoints drawn uniformly over the hits."""
    if num_hits < 1:
        if num_edges:
            raise ValueError(f"cannot draw {num_edges} edges over {num_hits} hits")
        return np.zeros((2, 0), dtype=np.int64)
    return rng.integers(0, num_hits, size=(2, num_edges), dtype=np.int64)


@dataclass(frozen=True)
class ExportSpec:
    """How networks of one kind are exported and validated.

    ``trace``: the sizes the export traces at; ``cases``: the sizes validation runs at
    (none equal to ``trace``); ``tolerance``: see :data:`TOLERANCE`.
    """

    interface: NetworkInterface
    trace: ShapeCase
    cases: tuple[ShapeCase, ...]
    tolerance: float = TOLERANCE

    @property
    def kind(self) -> str:
        """The network kind (``embedding`` or ``edge_classifier``)."""
        return self.interface.kind

    @property
    def input_names(self) -> list[str]:
        """Input names, in the order ``forward`` takes them."""
        return [t.name for t in self.interface.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names, in the order ``forward`` returns them."""
        return [t.name for t in self.interface.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor name: {axis: dim name}}`` of every dynamic dim, as ``torch.onnx.export`` takes it."""
        axes: dict[str, dict[int, str]] = {}
        for tensor in self.interface.inputs + self.interface.outputs:
            named = {axis: dim for axis, dim in enumerate(tensor.dims) if dim in DYNAMIC_DIMS}
            if named:
                axes[tensor.name] = named
        return axes

    def resolve(self, num_features: int, outputs: dict[str, tuple[int, ...]] | None = None) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        """Inputs and outputs with their fixed dims filled in.

        ``outputs``: the shape of each output computed once by the network, which gives
        the fixed output dims (the embedding dimension).
        """
        sizes = {"num_features": num_features}
        for tensor in self.interface.outputs:
            shape = (outputs or {}).get(tensor.name)
            for dim, size in zip(tensor.dims, shape or ()):
                if isinstance(dim, str) and dim not in DYNAMIC_DIMS:
                    sizes[dim] = int(size)
        return self.interface.resolve(sizes)

    def make_inputs(self, case: ShapeCase, num_features: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the sizes of ``case``: features uniform in [-1, 1], edges as the case says."""
        rng = np.random.default_rng(seed)
        inputs = {"features": rng.uniform(-1.0, 1.0, size=(case.num_hits, num_features)).astype(np.float32)}
        if "edge_index" in self.input_names:
            make_edges = power_law_edges if case.power_law else uniform_edges
            inputs["edge_index"] = make_edges(case.num_hits, case.num_edges, rng)
        return inputs


#: The export spec of each kind.
SPECS: dict[str, ExportSpec] = {
    "embedding": ExportSpec(
        NETWORK_INTERFACES["embedding"],
        trace=ShapeCase("trace", num_hits=17),
        cases=(
            ShapeCase("no hits", 0),
            ShapeCase("one hit", 1),
            ShapeCase("a few hits", 5),
            ShapeCase("many hits", 4096),
        ),
    ),
    "edge_classifier": ExportSpec(
        NETWORK_INTERFACES["edge_classifier"],
        trace=ShapeCase("trace", num_hits=23, num_edges=61),
        cases=(
            ShapeCase("one hit, no edges", 1, 0),
            ShapeCase("one edge", 2, 1),
            ShapeCase("a few hits", 6, 15),
            ShapeCase("power-law destinations", 5000, 50000, power_law=True),
        ),
    ),
}


def get_spec(kind: str) -> ExportSpec:
    """The export spec of ``kind`` (``embedding``, ``edge_classifier``, or the roles ``filter``, ``gnn``)."""
    try:
        return SPECS[KIND_ALIASES[kind]]
    except KeyError:
        raise ValueError(f"unknown network kind {kind!r}: expected one of {', '.join(KIND_ALIASES)}") from None
