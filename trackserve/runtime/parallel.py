"""One network stage of one event on several cores: single-threaded calls on parts of the event.

ONNX Runtime's own intra-op pool splits only the matrix products of a network; its
element-wise operators, LayerNorms and gathers stay on one thread, and every operator
pays a hand-over between the threads. The runtime's networks are row-wise over hits
(the embedding) or over edges (the filter), and a message-passing GNN only mixes edges
of one connected component, so the same work splits cleanly into independent parts,
each run by a session of ONE thread, the parts at once on a small thread pool. Measured
on this project's 2-core machine with the default bundle (``benchmarks/RESULTS.md``):
the filter on 51,804 edges took 19 ms as two halves against 33 ms as one call at two
intra-op threads, and on the published benchmark events (1,321 hits) the embedding,
filter and GNN took 0.55 / 1.36 / 4.1 ms as parts against 0.76 / 1.82 / 6.3 ms.

* :func:`row_parts` cuts ``n`` rows into at most ``parts`` contiguous, near-equal slices
  of at least ``min_rows`` each (one slice when ``n`` is small);
* :func:`component_groups` groups the edges of a graph into at most ``parts`` sets of
  whole connected components with balanced edge counts (None when one component holds
  most of the edges, as in dense events);
* :class:`HaloSplit` cuts a graph held together by one component into azimuth slices of
  edges, each computed with the halo of neighbouring edges that exact message passing
  needs;
* :class:`PartRunner` runs a function on each part, the first in the calling thread and
  the others on its pool, and returns the results in order.

A part's result can differ from the same rows' result in a single call in the last
float32 bits (ONNX Runtime's kernels take other paths for other row counts), as results
at different thread counts already do; the runtime's parity rule (1e-4 of the output
scale) and the tests cover both.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

import numpy as np
from scipy.sparse import csr_array

from ..errors import InputError
from .components import component_labels

#: Fewest rows (hits or edges) worth a call of their own: below this a call's fixed cost
#: (about 300 operators of a few microseconds each for the GNN) outweighs the work.
MIN_PART_ROWS = 256
#: The GNN runs on component groups only when the largest group holds at most this share
#: of the work (edges plus touched hits); otherwise the groups would gain less than finding
#: them costs.
MAX_GROUP_SHARE = 0.8

#: A graph held together by one component is split into overlapping parts (with the halo
#: message passing needs) only from this many edges: below it the halos cost more than
#: the parts gain.
HALO_MIN_EDGES = 20_000

T = TypeVar("T")


def row_parts(num_rows: int, parts: int, min_rows: int = MIN_PART_ROWS) -> list[slice]:
    """Contiguous slices covering ``0 .. num_rows``: at most ``parts`` of them, near-equal,
    each at least ``min_rows`` long (a single slice when ``num_rows < 2 * min_rows``)."""
    if num_rows < 0 or parts < 1 or min_rows < 1:
        raise InputError(f"row_parts needs num_rows >= 0, parts >= 1, min_rows >= 1; got {num_rows}, {parts}, {min_rows}")
    count = max(1, min(parts, num_rows // min_rows))
    bounds = np.linspace(0, num_rows, count + 1).round().astype(np.int64)
    return [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(count)]


def symmetric_adjacency(num_hits: int, edge_index: np.ndarray) -> csr_array:
    """The hits' adjacency ``[N, N]`` (CSR, both directions, repeated edges summed): what
    :class:`HaloSplit` walks to find each part's halo."""
    first, second = edge_index
    return csr_array((np.ones(2 * first.size, dtype=np.float32),
                      (np.concatenate([first, second]), np.concatenate([second, first]))), shape=(num_hits, num_hits))


def component_groups(num_hits: int, edge_index: np.ndarray, parts: int, min_edges: int = MIN_PART_ROWS,
                     max_share: float = MAX_GROUP_SHARE) -> list[np.ndarray] | None:
    """The columns of ``edge_index [2, M]`` in at most ``parts`` groups of whole connected
    components, balanced by work; None when splitting does not pay.

    Each group is an ascending int64 array of edge positions; together they cover every
    edge once, and no component (direction ignored) spans two groups, so a message-passing
    network run on each group alone computes the function it computes on the whole graph
    (the float32 results differ where ONNX Runtime rounds a call's last rows its own way,
    and the difference grows through the message passing: up to 2.3e-4 in a default-bundle
    GNN logit of the published events, the same tracks). A
    group's work is its edges plus the hits they touch: the network runs its edge networks
    on the one and its node networks on the other, and a call's time grows with both alike
    (on the default bundle at 10k hits, two groups of 2,162 and 2,157 edges touching 801
    and 3,115 hits took 3.5 and 6.4 ms: 1.20 ms per thousand edges and hits each; the
    pruner 0.73 ms), so balancing the edges alone left one thread idle for a third of the
    step. None when
    ``parts < 2``, when there are fewer than ``2 * min_edges`` edges, or when the largest
    group would hold more than ``max_share`` of the work. Components are placed largest
    first, each on the lightest group so far, the small ones by running total.
    """
    num_edges = edge_index.shape[1]
    if parts < 2 or num_edges < 2 * min_edges:
        return None
    count, hit_component = component_labels(num_hits, edge_index)
    edge_component = hit_component[edge_index[0]]
    edges_of = np.bincount(edge_component, minlength=count)
    touched = np.zeros(num_hits, dtype=bool)
    touched[edge_index.ravel()] = True
    sizes = edges_of + np.bincount(hit_component[touched], minlength=count)
    order = np.argsort(-sizes, kind="stable")
    order = order[edges_of[order] > 0]
    group_of = np.zeros(count, dtype=np.int64)
    loads = np.zeros(parts, dtype=np.int64)
    # The large components one by one onto the lightest group ...
    large = order[: 4 * parts]
    for component in large:
        lightest = int(np.argmin(loads))
        group_of[component] = lightest
        loads[lightest] += sizes[component]
    # ... then the small ones, in order, filling each group up to an equal share.
    small = order[4 * parts:]
    if small.size:
        running = np.cumsum(sizes[small])
        share = (loads.sum() + running[-1]) / parts
        room = np.cumsum(np.maximum(share - loads, 0.0))
        group_of[small] = np.minimum(np.searchsorted(room, running - 0.5 * sizes[small]), parts - 1)
        loads += np.bincount(group_of[small], weights=sizes[small], minlength=parts).astype(np.int64)
    if loads.max() > max_share * loads.sum():
        return None
    edge_group = group_of[edge_component]
    groups = [np.flatnonzero(edge_group == group) for group in range(parts)]
    return [group for group in groups if group.size]


class HaloSplit:
    """A graph held together by one large component, in ``parts`` owned sets of edges, each
    with the surrounding edges that exact ``hops``-hop message passing needs.

    An edge belongs to the part whose range of ``hit_key`` (quantiles over the edges, so
    equal edge counts; the runtime uses the hits' azimuth, which keeps tracks together)
    holds its first hit. A message-passing network's score of an edge depends only on the
    graph within a few hops of its two hits (:func:`~trackserve.runtime.subgraph.halo_hops`),
    so :meth:`part` gives every edge both of whose hits lie within ``hops`` hops of
    the part's own edges' hits: each hit near the part's own edges then sees all of its
    edges, in the same order, and the own edges' scores are the whole graph's. Building
    the split is cheap (``adjacency``: :func:`symmetric_adjacency`, when the caller has it);
    each part's search (``hops`` sparse products) runs in
    :meth:`part`, on the thread that computes the part.
    """

    def __init__(self, num_hits: int, edge_index: np.ndarray, parts: int, hops: int, hit_key: np.ndarray, *,
                 adjacency: csr_array | None = None):
        if parts < 1 or hops < 0:
            raise InputError(f"HaloSplit needs parts >= 1 and hops >= 0; got {parts}, {hops}")
        self.edge_index = edge_index
        self.hops = hops
        first, second = edge_index
        key = np.asarray(hit_key)[first]
        bounds = np.quantile(key, np.linspace(0.0, 1.0, parts + 1)[1:-1]) if key.size else np.zeros(0)
        self.owner = np.searchsorted(bounds, key, side="right")
        self.parts = [part for part in range(parts) if np.any(self.owner == part)]
        self.adjacency = symmetric_adjacency(num_hits, edge_index) if adjacency is None else adjacency

    def part(self, part: int) -> tuple[np.ndarray, np.ndarray]:
        """``(columns, own)``: the ascending edge positions part ``part`` computes, and which
        of them it owns (over all parts the owned edges cover every edge once)."""
        first, second = self.edge_index
        owned = self.owner == part
        reached = np.zeros(self.adjacency.shape[0], dtype=np.float32)
        reached[first[owned]] = 1.0
        reached[second[owned]] = 1.0
        for _ in range(self.hops):
            reached = np.minimum(reached + self.adjacency @ reached, 1.0)
        columns = np.flatnonzero((reached[first] > 0) & (reached[second] > 0))
        return columns, owned[columns]


class PartRunner:
    """Runs a function on the parts of one event at once: ``threads`` parts at a time,
    for ``workers`` events in flight (so at most ``workers * threads`` threads work)."""

    def __init__(self, threads: int, workers: int = 1):
        if threads < 1 or workers < 1:
            raise InputError(f"PartRunner needs threads >= 1 and workers >= 1; got {threads}, {workers}")
        self.threads = threads
        extra = workers * (threads - 1)
        self._pool = ThreadPoolExecutor(max_workers=extra, thread_name_prefix="trackserve-part") if extra else None

    def map(self, function: Callable[[object], T], parts: Sequence) -> list[T]:
        """``[function(part) for part in parts]``, the parts after the first on the pool."""
        if len(parts) > self.threads:
            raise InputError(f"{len(parts)} parts for {self.threads} threads: cut the work into at most {self.threads}")
        if len(parts) < 2 or self._pool is None:
            return [function(part) for part in parts]
        futures = [self._pool.submit(function, part) for part in parts[1:]]
        try:
            first = function(parts[0])
        except BaseException:
            wait(futures)  # no part may still run when the caller sees the error
            raise
        return [first, *(future.result() for future in futures)]

    def close(self) -> None:
        """Stop the pool's threads (idle ones cost nothing; this is for tidy shutdowns)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
