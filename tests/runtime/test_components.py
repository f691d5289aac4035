"""Connected components from an edge list (``runtime/components.py``) against scipy's COO route."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from trackserve.runtime.components import RADIX_MAX_HITS, component_labels, group_order


def _same_partition(a, b):
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("num_hits, num_edges", [(1, 0), (5, 0), (50, 40), (3000, 2500), (RADIX_MAX_HITS, 40_000),
                                                 (RADIX_MAX_HITS + 1, 40_000), (200_000, 150_000)])
def test_labels_match_scipy_with_repeats_self_loops_and_high_indices(num_hits, num_edges):
    rng = np.random.default_rng(num_hits + num_edges)
    edges = rng.integers(0, num_hits, (2, num_edges))
    if num_edges:
        edges[:, : num_edges // 10] = edges[:, num_edges // 10: 2 * (num_edges // 10)]  # repeated edges
        edges[1, -5:] = edges[0, -5:]  # self-loops
        edges[0, :3] = num_hits - 1  # the highest index, where a 16-bit key would wrap
    count, labels = component_labels(num_hits, edges)
    graph = coo_array((np.ones(num_edges), (edges[0], edges[1])), shape=(num_hits, num_hits))
    expected_count, expected = connected_components(graph, directed=False)
    assert count == expected_count and labels.shape == (num_hits,)
    assert _same_partition(labels, expected)


@pytest.mark.parametrize("num_hits", [10, RADIX_MAX_HITS, RADIX_MAX_HITS + 7])
def test_group_order_is_a_stable_grouping(num_hits):
    rng = np.random.default_rng(num_hits)
    hits = rng.integers(0, num_hits, 5000)
    hits[:10] = num_hits - 1
    order = group_order(hits, num_hits)
    np.testing.assert_array_equal(order, np.argsort(hits, kind="stable"))
