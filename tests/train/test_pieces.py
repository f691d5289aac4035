"""The pieces of training against brute-force references: pairs, k-d tree graph, cuts, sectors, figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from trackserve.runtime.graph_building import build_graph
from trackserve.train.classifier import cut_for_efficiency, passing
from trackserve.train.embedding import radius_for_efficiency
from trackserve.train.gnn import SectorIndex, sector_loss_mask, sector_subgraph
from trackserve.train.pairs import (knn_graph, loss_mask, neighbour_pairs, pair_labels, random_pairs, signal_labels,
                                    true_pairs)


def test_true_pairs_keep_every_edge_touching_an_anchor():
    edges = np.array([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    got = true_pairs(edges, np.array([2, 2]), 6)  # repeated anchor
    assert got.tolist() == [[1, 2], [2, 3]]
    assert true_pairs(edges, np.array([], dtype=np.int64), 6).shape == (2, 0)


def test_random_pairs_have_no_self_pairs_and_valid_partners():
    rng = np.random.default_rng(1)
    pairs = random_pairs(np.arange(5), 6, 50, rng)
    assert pairs.shape[0] == 2 and pairs.shape[1] > 200
    assert np.all(pairs[0] != pairs[1]) and pairs.min() >= 0 and pairs.max() < 6
    assert random_pairs(np.arange(5), 1, 3, rng).shape == (2, 0)


def test_pair_labels_same_particle_never_noise():
    pids = np.array([7, 7, 0, 0, 3])
    pairs = np.array([[0, 2, 0, 4], [1, 3, 4, 4]])
    assert pair_labels(pairs, pids).tolist() == [True, False, False, True]


def test_signal_labels_keep_only_the_edges_of_particles_above_the_pt():
    pids = np.array([7, 7, 0, 0, 3, 3, 5])
    pt = np.array([0.4, 0.4, 0.0, 0.0, 2.0, 2.0, 0.7])
    pairs = np.array([[0, 2, 4, 4, 6], [1, 3, 5, 6, 6]])
    assert signal_labels(pairs, pids, pt, 0.0).tolist() == [True, False, True, False, True]
    assert signal_labels(pairs, pids, pt, 0.7).tolist() == [False, False, True, False, True]
    assert signal_labels(pairs, pids, pt, 1.0).tolist() == [False, False, True, False, False]


def test_loss_mask_leaves_out_only_the_edges_of_soft_particles():
    pids = np.array([7, 7, 0, 0, 3, 3, 5, 5])
    pt = np.array([0.4, 0.4, 0.0, 0.0, 2.0, 2.0, 0.7, 0.7])
    # soft particle 7, noise pair, hard particle 3, hard-to-soft (wrong) edge, soft 5 twice (repeated edge)
    pairs = np.array([[0, 2, 4, 4, 6, 6], [1, 3, 5, 6, 7, 7]])
    assert loss_mask(pairs, pids, pt, 1.0, ignore_soft=False) is None
    assert loss_mask(pairs, pids, pt, 0.0, ignore_soft=True) is None
    assert loss_mask(pairs, pids, pt, 0.5, ignore_soft=True).tolist() == [False, True, True, True, True, True]
    assert loss_mask(pairs, pids, pt, 1.0, ignore_soft=True).tolist() == [False, True, True, True, False, False]
    # what is counted keeps its label: wrong edges stay wrong, hard edges stay true
    counted = loss_mask(pairs, pids, pt, 1.0, ignore_soft=True)
    assert signal_labels(pairs, pids, pt, 1.0)[counted].tolist() == [False, True, False]


def test_neighbour_pairs_match_brute_force():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(300, 3)).astype(np.float32)
    anchors = np.array([0, 5, 5, 17])
    got = neighbour_pairs(cKDTree(points), points, anchors, k=4, radius=0.8)
    for a in np.unique(anchors):
        d = np.linalg.norm(points - points[a], axis=1)
        d[a] = np.inf
        nearest = np.argsort(d)[:4]
        expected = set(nearest[d[nearest] < 0.8].tolist())
        assert set(got[1][got[0] == a].tolist()) == expected


@pytest.mark.parametrize("k", [1, 3, 50])
def test_knn_graph_equals_runtime_graph_without_ties(k):
    rng = np.random.default_rng(3)
    points = rng.normal(size=(2000, 4)).astype(np.float32)
    got = knn_graph(points, 0.6, k)
    expected = build_graph(points, 0.6, k, direction="i<j", threads=1)
    assert np.array_equal(got, expected)


def test_knn_graph_tiny_inputs():
    assert knn_graph(np.zeros((0, 3), np.float32), 1.0, 4).shape == (2, 0)
    assert knn_graph(np.zeros((1, 3), np.float32), 1.0, 4).shape == (2, 0)
    assert knn_graph(np.zeros((2, 3), np.float32) + [[0, 0, 0], [0, 0, 0.5]], 1.0, 4).tolist() == [[0], [1]]


def test_radius_for_efficiency_keeps_the_fraction_strictly():
    embedding = np.zeros((11, 1), np.float32)
    embedding[1:, 0] = np.arange(1, 11)  # edge 0-i has length i
    edges = np.stack([np.zeros(10, int), np.arange(1, 11)])
    radius = radius_for_efficiency(embedding, edges, 0.9)
    lengths = np.arange(1, 11)
    assert np.count_nonzero(lengths < radius) == 9 and radius < 10


def test_cut_for_efficiency_keeps_at_least_the_target():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=5000).astype(np.float32)
    labels = rng.random(5000) < 0.4
    logits[labels] += 2
    for target in (0.5, 0.9, 0.995, 1.0):
        cut = cut_for_efficiency(logits, labels, target)
        kept = passing(logits, cut)
        assert np.count_nonzero(kept & labels) >= target * np.count_nonzero(labels)
        assert 0.0 <= cut <= 1.0
    assert cut_for_efficiency(logits, np.zeros(5000, bool), 0.9) == 0.5


def test_sector_subgraph_wraps_around_pi_and_renumbers():
    phi = np.array([3.1, -3.1, 0.0, 3.0, -2.9])
    edges = np.array([[0, 0, 2, 3], [1, 2, 3, 4]])
    hits, local, rows = sector_subgraph(phi, edges, centre=np.pi, half_width=0.3)
    assert hits.tolist() == [0, 1, 3, 4]
    assert rows.tolist() == [0, 3]
    assert hits[local].tolist() == edges[:, rows].tolist()


def _sector_event(num_hits, num_edges, seed):
    rng = np.random.default_rng(seed)
    phi = rng.uniform(-np.pi, np.pi, num_hits)
    phi[:6] = [np.pi, -np.pi, np.nextafter(np.pi, 0), np.nextafter(-np.pi, 0), 0.0, 0.5]
    phi[6:12] = phi[:6]  # hits on one azimuth
    near = np.clip(np.arange(num_edges) % num_hits + rng.integers(-20, 21, num_edges), 0, num_hits - 1)
    edges = np.stack([rng.integers(0, num_hits, num_edges), near])
    edges[:, :30] = edges[:, 30:60]  # repeated edges
    order = np.argsort(phi, kind="stable")
    return phi, order[edges]  # most edges join hits close in azimuth, as in a filtered graph


@pytest.mark.parametrize("num_hits, num_edges", [(1, 0), (40, 0), (3000, 20000)])
def test_the_sector_index_cuts_exactly_the_sectors_of_sector_subgraph(num_hits, num_edges):
    """Same hits, same renumbered edges, same edge rows in the same order, for sectors
    anywhere (across the wrap at ±pi, centred on a hit, on the border of others) and of
    any width, also wider than the detector."""
    if num_hits == 1:
        phi, edges = np.array([0.25]), np.zeros((2, 0), dtype=np.int64)
    else:
        phi, edges = _sector_event(num_hits, num_edges, seed=num_hits)
    index = SectorIndex(phi, edges)
    centres = list(np.random.default_rng(7).uniform(-np.pi, np.pi, 25)) + [np.pi, -np.pi, 0.0, 0.5, phi[0]]
    for half_width in (np.pi / 64, 0.5 - 0.25, np.pi / 2, np.pi, 4.0):
        for centre in centres + [0.5 + half_width, 0.5 - half_width]:
            expected, got = sector_subgraph(phi, edges, centre, half_width), index.subgraph(centre, half_width)
            for a, b in zip(expected, got):
                assert a.dtype == b.dtype and np.array_equal(a, b), (centre, half_width)


def test_a_halo_sector_puts_only_the_sectors_own_edges_in_the_loss():
    """Against the bare sector: the loss edges of a sub-graph with a halo are exactly the
    edges of the bare sector (same edges of the event), further limited by ``counted``."""
    phi, edges = _sector_event(3000, 20000, seed=4)
    index = SectorIndex(phi, edges)
    counted = np.random.default_rng(2).random(edges.shape[1]) < 0.7
    half = np.pi / 64
    for centre in (0.3, np.pi - 0.01, -np.pi, 2.0):
        bare_rows = index.subgraph(centre, half)[2]
        for reach in (half * 2, half * 3, np.pi + 1.0):
            hits, local, rows = index.subgraph(centre, reach)
            assert rows.size > bare_rows.size
            mask = sector_loss_mask(phi[hits], local, centre, half, reach, None)
            assert np.array_equal(np.sort(rows[mask]), np.sort(bare_rows))
            both = sector_loss_mask(phi[hits], local, centre, half, reach, counted[rows])
            assert np.array_equal(np.sort(rows[both]), np.sort(bare_rows[counted[bare_rows]]))
    # no halo: the mask is what was counted, untouched
    hits, local, rows = index.subgraph(0.3, half)
    assert sector_loss_mask(phi[hits], local, 0.3, half, half, None) is None
    given = counted[rows]
    assert sector_loss_mask(phi[hits], local, 0.3, half, half, given) is given
