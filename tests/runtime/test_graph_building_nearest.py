"""The nearest-neighbour path of build_graph (taken when the cap binds) against the same brute force."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trackserve.runtime import graph_building
from trackserve.runtime.graph_building import build_graph

from .test_graph_building import brute_force, clustered


@pytest.fixture
def nearest_path(monkeypatch):
    """Force the nearest-neighbour path whatever the data, and count how often it ran."""
    calls = {"nearest": 0, "full": 0}
    nearest, full = graph_building._nearest_capped_pairs, graph_building._nearest_by_full_search

    def count_nearest(*args):
        calls["nearest"] += 1
        return nearest(*args)

    def count_full(*args):
        calls["full"] += 1
        return full(*args)

    monkeypatch.setattr(graph_building, "_cap_binds", lambda *args: True)
    monkeypatch.setattr(graph_building, "_nearest_capped_pairs", count_nearest)
    monkeypatch.setattr(graph_building, "_nearest_by_full_search", count_full)
    return calls


@pytest.mark.parametrize("dims", [3, 8, 12])
@pytest.mark.parametrize("cap", [1, 3, 8, 40])
def test_clustered_points_match_brute_force(nearest_path, dims, cap):
    rng = np.random.default_rng(100 * dims + cap)
    points = clustered(rng, 400, dims, 0.05, 30)
    for direction in ("i<j", "i>j", "both"):
        np.testing.assert_array_equal(build_graph(points, 0.25, cap, direction=direction, threads=2),
                                      brute_force(points, 0.25, cap, direction))
    assert nearest_path["nearest"] == 3


def test_duplicates_and_lattice_ties_take_the_full_search_and_stay_exact(nearest_path):
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    points = np.concatenate([grid, grid[:20], np.zeros((15, 3))]).astype(np.float32) * np.float32(0.1)
    for cap in (1, 2, 6):
        np.testing.assert_array_equal(build_graph(points, 0.25, cap), brute_force(points, 0.25, cap))
    assert nearest_path["full"] >= 1, "equal distances at the end of the list must trigger the full search"


@pytest.mark.parametrize("scale,cap", [(1e-24, 1), (1e-22, 3), (1e-20, 2)])
def test_distances_whose_float32_squares_underflow_stay_exact(nearest_path, scale, cap):
    # The rule's float32 squares underflow (to zero at 1e-24: every pair ties and the lower
    # index wins); the float64 query's order then proves nothing, so those hits are searched in full.
    points = (np.random.default_rng(0).random((300, 3)) * scale).astype(np.float32)
    for direction in ("i<j", "both"):
        np.testing.assert_array_equal(build_graph(points, 1e-18, cap, direction=direction),
                                      brute_force(points, 1e-18, cap, direction))
    assert nearest_path["full"] >= 1


def test_huge_coordinates_give_no_overflow_warning(nearest_path):
    points = (np.random.default_rng(5).random((300, 4)) * 1.5e19).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pair beyond float32's range is simply not within the radius
        graph = build_graph(points, 1e19, 2)
    with np.errstate(over="ignore"):  # the brute force's own sums overflow the same way
        expected = brute_force(points, 1e19, 2)
    np.testing.assert_array_equal(graph, expected)


def test_one_point_and_points_on_the_radius(nearest_path):
    assert build_graph(np.zeros((1, 4), np.float32), 1.0, 3).shape == (2, 0)
    r = np.float32(0.75)
    points = np.zeros((3, 4), dtype=np.float32)
    points[1, 0] = r
    points[2, 0] = -np.nextafter(r, np.float32(0))
    np.testing.assert_array_equal(build_graph(points, float(r), 10), [[0], [2]])


@pytest.mark.parametrize("estimate", ["brute force", "k-d tree"])
def test_the_path_is_chosen_when_the_cap_binds(estimate, monkeypatch):
    if estimate == "k-d tree":  # the estimate of large events, forced on this one
        monkeypatch.setattr(graph_building, "_KNN_BRUTE_MAX_HITS", 0)
    rng = np.random.default_rng(5)
    points = rng.normal(size=(5000, 4)).astype(np.float32)
    assert graph_building._cap_binds(points, np.float32(2.0), 8)
    assert not graph_building._cap_binds(points, np.float32(0.2), 8)
    assert not graph_building._cap_binds(points[:200], np.float32(2.0), 8)  # small events: the pair search
    # both paths give the same graph where the cap binds
    assert graph_building._cap_binds(points, np.float32(1.0), 8)
    fast = build_graph(points, 1.0, 8, threads=2)
    pairs = graph_building._pairs_within_radius(points, np.float32(1.0), 2)
    small, large = graph_building._apply_cap(5000, *pairs, 8)
    np.testing.assert_array_equal(fast, graph_building._oriented_sorted(5000, small, large, "i<j"))


def test_row_slabs_on_threads_give_the_same_graph(nearest_path, monkeypatch):
    # Slabs of at least 50 hits: 1, 2 and 3 slabs on as many threads, with duplicates and
    # lattice ties (the full search) falling in every slab, against the brute force.
    monkeypatch.setattr(graph_building, "_MIN_SLAB", 50)
    rng = np.random.default_rng(21)
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    points = np.concatenate([grid * np.float32(0.1), clustered(rng, 150, 3, 0.05, 10).astype(np.float32),
                             np.repeat(grid[:10] * np.float32(0.1), 3, axis=0)])[rng.permutation(125 + 150 + 30)]
    for cap in (2, 6):
        expected = brute_force(points, 0.25, cap)
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(build_graph(points, 0.25, cap, threads=threads), expected)
    assert nearest_path["full"] >= 3, "ties must reach the full search in the slabs too"


@pytest.mark.parametrize("batch", [1, 7, 1000, 1 << 20])
def test_a_crowd_of_equal_points_is_searched_in_bounded_batches_and_stays_exact(nearest_path, monkeypatch, batch):
    # every hit of a crowd has the whole crowd within the radius: the full search fetches
    # the neighbour lists a batch at a time (it held N^2 of them at once, 6.8 GB at 12,000 hits)
    monkeypatch.setattr(graph_building, "_FULL_SEARCH_BATCH", batch)
    rng = np.random.default_rng(5)
    points = np.concatenate([np.zeros((60, 4)), rng.uniform(-1, 1, (40, 4))]).astype(np.float32)
    for cap in (1, 5):
        np.testing.assert_array_equal(build_graph(points, 0.3, cap), brute_force(points, 0.3, cap))
    assert nearest_path["full"] >= 1
