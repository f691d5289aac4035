"""Settings of the runtime: thread pools, edge chunking and the memory limit.

Every pool the runtime uses is sized here, explicitly. The stages run one after the
other, so each pool may use all the cores given to the pipeline without
oversubscription: ONNX Runtime's intra-op pool while a network runs, the graph
builder's threads while the graph is built, never both at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError

#: Edges per filter call: about 100 MB of float32 activations for a 64-wide filter.
DEFAULT_EDGE_CHUNK_SIZE = 400_000
#: Memory an event may need, by the runtime's estimate, before it is refused.
DEFAULT_MEMORY_LIMIT_BYTES = 8 * 2**30


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the pipeline uses the machine.

    ``intra_op_threads``: ONNX Runtime intra-op pool of each network (default: all cores).
    ``graph_threads``: threads of the graph builder (default: all cores).
    ``edge_chunk_size``: edges per filter call; the filter scores each edge from its two
    hits only, so chunking changes nothing but the peak memory. The GNN passes messages
    over the whole graph and always runs on all the filtered edges at once.
    ``memory_limit_bytes``: an event whose estimated working memory exceeds this is
    refused with an :class:`~trackserve.errors.InputError` before the stage that would
    need it.
    """

    intra_op_threads: int | None = None
    graph_threads: int | None = None
    edge_chunk_size: int = DEFAULT_EDGE_CHUNK_SIZE
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES

    def __post_init__(self):
        for name in ("intra_op_threads", "graph_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be an integer >= 1 or None (all cores); got {value!r}")
        if isinstance(self.edge_chunk_size, bool) or not isinstance(self.edge_chunk_size, int) or self.edge_chunk_size < 1:
            raise InputError(f"edge_chunk_size must be an integer >= 1; got {self.edge_chunk_size!r}")
        if (
            isinstance(self.memory_limit_bytes, bool)
            or not isinstance(self.memory_limit_bytes, int)
            or self.memory_limit_bytes < 1
        ):
            raise InputError(f"memory_limit_bytes must be a positive integer; got {self.memory_limit_bytes!r}")

    @property
    def resolved_intra_op_threads(self) -> int:
        """The ONNX Runtime pool size this config gives."""
        return self.intra_op_threads or available_cores()

    @property
    def resolved_graph_threads(self) -> int:
        """The graph builder's thread count this config gives."""
        return self.graph_threads or available_cores()
