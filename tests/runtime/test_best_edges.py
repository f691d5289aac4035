"""Track building 'best_edges': each hit's best inward and outward edge, then components."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from trackserve.bundle import load_bundle
from trackserve.errors import BundleError, InputError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.track_building import best_edges, build_tracks, hit_distances
from trackserve.serving.interface import STAGE_NAMES
from trackserve.serving.stages import make_stage, run_stages

from ..conftest import copy_with_stages


def _reference_best(edges, scores, order):
    """The rule written as a loop over hits."""
    m = edges.shape[1]
    inner = [min((order[a], a), (order[b], b))[1] for a, b in edges.T]
    outer = [max((order[a], a), (order[b], b))[1] for a, b in edges.T]
    keep = np.zeros(m, dtype=bool)
    for ends in (inner, outer):
        best = {}
        for e in range(m):
            if inner[e] == outer[e]:
                continue  # a self-loop is no edge of a track: it never competes
            hit = ends[e]
            if hit not in best or scores[e] > scores[best[hit]]:
                best[hit] = e
        keep[list(best.values())] = True
    return keep


def _same_partition(a, b):
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _tied_random_graph(seed, n, m, distances, infinite_scores=False):
    """Random edges ``[2, m]`` with repeated edges and self-loops, scores with many ties
    (and some +-inf with ``infinite_scores``), hit orders with many hits at the same one of
    ``distances`` values: ``(edges, scores, order, rng)``."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, n, (2, m))
    at = m // 8
    edges[:, at:at + 10] = edges[:, 0:10]  # repeated edges
    edges[1, at + 10:at + 14] = edges[0, at + 10:at + 14]  # self-loops
    scores = rng.integers(-3, 4, m).astype(np.float32)  # many equal scores
    if infinite_scores:
        scores[rng.random(m) < 0.1] = -np.inf
        scores[rng.random(m) < 0.05] = np.inf
    order = rng.integers(0, distances, n).astype(np.float64)  # many hits at the same distance
    return edges, scores, order, rng


@pytest.mark.parametrize("seed", range(6))
def test_best_edges_match_a_loop_on_random_graphs_with_ties_and_repeats(seed):
    edges, scores, order, _ = _tied_random_graph(seed, 60, 400, 10)
    np.testing.assert_array_equal(best_edges(edges, scores, order), _reference_best(edges, scores, order))


def test_a_wrong_edge_that_merges_two_tracks_is_dropped():
    # two straight tracks 0-1-2-3 and 4-5-6-7 (hit order = index within each), a weaker
    # cross edge 1-6 that would merge them under plain components
    order = np.array([1, 2, 3, 4, 1, 2, 3, 4], dtype=float)
    edges = np.array([[0, 1, 2, 4, 5, 6, 1], [1, 2, 3, 5, 6, 7, 6]])
    logits = np.array([5, 5, 5, 5, 5, 5, 1], dtype=np.float32)
    plain = build_tracks(8, edges, logits, 0.5)
    pruned = build_tracks(8, edges, logits, 0.5, method="best_edges", hit_order=order)
    assert plain.tolist() == [0] * 8
    assert pruned.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def _random_scored_graph(seed, n, m):
    """(edges [2, m] with repeats and self-loops, float32 logits [m], hit order [n]) at random."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, (2, m)), rng.normal(0, 2, m).astype(np.float32), rng.random(n)


def _components(n, kept):
    """scipy's component label of each of ``n`` hits joined by the edges ``kept [2, M]``."""
    graph = coo_array((np.ones(kept.shape[1]), (kept[0], kept[1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _assert_compact_partition(labels, expected):
    """``labels`` group the hits as ``expected`` does and are the track labels 0 .. T-1 in order of
    each track's first (smallest-index) hit, as build_tracks documents."""
    assert _same_partition(labels, expected)
    values, first = np.unique(labels, return_index=True)
    assert np.array_equal(values, np.arange(len(values)))  # 0 .. T-1, none missing
    assert np.all(np.diff(first) > 0)  # track t's first hit comes before track t+1's


@pytest.mark.parametrize("seed", range(3))
def test_labels_are_the_components_of_the_kept_edges(seed):
    n = 500
    edges, logits, order = _random_scored_graph(10 + seed, n, 3000)
    labels = build_tracks(n, edges, logits, 0.3, method="best_edges", hit_order=order)
    passing = logits.astype(np.float64) > np.log(0.3 / 0.7)
    kept = edges[:, passing][:, _reference_best(edges[:, passing], logits[passing], order)]
    _assert_compact_partition(labels, _components(n, kept))


def test_empty_and_one_hit_events():
    assert build_tracks(0, np.zeros((2, 0), int), np.zeros(0), 0.5, method="best_edges", hit_order=np.zeros(0)).shape == (0,)
    assert build_tracks(1, np.zeros((2, 0), int), np.zeros(0), 0.5, method="best_edges",
                        hit_order=np.zeros(1)).tolist() == [0]


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "walk"}, "track building method must be one of components, best_edges"),
    ({"method": "best_edges"}, "needs hit_order"),
    ({"method": "best_edges", "hit_order": np.zeros(3)}, r"hit_order must be a real array of shape \[4\]"),
    ({"method": "best_edges", "hit_order": np.array([0, 1, np.nan, 2])}, "hit_order of hit 2 is not finite"),
])
def test_bad_method_or_order_is_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        build_tracks(4, np.array([[0], [1]]), np.array([1.0]), 0.5, **kwargs)


def test_hit_distances_from_scaled_features():
    features = np.array([[0.1, 0.5, 0.75], [0.01, -0.2, -1.0]], dtype=np.float32)
    got = hit_distances(features, ("r", "phi", "z"), (3000.0, np.pi, 400.0))
    np.testing.assert_allclose(got, [np.hypot(300.0, 300.0), np.hypot(30.0, 400.0)], rtol=1e-6)
    with pytest.raises(InputError, match="needs the features r and z"):
        hit_distances(features, ("r", "phi", "eta"), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def best_edges_bundle(tiny_bundle, tmp_path_factory):
    return copy_with_stages(tiny_bundle, tmp_path_factory.mktemp("best_edges_bundle") / "bundle",
                            track_building="best_edges")


def test_pipeline_and_ensemble_build_tracks_by_the_bundle_method(best_edges_bundle, tiny_bundle, sample_features):
    config = RuntimeConfig(intra_op_threads=1, graph_threads=1)
    pipeline = Pipeline(best_edges_bundle, config=config)
    assert pipeline.stages.track_building == "best_edges"
    result = pipeline.run(sample_features)
    plain = Pipeline(tiny_bundle, config=config).run(sample_features)
    assert len(np.unique(result.labels)) > len(np.unique(plain.labels))  # merged tracks split apart
    embedding = pipeline.embed(sample_features)
    filtered, _ = pipeline.filter_edges(sample_features, pipeline.build_graph(embedding))
    logits = pipeline.classify_edges("gnn", sample_features, filtered, chunked=False)
    order = hit_distances(sample_features, pipeline.bundle.feature_names, pipeline.bundle.feature_scales)
    expected = build_tracks(len(sample_features), filtered, logits, pipeline.stages.gnn_cut, method="best_edges",
                            hit_order=order)
    np.testing.assert_array_equal(result.labels, expected)
    stages = [make_stage(name, pipeline.bundle, config) for name in STAGE_NAMES]
    np.testing.assert_array_equal(run_stages(stages, sample_features), result.labels)
    with pytest.raises(InputError, match="needs the hits' features"):
        pipeline.build_tracks(len(sample_features), filtered, logits)


def test_bundle_track_building_is_validated(best_edges_bundle, tiny_bundle, tmp_path):
    assert load_bundle(tiny_bundle).stages.track_building == "components"
    bad = tmp_path / "bad"
    shutil.copytree(best_edges_bundle, bad)
    data = json.loads((bad / "pipeline.json").read_text())
    data["stages"]["track_building"] = "walk"
    (bad / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="stages.track_building: 'walk' is not one of 'components', 'best_edges'"):
        load_bundle(bad)
    data["stages"]["track_building"] = "best_edges"
    data["features"] = {"names": ["r", "phi", "eta"], "scales": [1000.0, 3.14159, 1.0]}
    (bad / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="'best_edges' orders hits by r and z"):
        load_bundle(bad)
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / "pipeline.json").read_text())
    data["stages"].pop("track_building", None)
    (old / "pipeline.json").write_text(json.dumps(data))
    assert load_bundle(old).stages.track_building == "components"


@pytest.mark.parametrize("gap_cut", [None, 0.1])
def test_a_self_loop_never_takes_a_hits_best_slot(gap_cut):
    # hit 1's only real inward edge (0, 1) must stay its best though the loop (1, 1) scores higher
    order = np.array([0.0, 1.0, 2.0])
    without = build_tracks(3, np.array([[0, 0], [2, 1]]), np.array([5.0, 3.0]), 0.5, method="best_edges",
                           hit_order=order, gap_cut=gap_cut)
    with_loop = build_tracks(3, np.array([[0, 0, 1], [2, 1, 1]]), np.array([5.0, 3.0, 9.0]), 0.5,
                             method="best_edges", hit_order=order, gap_cut=gap_cut)
    assert without.tolist() == with_loop.tolist() == [0, 0, 0]
    edges = np.array([[0, 0, 1], [2, 1, 1]])
    assert best_edges(edges, np.array([5.0, 3.0, 9.0]), order).tolist() == [True, True, False]
