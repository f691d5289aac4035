"""build_graph against a brute-force reference that applies the documented rule literally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from trackserve.errors import InputError
from trackserve.runtime import graph_building
from trackserve.runtime.graph_building import build_graph

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "exatrkx_service" / "reference_event"


def squared_distance_matrix(points: np.ndarray) -> np.ndarray:
    """All float32 squared distances, summed over dimensions 0, 1, ... in order."""
    points = np.asarray(points, dtype=np.float32)
    total = np.zeros((points.shape[0], points.shape[0]), dtype=np.float32)
    for d in range(points.shape[1]):
        diff = points[:, None, d] - points[None, :, d]
        total += diff * diff
    return total


def brute_force(points: np.ndarray, radius: float, cap: int, direction: str = "i<j") -> np.ndarray:
    """The documented rule, hit by hit: strict radius, K nearest (distance, index) of either end."""
    n = points.shape[0]
    r32 = np.float32(radius)
    dist2 = squared_distance_matrix(points)
    close = dist2 < np.float32(r32 * r32)
    nearest = []
    for i in range(n):
        neighbours = [j for j in range(n) if j != i and close[i, j]]
        neighbours.sort(key=lambda j: (dist2[i, j], j))
        nearest.append(set(neighbours[:cap]))
    pairs = sorted(
        (i, j) for i in range(n) for j in range(i + 1, n) if close[i, j] and (j in nearest[i] or i in nearest[j])
    )
    if direction == "i<j":
        edges = pairs
    elif direction == "i>j":
        edges = sorted((j, i) for i, j in pairs)
    else:
        edges = sorted(pairs + [(j, i) for i, j in pairs])
    return np.array(edges, dtype=np.int64).reshape(-1, 2).T


def assert_same_graph(points, radius, cap, direction="i<j", **kwargs):
    got = build_graph(points, radius, cap, direction=direction, **kwargs)
    expected = brute_force(points, radius, cap, direction)
    assert got.dtype == np.int64 and got.shape[0] == 2
    np.testing.assert_array_equal(got, expected)
    return got


def clustered(rng, n, dims, spread, clusters):
    centres = rng.uniform(-1, 1, (clusters, dims))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(0, spread, (n, dims))).astype(np.float32)


@pytest.mark.parametrize("dims", [1, 2, 3, 5, 8, 12])
def test_random_points_match_brute_force(dims):
    rng = np.random.default_rng(dims)
    points = rng.normal(size=(300, dims)).astype(np.float32)
    # A radius giving a handful of neighbours per hit in each dimension.
    radius = float(np.sort(np.sqrt(squared_distance_matrix(points)), axis=1)[:, 6].mean())
    got = assert_same_graph(points, radius, 1000)
    assert got.shape[1] > points.shape[0]


@pytest.mark.parametrize("dims", [3, 8, 12])
@pytest.mark.parametrize("cap", [1, 3, 8, 1000])
def test_clustered_points_match_brute_force_with_and_without_cap(dims, cap):
    rng = np.random.default_rng(10 * dims + cap)
    points = clustered(rng, 400, dims, 0.05, 30)
    assert_same_graph(points, 0.25, cap)


@pytest.mark.parametrize("direction", ["i<j", "i>j", "both"])
def test_every_direction_convention(direction):
    rng = np.random.default_rng(3)
    points = clustered(rng, 250, 6, 0.08, 20)
    got = assert_same_graph(points, 0.3, 4, direction)
    if direction == "i<j":
        assert np.all(got[0] < got[1])
    elif direction == "i>j":
        assert np.all(got[0] > got[1])
    else:
        forward = {tuple(e) for e in got.T}
        assert forward == {(b, a) for a, b in forward}
    keys = got[0] * points.shape[0] + got[1]
    assert np.all(np.diff(keys) > 0), "edges must be sorted by source then target, without duplicates"


def test_directions_hold_the_same_pairs():
    rng = np.random.default_rng(4)
    points = clustered(rng, 300, 8, 0.05, 25)
    low = build_graph(points, 0.25, 3, direction="i<j")
    high = build_graph(points, 0.25, 3, direction="i>j")
    both = build_graph(points, 0.25, 3, direction="both")
    assert {tuple(e) for e in low.T} == {(b, a) for a, b in high.T}
    assert both.shape[1] == 2 * low.shape[1]


@pytest.mark.parametrize("radius", [0.5, 0.1, 1.0])
def test_lattice_points_on_cell_borders(radius):
    # Coordinates at exact multiples of r: axis neighbours lie exactly on the radius.
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    points = (grid * np.float32(radius)).astype(np.float32)
    got = assert_same_graph(points, radius, 100)
    if radius in (0.5, 1.0):  # exact in binary: every axis neighbour is at distance exactly r
        assert got.shape[1] == 0
    # A hair inside the radius every axis neighbour is an edge: 3 * 4 * 4 * 3 of them.
    inside = build_graph(points, np.nextafter(np.float32(radius), np.float32(2)) * 1.0001, 100)
    assert inside.shape[1] == 144


def test_points_exactly_on_the_radius_are_excluded():
    r = np.float32(0.75)
    points = np.zeros((3, 4), dtype=np.float32)
    points[1, 0] = r  # squared distance 0.5625 == r*r exactly
    points[2, 0] = -np.nextafter(r, np.float32(0))  # a float32 step inside
    got = build_graph(points, float(r), 10)
    np.testing.assert_array_equal(got, [[0], [2]])


def test_duplicates_are_all_connected_and_ties_break_by_index():
    points = np.zeros((6, 5), dtype=np.float32)
    got = assert_same_graph(points, 0.1, 100)
    assert got.shape[1] == 15
    # With K = 1 every duplicate's nearest is the lowest other index: hit 0 for all, hit 1 for hit 0.
    capped = assert_same_graph(points, 0.1, 1)
    np.testing.assert_array_equal(capped, [[0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])


def test_cap_keeps_the_nearest_along_a_line():
    # Hits at 0, 1, 2, ...: with K = 1 each hit's nearest is its lower neighbour (ties by index).
    points = np.zeros((8, 3), dtype=np.float32)
    points[:, 1] = np.arange(8)
    got = assert_same_graph(points, 100.0, 1)
    np.testing.assert_array_equal(got, [np.arange(7), np.arange(1, 8)])


def test_cap_is_either_endpoint():
    # A hub with 6 leaves on orthogonal axes at distances 1.00..1.05, leaves 1.4 apart: with
    # K = 2 the hub ranks only two of them, but every leaf ranks the hub first (its only
    # neighbour), so every spoke is kept.
    points = np.zeros((7, 6), dtype=np.float32)
    points[1:, :] = np.diag(np.arange(100, 106) / 100)
    got = assert_same_graph(points, 1.1, 2)
    np.testing.assert_array_equal(got, [np.zeros(6), np.arange(1, 7)])


@pytest.mark.parametrize("count", [0, 1])
def test_zero_and_one_point(count):
    got = build_graph(np.zeros((count, 8), dtype=np.float32), 1.0, 10)
    assert got.dtype == np.int64 and got.shape == (2, 0)


def test_radius_larger_than_the_data_gives_the_complete_graph():
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 1, (120, 8)).astype(np.float32)
    got = assert_same_graph(points, 100.0, 1000)
    assert got.shape[1] == 120 * 119 // 2


def test_float64_input_is_rounded_to_float32_first():
    rng = np.random.default_rng(6)
    points = rng.normal(size=(200, 4))
    np.testing.assert_array_equal(
        build_graph(points, 0.6, 50), build_graph(points.astype(np.float32), 0.6, 50)
    )


def test_slabs_threads_and_projection_choice(monkeypatch):
    # Shrink the slab and sample sizes so that a brute-forceable input goes through the
    # multi-slab, multi-thread search and the sampled choice of projected dimensions.
    monkeypatch.setattr(graph_building, "_MIN_SLAB", 50)
    monkeypatch.setattr(graph_building, "_MAX_SLAB", 120)
    monkeypatch.setattr(graph_building, "_SAMPLE", 100)
    rng = np.random.default_rng(7)
    points = clustered(rng, 600, 8, 0.06, 40)
    for threads in (1, 2, 3):
        assert_same_graph(points, 0.3, 5, threads=threads)


def test_single_slab_and_multi_slab_searches_agree_on_borders_duplicates_and_caps(monkeypatch):
    # A grid of spacing exactly r (pairs on the border are excluded), repeated hits (zero
    # distance), clustered hits with a binding cap: the one-tree path (small events) and
    # the slab path must give the brute-force graph, each.
    rng = np.random.default_rng(12)
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(6), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    points = np.concatenate([
        grid.astype(np.float32) * np.float32(0.25),
        np.repeat(rng.normal(0, 0.3, (20, 3)).astype(np.float32), 4, axis=0),
        clustered(rng, 200, 3, 0.05, 8).astype(np.float32),
    ])[rng.permutation(144 + 80 + 200)]
    cases = [(0.25, 500, "i<j"), (0.2500001, 500, "both"), (0.3, 3, "i>j"), (0.05, 1, "i<j")]
    single = [assert_same_graph(points, *case[:2], direction=case[2], threads=2) for case in cases]
    monkeypatch.setattr(graph_building, "_MIN_SLAB", 40)
    monkeypatch.setattr(graph_building, "_MAX_SLAB", 90)
    for case, expected in zip(cases, single):
        np.testing.assert_array_equal(build_graph(points, case[0], case[1], direction=case[2], threads=2), expected)
    # the balanced, compact search trees of large events, in the slab path and the one-tree path
    monkeypatch.setattr(graph_building, "_BALANCED_TREE_MIN", 1)
    for min_slab, max_slab in ((40, 90), (16_384, 65_536)):
        monkeypatch.setattr(graph_building, "_MIN_SLAB", min_slab)
        monkeypatch.setattr(graph_building, "_MAX_SLAB", max_slab)
        for case, expected in zip(cases, single):
            np.testing.assert_array_equal(build_graph(points, case[0], case[1], direction=case[2], threads=2),
                                          expected)


def test_embedding_on_a_low_dimensional_manifold_matches_kdtree_reference():
    # 30k hits: slabs and the sampled projection at their real sizes; the reference is a
    # full-dimension k-d tree search (wider radius) followed by the exact float32 rule.
    rng = np.random.default_rng(8)
    latent = rng.uniform(-1, 1, (3_000, 3))
    centres = np.tanh(latent @ rng.normal(0, 1.5, (3, 16))) @ rng.normal(0, 0.8, (16, 8))
    points = (centres[rng.integers(0, 3_000, 30_000)] + rng.normal(0, 0.02, (30_000, 8))).astype(np.float32)
    radius = 0.1
    got = build_graph(points, radius, 10_000, threads=2)
    candidates = cKDTree(points.astype(np.float64)).query_pairs(radius * 1.001, output_type="ndarray")
    diff = points[candidates[:, 0]] - points[candidates[:, 1]]
    dist2 = np.zeros(len(candidates), dtype=np.float32)
    for d in range(points.shape[1]):
        dist2 += diff[:, d] * diff[:, d]
    kept = candidates[dist2 < np.float32(np.float32(radius) ** 2)]
    expected = np.unique(np.sort(kept, axis=1) @ np.array([30_000, 1]))
    np.testing.assert_array_equal(got[0] * 30_000 + got[1], expected)
    assert got.shape[1] > 30_000


def _load_reference():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference event not found at {REFERENCE} (../shared/data is absent)")
    embedding = np.loadtxt(REFERENCE / "embed_output_OUTPUT__0.csv", delimiter=",", dtype=np.float32)
    edges = np.loadtxt(REFERENCE / "frnn_output_OUTPUT0.csv", delimiter=",").astype(np.int64)
    return embedding, edges


def test_reference_event_matches_the_published_service():
    embedding, expected = _load_reference()
    assert embedding.shape == (314, 8) and expected.shape == (2, 2334)
    # The service stores i > j; its FRNN call used K = 500 including the hit itself.
    got = build_graph(embedding, 1.6, 499, direction="i>j")
    order = np.lexsort((expected[1], expected[0]))
    np.testing.assert_array_equal(got, expected[:, order])
    # No hit comes near the cap, so the cap rule cannot have mattered there.
    degree = np.bincount(got.ravel(), minlength=314)
    assert degree.max() < 100
    np.testing.assert_array_equal(build_graph(embedding, 1.6, int(degree.max()), direction="i>j"), got)


@pytest.mark.parametrize(
    "embedding, radius, cap, kwargs, message",
    [
        (np.zeros(5, np.float32), 1.0, 3, {}, "2-D"),
        (np.zeros((5, 2), np.int64), 1.0, 3, {}, "floating-point"),
        (np.zeros((5, 0), np.float32), 1.0, 3, {}, "zero dimensions"),
        (np.array([[0, 0], [0, np.nan]], np.float32), 1.0, 3, {}, "row 1"),
        (np.array([[0, np.inf]], np.float32), 1.0, 3, {}, "row 0"),
        (np.zeros((5, 2), np.float32), 0.0, 3, {}, "positive"),
        (np.zeros((5, 2), np.float32), float("nan"), 3, {}, "positive"),
        (np.zeros((5, 2), np.float32), "one", 3, {}, "number"),
        (np.zeros((5, 2), np.float32), 1e-30, 3, {}, "out of range"),
        (np.zeros((5, 2), np.float32), 1e20, 3, {}, "out of range"),
        (np.zeros((5, 2), np.float32), 1.0, 0, {}, "max_neighbours"),
        (np.zeros((5, 2), np.float32), 1.0, 2.5, {}, "max_neighbours"),
        (np.zeros((5, 2), np.float32), 1.0, 3, {"direction": "up"}, "direction"),
        (np.zeros((5, 2), np.float32), 1.0, 3, {"threads": 0}, "threads"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(embedding, radius, cap, kwargs, message):
    with pytest.raises(InputError, match=message):
        build_graph(embedding, radius, cap, **kwargs)


@pytest.mark.parametrize("kind", ["uniform", "clustered", "manifold"])
def test_the_projection_choice_stops_early_with_the_full_search_s_answer(kind, monkeypatch):
    # The choice stops counting once the traversal term alone passes the best cost so far;
    # it must pick what the argmin over every dimension picks (counted here in full).
    monkeypatch.setattr(graph_building, "_SAMPLE", 300)
    rng = np.random.default_rng(31)
    n, dims = 3000, 8
    if kind == "uniform":
        points = rng.uniform(-1, 1, (n, dims))
    elif kind == "clustered":
        points = clustered(rng, n, dims, 0.05, 60)
    else:  # points on a 3-D subspace of the 8-D space, a little noise off it
        points = rng.normal(size=(n, 3)) @ rng.normal(size=(3, dims)) + rng.normal(0, 0.01, (n, dims))
    points = points.astype(np.float32)
    r32 = np.float32(0.3)
    projected, search = graph_building._projection(points, r32)
    sample = points[:: n // 300].astype(np.float64)
    sample -= np.einsum("sd->d", sample) / sample.shape[0]
    axes = np.linalg.eigh(sample.T @ sample)[1][:, ::-1]
    rotated = sample @ axes
    costs = []
    for g in range(1, 7):
        tree = cKDTree(np.ascontiguousarray(rotated[:, :g]))
        pairs = (tree.count_neighbors(tree, search) - sample.shape[0]) / 2 * (n / sample.shape[0]) ** 2
        costs.append(pairs + graph_building._TRAVERSAL_COST * n * 2**g)
    assert projected.shape[1] == 1 + int(np.argmin(costs))
    assert_same_graph(points[:600], 0.3, 500)


@pytest.mark.parametrize("radius", [True, "1.5", None])
def test_a_radius_of_the_wrong_kind_is_refused_not_coerced(radius):
    from trackserve.errors import InputError

    with pytest.raises(InputError, match="radius must be a number"):
        build_graph(np.zeros((3, 2), np.float32), radius, 4)


def test_a_radius_beyond_any_float_and_bad_memory_arguments_are_named():
    """QA, 2026-12-02: 10**400 raised OverflowError, 1e308 printed numpy's cast warning before
    the refusal, and the memory arguments were not checked (a negative ``memory_held``
    defeated the limit; ``None`` raised TypeError)."""
    import warnings

    points = np.zeros((3, 2), np.float32)
    with pytest.raises(InputError, match=r"radius must be a finite positive number; got 1000000000.*characters"):
        build_graph(points, 10**400, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="out of range"):
            build_graph(points, 1e308, 4)
    for limit in (-5, 0, 1.5, True):
        with pytest.raises(InputError, match=r"memory_limit must be None or a whole number of bytes >= 1"):
            build_graph(points, 1.0, 4, memory_limit=limit)
    for held in (None, -10**15, 2.0):
        with pytest.raises(InputError, match=r"memory_held must be a whole number of bytes >= 0"):
            build_graph(points, 1.0, 4, memory_limit=10**9, memory_held=held)
    assert build_graph(points, 1.0, 4, memory_limit=10**9, memory_held=10).shape == (2, 3)


def test_far_off_points_give_no_numpy_warnings_and_values_beyond_float32_are_named():
    import warnings

    rng = np.random.default_rng(0)
    points = rng.normal(size=(1500, 8)) * 3e18  # finite in float32; their distances overflow it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edges = build_graph(points, 2.4e18, 4)
    assert edges.shape[0] == 2 and edges.shape[1] > 0
    with pytest.raises(InputError, match=r"row 1 holds a value beyond float32's range .*\[0.0, 1e\+39\]"):
        build_graph(np.array([[0.0, 0.0], [0.0, 1e39]]), 1.0, 4)


@pytest.mark.parametrize("spread, cap", [(1.0, 8), (0.05, 8), (1.0, 500)])  # the cap binding or not
def test_the_memory_estimate_holds_the_search_and_a_limit_refuses_it_before(spread, cap):
    # A search with far more pairs than the memory limit allows (a 5-million-hit event in a served
    # model) grew to twice the limit: graph building was checked only after it.
    import tracemalloc

    from trackserve.errors import MemoryLimitError

    points = np.random.default_rng(11).uniform(0, spread, size=(30_000, 3)).astype(np.float32)
    radius = 0.02
    built: dict = {}
    binds = graph_building._cap_binds(points, np.float32(radius), cap, built)
    estimate = graph_building.graph_memory_estimate(len(points), cap, binds, built.get("mean_neighbours"))
    tracemalloc.start()
    try:
        edges = build_graph(points, radius, cap, threads=2, memory_limit=int(estimate) + 10**6)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert edges.shape[1] > 0 and peak <= estimate  # the numpy arrays of the search, on the safe side
    with pytest.raises(MemoryLimitError, match=f"building the graph of 30,000 hits \\(at most {cap} kept each, "
                                               "about [0-9,]+ neighbours each within the radius\\) needs about"):
        build_graph(points, radius, cap, threads=2, memory_limit=int(estimate) - 1)
    with pytest.raises(MemoryLimitError, match="memory limit"):  # what the caller holds counts too
        build_graph(points, radius, cap, threads=2, memory_limit=int(estimate) + 10**6, memory_held=10**6 + 1)


def test_a_cap_too_wide_to_bind_is_estimated_from_a_sample_not_from_every_pair():
    # A bundle with max_neighbours far above any hit's neighbours ("no cap") skipped the cap's
    # sample, and its search was estimated as every pair of the hits: 1.9 GB for 5,000 sparse points.
    from trackserve.errors import MemoryLimitError

    points = np.random.default_rng(12).uniform(0, 1, size=(5_000, 3)).astype(np.float32)
    edges = build_graph(points, 0.05, 100_000, threads=1, memory_limit=50 * 2**20)
    assert edges.shape[1] > 0
    with pytest.raises(MemoryLimitError, match="about [0-9,]+ neighbours each within the radius"):
        build_graph(points, 0.05, 100_000, threads=1, memory_limit=2**20)


def test_a_small_event_over_the_all_pairs_bound_counts_its_pairs_instead():
    # QA, 2026-12-02: events under 1,000 hits were estimated as every pair of the hits (999
    # hits: 72 MiB), so a limit that let 1,000 and 2,500 hits through refused 999
    from trackserve.errors import MemoryLimitError

    points = np.random.default_rng(13).uniform(0, 1, size=(999, 3)).astype(np.float32)
    all_pairs = graph_building.graph_memory_estimate(999, 48, False, None)
    edges = build_graph(points, 0.05, 48, threads=1, memory_limit=int(all_pairs) // 10)
    assert edges.shape[1] > 0
    # a limit below the event's own pairs is still refused, naming the neighbours it counted
    with pytest.raises(MemoryLimitError, match="about [0-9,]+ neighbours each within the radius"):
        build_graph(points, 0.05, 48, threads=1, memory_limit=10**4)
    tiny = points[:3]
    assert np.array_equal(build_graph(tiny, 0.05, 48, memory_limit=10**4), build_graph(tiny, 0.05, 48))
