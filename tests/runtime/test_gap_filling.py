"""Track building 'best_edges' with a gap cut: weaker edges fill the gaps the GNN cut leaves."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from trackserve.bundle import StageParameters, load_bundle
from trackserve.errors import InputError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.track_building import best_edges, build_tracks, gap_edges, hit_distances
from trackserve.serving.interface import STAGE_NAMES
from trackserve.serving.stages import make_stage, run_stages

from ..conftest import assert_stages_refused, copy_with_stages

from .test_best_edges import (_assert_compact_partition, _components, _random_scored_graph, _reference_best,
                              _same_partition, _tied_random_graph)


def _reference_gaps(edges, scores, order, kept):
    """The gap rule written as loops over edges and hits."""
    m = edges.shape[1]
    inner = [min((order[a], a), (order[b], b))[1] for a, b in edges.T]
    outer = [max((order[a], a), (order[b], b))[1] for a, b in edges.T]
    has_outward = {inner[e] for e in range(m) if kept[e]}
    has_inward = {outer[e] for e in range(m) if kept[e]}
    candidates = [e for e in range(m) if not kept[e] and inner[e] != outer[e]
                  and inner[e] not in has_outward and outer[e] not in has_inward]
    best_out, best_in = {}, {}
    for e in candidates:
        for best, hit in ((best_out, inner[e]), (best_in, outer[e])):
            if hit not in best or scores[e] > scores[best[hit]]:
                best[hit] = e
    fills = np.zeros(m, dtype=bool)
    for e in candidates:
        fills[e] = best_out[inner[e]] == e and best_in[outer[e]] == e
    return fills


@pytest.mark.parametrize("seed", range(6))
def test_gap_edges_match_a_loop_on_random_graphs_with_ties_repeats_and_self_loops(seed):
    edges, scores, order, rng = _tied_random_graph(seed, 50, 300, 8, infinite_scores=True)
    kept = rng.random(edges.shape[1]) < 0.2
    np.testing.assert_array_equal(gap_edges(edges, scores, order, kept), _reference_gaps(edges, scores, order, kept))


def test_a_weak_edge_closes_the_gap_in_a_track_without_branching_another():
    # Track A 0-1-2-3 whose middle edge 1-2 scores below the cut; track B 4-5-6 complete.
    # Weak edges: 1-2 (true, the best candidate of both hits), 1-5 (hit 5 already has an
    # inward edge: never a candidate), 3-7 and 3-8 (hit 3's best candidate is 3-8).
    order = np.array([1, 2, 3, 4, 1, 2, 3, 5, 5], dtype=float)
    edges = np.array([[0, 2, 4, 5, 1, 1, 3, 3], [1, 3, 5, 6, 2, 5, 7, 8]])
    logits = np.array([4, 4, 4, 4, -0.5, 0.2, -0.8, -0.2], dtype=np.float32)
    without = build_tracks(9, edges, logits, 0.6, method="best_edges", hit_order=order)
    with_gaps = build_tracks(9, edges, logits, 0.6, method="best_edges", hit_order=order, gap_cut=0.2)
    assert without.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 4]
    assert with_gaps.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 0]
    # A gap cut above the weak edges' scores adds nothing; one equal to the cut keeps the result.
    assert build_tracks(9, edges, logits, 0.6, method="best_edges", hit_order=order, gap_cut=0.5).tolist() == without.tolist()
    assert build_tracks(9, edges, logits, 0.6, method="best_edges", hit_order=order, gap_cut=0.6).tolist() == without.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_labels_are_the_components_of_best_edges_and_gap_edges(seed):
    n = 400
    edges, logits, order = _random_scored_graph(20 + seed, n, 2500)
    labels = build_tracks(n, edges, logits, 0.7, method="best_edges", hit_order=order, gap_cut=0.3)
    weak = logits.astype(np.float64) > np.log(0.3 / 0.7)
    candidates, scores = edges[:, weak], logits[weak]
    strong = scores.astype(np.float64) > np.log(0.7 / 0.3)
    best = np.zeros(strong.size, dtype=bool)
    best[strong] = _reference_best(candidates[:, strong], scores[strong], order)
    kept = candidates[:, best | _reference_gaps(candidates, scores, order, best)]
    _assert_compact_partition(labels, _components(n, kept))


def test_events_above_65536_hits_follow_the_same_rule():
    # Up to 65,536 hits the edges are grouped by 16-bit keys; above, by 64-bit ones. Hits
    # whose indices differ by 65,536 would collide under a wrong 16-bit key.
    rng = np.random.default_rng(5)
    n, m = 70_000, 3000
    hits = np.concatenate([rng.choice(n, 150, replace=False), np.arange(100, 250) + 65_536])
    hits[150:] -= np.where(rng.random(150) < 0.5, 65_536, 0)  # some pairs i and i + 65,536 both present
    hits = np.unique(np.concatenate([hits, np.arange(100, 250) + 65_536]))
    edges = rng.choice(hits, (2, m))
    scores = rng.integers(-2, 3, m).astype(np.float64)
    order = rng.random(n)
    best = best_edges(edges, scores, order)
    np.testing.assert_array_equal(best, _reference_best(edges, scores, order))
    np.testing.assert_array_equal(gap_edges(edges, scores, order, best), _reference_gaps(edges, scores, order, best))
    labels = build_tracks(n, edges, scores.astype(np.float32), 0.5, method="best_edges", hit_order=order, gap_cut=0.2)
    weak = scores > np.log(0.2 / 0.8)
    strong = scores[weak] > 0
    keep = np.zeros(strong.size, dtype=bool)
    keep[strong] = _reference_best(edges[:, weak][:, strong], scores[weak][strong], order)
    keep |= _reference_gaps(edges[:, weak], scores[weak], order, keep)
    assert _same_partition(labels, _components(n, edges[:, weak][:, keep]))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "components", "gap_cut": 0.2}, "needs track building 'best_edges', not 'components'"),
    ({"method": "best_edges", "gap_cut": 0.7}, r"gap cut 0.7 is above the cut 0.5"),
    ({"method": "best_edges", "gap_cut": -0.1}, r"gap cut must be a number in \[0, 1\]; got -0.1"),
    ({"method": "best_edges", "gap_cut": "low"}, r"gap cut must be a number in \[0, 1\]; got 'low'"),
])
def test_bad_gap_cuts_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        build_tracks(4, np.array([[0], [1]]), np.array([1.0]), 0.5, hit_order=np.arange(4.0), **kwargs)


def test_the_helpers_check_their_inputs_as_build_tracks_does():
    # best_edges and gap_edges are public: before, a hit outside hit_order, a score array of
    # another length or kept flags of integers met numpy's IndexError, and lists a TypeError
    edges, scores, order = np.array([[0, 1, 2], [1, 2, 3]]), np.array([1.0, 2.0, 3.0]), np.arange(4.0)
    kept = np.array([True, False, False])
    assert best_edges(edges.tolist(), scores.tolist(), order.tolist()).tolist() == [True, True, True]
    assert gap_edges(edges, scores, order, kept).tolist() == [False, True, True]
    for call, message in [
        (lambda: best_edges(np.array([[0], [9]]), np.array([1.0]), order), r"edge 0 \(0 -> 9\) refers to a hit outside 0..3"),
        (lambda: best_edges(edges, scores[:1], order), r"scores must have shape \[3\]"),
        (lambda: best_edges(edges, np.array([1.0, np.nan, 2.0]), order), "score of edge 1 is NaN"),
        (lambda: best_edges(edges, scores, order[None]), "hit_order must be 1-D"),
        (lambda: best_edges(edges.astype(float), scores, order), "edge_index must hold integers"),
        (lambda: gap_edges(edges, scores, order, np.array([0, 1])), r"kept must be a bool array of shape \[3\]"),
        (lambda: gap_edges(edges, scores, np.array([0.0, np.inf, 1.0, 2.0]), kept), "hit_order of hit 1 is not finite"),
    ]:
        with pytest.raises(InputError, match=message):
            call()


def test_empty_and_one_hit_events_with_a_gap_cut():
    assert build_tracks(0, np.zeros((2, 0), int), np.zeros(0), 0.5, method="best_edges", hit_order=np.zeros(0),
                        gap_cut=0.1).shape == (0,)
    assert build_tracks(1, np.zeros((2, 0), int), np.zeros(0), 0.5, method="best_edges", hit_order=np.zeros(1),
                        gap_cut=0.1).tolist() == [0]
    # Only weak edges: the gap edges alone make the tracks.
    assert build_tracks(3, np.array([[0, 1], [1, 2]]), np.array([-1.0, -1.0]), 0.5, method="best_edges",
                        hit_order=np.arange(3.0), gap_cut=0.1).tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def gap_bundle(tiny_bundle, tmp_path_factory):
    return copy_with_stages(tiny_bundle, tmp_path_factory.mktemp("gap_bundle") / "bundle",
                            track_building="best_edges", gnn_cut=0.6, gap_cut=0.3)


def test_pipeline_and_ensemble_fill_gaps_by_the_bundle(gap_bundle, sample_features):
    config = RuntimeConfig(intra_op_threads=1, graph_threads=1)
    pipeline = Pipeline(gap_bundle, config=config)
    assert pipeline.stages.gap_cut == 0.3
    result = pipeline.run(sample_features)
    filtered, _ = pipeline.filter_edges(sample_features, pipeline.build_graph(pipeline.embed(sample_features)))
    logits = pipeline.classify_edges("gnn", sample_features, filtered, chunked=False)
    order = hit_distances(sample_features, pipeline.bundle.feature_names, pipeline.bundle.feature_scales)
    expected = build_tracks(len(sample_features), filtered, logits, 0.6, method="best_edges", hit_order=order,
                            gap_cut=0.3)
    without = build_tracks(len(sample_features), filtered, logits, 0.6, method="best_edges", hit_order=order)
    np.testing.assert_array_equal(result.labels, expected)
    assert len(np.unique(expected)) < len(np.unique(without))  # the gap edges joined pieces
    stages = [make_stage(name, pipeline.bundle, config) for name in STAGE_NAMES]
    np.testing.assert_array_equal(run_stages(stages, sample_features), result.labels)


def test_bundle_gap_cut_is_validated_and_round_trips(gap_bundle, tmp_path):
    stages = load_bundle(gap_bundle).stages
    assert StageParameters.from_dict(stages.to_dict()) == stages
    assert "gap_cut" not in dataclasses.replace(stages, gap_cut=None).to_dict()
    for change, message in [
        ({"gap_cut": 0.9}, "stages.gap_cut: 0.9 is above gnn_cut 0.6"),
        ({"gap_cut": 1.5}, r"stages.gap_cut: 1.5 is outside \[0, 1\]"),
        ({"gap_cut": True}, r"stages.gap_cut: True is not a number \(a probability in \[0, 1\]"),
        ({"track_building": "components"}, "gap filling needs track_building 'best_edges', not 'components'"),
        ({"walk_cut": 0.2}, r"stages: unknown key\(s\) 'walk_cut'.*newer trackserve"),
    ]:
        assert_stages_refused(gap_bundle, tmp_path / f"bad{len(list(tmp_path.iterdir()))}", change, message)
    data = json.loads((gap_bundle / "pipeline.json").read_text())
    data["stages"]["gap_cut"] = None  # null: no gap filling
    null = tmp_path / "null"
    shutil.copytree(gap_bundle, null)
    (null / "pipeline.json").write_text(json.dumps(data))
    assert load_bundle(null).stages.gap_cut is None
