"""build_tracks against scipy's connected components and the published service's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from trackserve.errors import InputError
from trackserve.runtime.track_building import build_tracks
from trackserve.runtime.components import compact_in_order

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "exatrkx_service" / "reference_event"


def reference_labels(num_hits, edges, kept):
    """scipy components over the kept edges, renumbered by first appearance in a plain loop."""
    graph = coo_array((np.ones(int(kept.sum())), (edges[0, kept], edges[1, kept])), shape=(num_hits, num_hits))
    _, raw = connected_components(graph, directed=False)
    renumber = {}
    return np.array([renumber.setdefault(label, len(renumber)) for label in raw.tolist()], dtype=np.int64)


def random_graph(rng, num_hits, num_edges):
    edges = rng.integers(0, num_hits, (2, num_edges))
    # Repeated edges, reversed duplicates and self-loops on purpose.
    edges[:, : num_edges // 10] = edges[:, num_edges // 10 : 2 * (num_edges // 10)]
    edges[:, 2 * (num_edges // 10) : 3 * (num_edges // 10)] = edges[::-1, 3 * (num_edges // 10) : 4 * (num_edges // 10)]
    loops = rng.integers(0, num_hits, num_edges // 20)
    edges[:, -(num_edges // 20) or num_edges :] = loops
    return edges


@pytest.mark.parametrize("num_hits, num_edges", [(10, 30), (1_000, 600), (1_000, 3_000), (50_000, 60_000)])
@pytest.mark.parametrize("cut", [0.0, 0.3, 0.75, 1.0])
def test_matches_scipy_on_random_graphs(num_hits, num_edges, cut):
    rng = np.random.default_rng(num_hits + num_edges)
    edges = random_graph(rng, num_hits, num_edges)
    logits = rng.normal(0, 3, num_edges).astype(np.float32)
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = reference_labels(num_hits, edges, probabilities > cut)
    got = build_tracks(num_hits, edges, logits, cut)
    assert got.dtype == np.int64 and got.shape == (num_hits,)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(build_tracks(num_hits, edges, probabilities, cut, scores_are_logits=False), expected)


def test_labels_are_compact_and_ordered_by_smallest_hit():
    edges = np.array([[5, 2, 7, 4], [6, 3, 9, 0]])
    got = build_tracks(10, edges, np.full(4, 5.0), 0.5)
    # Components: {0,4} {1} {2,3} {5,6} {7,9} {8}, numbered by their smallest hit.
    np.testing.assert_array_equal(got, [0, 1, 2, 2, 0, 3, 3, 4, 5, 4])


def test_renumbering_of_unordered_component_labels():
    np.testing.assert_array_equal(compact_in_order(np.array([2, 2, 0, 1, 0, 5])), [0, 0, 1, 2, 1, 3])
    np.testing.assert_array_equal(compact_in_order(np.array([0, 1, 0, 2, 1])), [0, 1, 0, 2, 1])
    assert compact_in_order(np.zeros(0, dtype=np.int64)).shape == (0,)


def test_isolated_hits_get_their_own_label():
    got = build_tracks(5, np.array([[1], [3]]), np.array([2.0]), 0.5)
    np.testing.assert_array_equal(got, [0, 1, 2, 1, 3])


def test_no_edges_and_no_passing_edges():
    no_edges = build_tracks(4, np.zeros((2, 0), np.int64), np.zeros(0, np.float32), 0.5)
    np.testing.assert_array_equal(no_edges, np.arange(4))
    none_pass = build_tracks(3, np.array([[0, 1], [1, 2]]), np.array([-1.0, -2.0]), 0.5)
    np.testing.assert_array_equal(none_pass, np.arange(3))


def test_zero_hits():
    got = build_tracks(0, np.zeros((2, 0), np.int64), np.zeros(0), 0.5)
    assert got.dtype == np.int64 and got.shape == (0,)


def test_cut_is_strict_and_exact_at_the_ends():
    edges = np.array([[0, 2, 4, 6], [1, 3, 5, 7]])
    # logit(0.5) = 0: a score of exactly 0 does not pass, the smallest positive float does.
    tiny = np.nextafter(0.0, 1.0)
    np.testing.assert_array_equal(
        build_tracks(8, edges, np.array([0.0, tiny, -tiny, 1.0]), 0.5), [0, 1, 2, 2, 3, 4, 5, 5]
    )
    # cut 0: every finite logit passes (sigmoid > 0), -inf does not; cut 1: nothing passes.
    scores = np.array([-1.7e308, -np.inf, -50.0, np.inf])
    np.testing.assert_array_equal(build_tracks(8, edges, scores, 0.0), [0, 0, 1, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(build_tracks(8, edges, scores, 1.0), np.arange(8))
    # Probabilities: exactly the cut does not pass.
    probabilities = np.array([0.75, 0.7500001, 0.2, 1.0])
    np.testing.assert_array_equal(
        build_tracks(8, edges, probabilities, 0.75, scores_are_logits=False), [0, 1, 2, 2, 3, 4, 5, 5]
    )


def test_float32_logits_compare_in_float64():
    # A float32 logit that rounds just above logit(cut): it passes (sigmoid(score) > cut in
    # exact arithmetic), although comparing in float32 would find it equal to the threshold.
    for cut in np.linspace(0.6, 0.9, 31):
        threshold = np.log(cut) - np.log1p(-cut)
        score = np.float32(threshold)
        if np.float64(score) > threshold:
            break
    else:
        pytest.fail("no cut found whose float32 logit rounds up")
    assert not score > np.float32(threshold)
    assert 1 / (1 + np.exp(-np.float64(score))) > cut
    got = build_tracks(2, np.array([[0], [1]]), np.array([score], np.float32), float(cut))
    np.testing.assert_array_equal(got, [0, 0])


def test_reference_event_gives_the_published_partition():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference event not found at {REFERENCE} (../shared/data is absent)")
    edges = np.loadtxt(REFERENCE / "applyfilter_output_EDGE_LIST_AFTER_FILTER.csv", delimiter=",").astype(np.int64)
    logits = np.loadtxt(REFERENCE / "gnn_output_OUTPUT__0.csv", dtype=np.float32)
    published = np.loadtxt(REFERENCE / "exatrkx_output_LABELS.csv").astype(np.int64)
    assert edges.shape == (2, 584) and logits.shape == (584,) and published.shape == (313,)
    got = build_tracks(314, edges, logits, 0.75)
    # The published file lacks the last hit: compare the partitions of the first 313 hits.
    seen = {}
    for ours, theirs in zip(got[:313].tolist(), published.tolist()):
        assert seen.setdefault(ours, theirs) == theirs, "a track of ours spans two published tracks"
    assert len(set(seen.values())) == len(seen), "a published track spans two of ours"
    assert np.unique(got).size == 37


@pytest.mark.parametrize(
    "num_hits, edges, scores, cut, message",
    [
        (-1, np.zeros((2, 0), np.int64), np.zeros(0), 0.5, "num_hits"),
        (True, np.zeros((2, 0), np.int64), np.zeros(0), 0.5, "num_hits"),
        (3, np.zeros((3, 2), np.int64), np.zeros(2), 0.5, r"shape \[2, M\]"),
        (3, np.array([[0, 1], [1, 3]]), np.zeros(2), 0.5, r"edge 1 \(1 -> 3\)"),
        (3, np.array([[0, -1], [1, 2]]), np.zeros(2), 0.5, "edge 1"),
        (0, np.array([[0], [0]]), np.zeros(1), 0.5, "edge 0"),
        (3, np.array([[0.0, 1.0], [1.0, 2.0]]), np.zeros(2), 0.5, "integers"),
        (3, np.array([[0, 1], [1, 2]]), np.zeros(3), 0.5, r"shape \[2\]"),
        (3, np.array([[0, 1], [1, 2]]), np.zeros((2, 1)), 0.5, r"shape \[2\]"),
        (3, np.array([[0, 1], [1, 2]]), np.array([0.1, np.nan]), 0.5, "edge 1 is NaN"),
        (3, np.array([[0, 1], [1, 2]]), np.array([1, 2]), 0.5, "floating-point"),
        (3, np.array([[0, 1], [1, 2]]), np.zeros(2), 1.5, "cut"),
        (3, np.array([[0, 1], [1, 2]]), np.zeros(2), float("nan"), "cut"),
        (3, np.array([[0, 1], [1, 2]]), np.zeros(2), None, "cut"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(num_hits, edges, scores, cut, message):
    with pytest.raises(InputError, match=message):
        build_tracks(num_hits, edges, scores, cut)


def test_probabilities_outside_zero_to_one_are_refused():
    # logits passed as probabilities were compared with the cut as they were
    edges = np.array([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(InputError, match=r"score of edge 0 is 5.0, not a probability in \[0, 1\]"):
        build_tracks(4, edges, np.array([5.0, -3.0, 0.2]), 0.5, scores_are_logits=False)
    assert build_tracks(4, edges, np.array([5.0, -3.0, 0.2]), 0.5).tolist() == [0, 0, 1, 1]  # as logits


@pytest.mark.parametrize("cut, flag, message", [(True, True, "cut must be a number in [0, 1]; got True"),
                                                ("0.5", True, "cut must be a number in [0, 1]; got '0.5'"),
                                                (0.5, "no", "scores_are_logits must be True or False; got 'no'")])
def test_a_cut_or_flag_of_the_wrong_kind_is_refused_not_coerced(cut, flag, message):
    with pytest.raises(InputError) as error:
        build_tracks(2, np.array([[0], [1]]), np.array([0.3]), cut, scores_are_logits=flag)
    assert message in str(error.value)


def test_the_flag_is_named_before_the_scores_it_describes():
    """QA, 2026-12-02: with a flag of the wrong kind, logits were called improbable probabilities."""
    with pytest.raises(InputError, match="scores_are_logits must be True or False; got None"):
        build_tracks(5, np.array([[0, 1, 2], [1, 2, 3]]), np.array([3.0, -3.0, 3.0]), 0.5, scores_are_logits=None)


@pytest.mark.parametrize("num_hits, cut, gap_cut, message", [
    (10**20, 0.5, None, "num_hits 100000000000000000000 is more than the 2,147,483,647 hits one call takes"),
    (2**62, 0.5, None, "is more than the 2,147,483,647 hits one call takes"),
    (2, 10**400, None, "cut must be a number in [0, 1]; got 1000000000"),
    (2, 0.5, 10**400, "gap cut must be a number in [0, 1]; got 1000000000"),
])
def test_numbers_beyond_any_float_or_event_are_named(num_hits, cut, gap_cut, message):
    """QA, 2026-12-02: OverflowError from float(), or scipy's / numpy's errors from deep inside."""
    with pytest.raises(InputError) as error:
        build_tracks(num_hits, np.zeros((2, 0), np.int64), np.zeros(0), cut, method="best_edges",
                     hit_order=np.zeros(num_hits) if num_hits < 10 else None, gap_cut=gap_cut)
    assert message in str(error.value) and len(str(error.value)) < 300


def test_pairs_in_rows_are_named_with_a_hint_to_transpose():
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    with pytest.raises(InputError, match=r"edge_index must have shape \[2, M\]; got \[3, 2\] \(pairs in rows: "
                                         r"transpose it\)"):
        build_tracks(4, pairs, np.ones(3), 0.5)
