"""A coarse model of the runtime's working memory, to refuse events that would not fit.

The estimate is deliberately simple and on the safe side: float32 activations of the
widest layer of each network, a few live at once, per hit and per edge; graph building's
search from the neighbour count of a sample of the hits
(:func:`~trackserve.runtime.graph_building.graph_memory_estimate`). It is checked
before the stage that would need the memory, so an oversized event is refused with a
clear :class:`~trackserve.errors.MemoryLimitError` (an
:class:`~trackserve.errors.InputError`) instead of exhausting the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MemoryLimitError

_FLOAT = 4
_INDEX = 8
# Live activation arrays of the widest layer at any time (input, output, workspace).
_LIVE_ACTIVATIONS = 3
# Bytes per edge row of the passes while vertex shifts merge them (the rows, their pass,
# intercept, rank, sort key and order, and the passes' own edges and logits still held).
_MERGE_ROW = 160
# Hidden width assumed for a network whose config names none.
_DEFAULT_WIDTH = 128


def _widest(config: dict) -> int:
    widths = [int(v) for k, v in config.items() if "hidden" in k and isinstance(v, int) and not isinstance(v, bool)]
    return max(widths, default=_DEFAULT_WIDTH)


#: What to do about a refused event, for a caller of the runtime.
LOCAL_ADVICE = "raise the limit (RuntimeConfig.memory_limit_bytes, --memory-limit-gb) or split the event"
#: The same for a client of a served model, which cannot change the model's settings.
SERVED_ADVICE = ("split the event, or have the model repository written with a higher limit (trackserve triton-repo "
                 "--memory-limit-gb)")


def memory_limit_error(what: str, needed: float, limit: int) -> MemoryLimitError:
    """The error refusing ``what`` (an event, a graph, a GNN step), which needs about ``needed``
    bytes of working memory, more than ``limit``."""
    return MemoryLimitError(memory_refusal(what, needed, limit, LOCAL_ADVICE), needed=needed, limit=limit, subject=what)


def memory_refusal(what: str | None, needed: float, limit: int, advice: str) -> str:
    """The message refusing ``what`` for its ``needed`` bytes of working memory against ``limit``,
    with ``advice`` (:data:`LOCAL_ADVICE`, :data:`SERVED_ADVICE`)."""
    return (f"{what or 'the event'} needs about {_gib(needed)} of working memory, more than the memory limit of "
            f"{_gib(limit)}; {advice}")


def _gib(num_bytes: float) -> str:
    """``num_bytes`` in GiB, or in MiB / KiB where GiB would round to zero."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= 0.1 * size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{num_bytes:,.0f} bytes"


@dataclass(frozen=True)
class MemoryModel:
    """Bytes per hit and per edge for each stage of one bundle."""

    bytes_per_hit: int
    bytes_per_graph_edge: int
    bytes_per_filter_edge: int
    bytes_per_gnn_edge: int
    bytes_per_gnn_hit: int

    @classmethod
    def for_bundle(cls, bundle) -> "MemoryModel":
        """The model of a loaded bundle, from its feature count and its networks' hidden widths."""
        features = bundle.num_features
        embedding = _widest(bundle.networks["embedding"].config)
        filter_width = _widest(bundle.networks["filter"].config)
        # The pruner (when the bundle has one) runs on all the filtered edges, the GNN on fewer.
        gnn = max(_widest(bundle.networks[name].config) for name in ("pruner", "gnn") if name in bundle.networks)
        return cls(
            bytes_per_hit=_FLOAT * (2 * features + _LIVE_ACTIVATIONS * embedding) + _INDEX,
            # edge_index (int64 pair), candidate distances and the kept mask while building.
            bytes_per_graph_edge=2 * _INDEX + _FLOAT + _INDEX,
            bytes_per_filter_edge=_FLOAT * _LIVE_ACTIVATIONS * filter_width + 2 * _INDEX,
            bytes_per_gnn_edge=_FLOAT * _LIVE_ACTIVATIONS * 3 * gnn + 2 * _INDEX,
            bytes_per_gnn_hit=_FLOAT * _LIVE_ACTIVATIONS * 3 * gnn,
        )

    def _refuse(self, what: str, needed: float, limit: int) -> None:
        raise memory_limit_error(what, needed, limit)

    def check_hits(self, num_hits: int, limit: int) -> None:
        """Refuse an event whose hits alone exceed ``limit`` bytes."""
        needed = num_hits * self.bytes_per_hit
        if needed > limit:
            self._refuse(f"an event of {num_hits:,} hits", needed, limit)

    def hits_bytes(self, num_hits: int) -> int:
        """Bytes an event's hits hold through every stage (graph building's ``memory_held``)."""
        return int(num_hits * self.bytes_per_hit)

    def check_edges(self, num_hits: int, num_edges: int, limit: int, chunk: int) -> None:
        """Refuse a graph whose edges plus one filter chunk exceed ``limit`` bytes."""
        needed = num_hits * self.bytes_per_hit + num_edges * self.bytes_per_graph_edge
        needed += min(num_edges, chunk) * self.bytes_per_filter_edge
        if needed > limit:
            self._refuse(f"the graph of {num_hits:,} hits and {num_edges:,} edges", needed, limit)

    def check_gnn_edges(self, num_hits: int, num_edges: int, limit: int) -> None:
        """Refuse a filtered graph whose GNN activations exceed ``limit`` bytes."""
        needed = num_hits * (self.bytes_per_hit + self.bytes_per_gnn_hit) + num_edges * self.bytes_per_gnn_edge
        if needed > limit:
            self._refuse(f"the GNN on {num_hits:,} hits and {num_edges:,} filtered edges", needed, limit)

    def check_merged_edges(self, num_hits: int, num_rows: int, limit: int) -> None:
        """Refuse merging ``num_rows`` filtered edges of the vertex-shift passes (all passes'
        rows together) whose working memory exceeds ``limit`` bytes."""
        needed = num_hits * self.bytes_per_hit + num_rows * _MERGE_ROW
        if needed > limit:
            self._refuse(f"merging the vertex-shift passes' {num_rows:,} filtered edges of {num_hits:,} hits", needed, limit)
