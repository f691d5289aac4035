"""Connected components of a hit graph given as an edge list, for small and large events.

scipy's ``connected_components`` works on a CSR matrix; building that matrix from an
edge list through a COO matrix (sort, sum duplicates, checks) costs more than the search
itself on the graphs of one small event. With at most :data:`RADIX_MAX_HITS` hits the
rows are grouped by a stable sort of 16-bit keys (numpy's radix sort, linear in the
edges) into a CSR matrix directly; larger graphs go through scipy's COO conversion,
which is linear too. Direction is ignored (weak components). :func:`compact_in_order`
numbers any labelling 0.. in order of each label's first hit.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_array, csr_array
from scipy.sparse.csgraph import connected_components

#: Up to this many hits, edges are grouped by hit with 16-bit keys (a linear radix sort).
RADIX_MAX_HITS = 1 << 16


def component_labels(num_hits: int, edge_index: np.ndarray) -> tuple[int, np.ndarray]:
    """``(count, labels)``: the weakly connected components of ``num_hits`` hits joined by the
    valid edges ``edge_index [2, M]`` (indices in ``[0, num_hits)``); ``labels`` int32 ``[N]``
    in ``0 .. count - 1``, numbered as scipy numbers them."""
    first, second = edge_index
    if num_hits <= RADIX_MAX_HITS:
        rows = np.argsort(first.astype(np.uint16), kind="stable")
        indptr = np.zeros(num_hits + 1, dtype=np.int32)
        np.cumsum(np.bincount(first, minlength=num_hits), out=indptr[1:])
        graph = csr_array((np.ones(first.size, dtype=np.float64), second[rows].astype(np.int32), indptr),
                          shape=(num_hits, num_hits))
    else:
        index = np.int32 if num_hits < 2**31 else np.int64
        graph = coo_array((np.ones(first.size, dtype=np.float64), (first.astype(index), second.astype(index))),
                          shape=(num_hits, num_hits))
    return connected_components(graph, directed=True, connection="weak")


def group_order(hits: np.ndarray, num_hits: int) -> np.ndarray:
    """The stable order that groups ``hits`` (indices in ``[0, num_hits)``) by hit: a radix
    sort of 16-bit keys up to :data:`RADIX_MAX_HITS` hits, numpy's stable sort above."""
    keys = hits.astype(np.uint16) if num_hits <= RADIX_MAX_HITS else hits
    return np.argsort(keys, kind="stable")


def compact_in_order(labels: np.ndarray) -> np.ndarray:
    """Renumber component labels 0.. in order of first appearance (smallest hit index)."""
    labels = labels.astype(np.int64, copy=False)
    if labels.size == 0:
        return labels
    running_max = np.maximum.accumulate(labels)
    if running_max[0] == 0 and np.all(np.diff(running_max) <= 1):
        # Each new label is one above every label before it: already in first-appearance order.
        return labels
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse]
