"""Vertex shifts: the passes along the beam, their merge against a brute-force reference, the pipeline and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trackserve.cli import main as cli_main
from trackserve.errors import InputError, MemoryLimitError
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.vertex_shifts import (MAX_VERTEX_SHIFTS, edge_intercepts, is_shifted, merge_by_intercept,
                                              parse_vertex_shifts, shifted_features, validate_vertex_shifts)

from ..conftest import SAMPLE_EVENT

SHIFTS = (-100.0, -50.0, 0.0, 50.0, 100.0)


# -- settings -------------------------------------------------------------------------
def test_shifts_are_sorted_floats_and_none_stays_none():
    assert validate_vertex_shifts(None) is None
    assert validate_vertex_shifts([50, np.float32(-50), 0]) == (-50.0, 0.0, 50.0)
    assert validate_vertex_shifts(np.array([10, -10])) == (-10.0, 10.0)
    assert RuntimeConfig(vertex_shifts=[0, -70, 70]).vertex_shifts == (-70.0, 0.0, 70.0)
    assert RuntimeConfig().vertex_shifts is None
    assert not is_shifted(None) and not is_shifted((0.0,)) and is_shifted((0.0, 50.0)) and is_shifted((50.0,))


@pytest.mark.parametrize("shifts, message", [
    ("-50,0,50", "sequence of numbers"),
    (5.0, "sequence of numbers"),
    ([], "1 to 16 shifts"),
    (list(range(MAX_VERTEX_SHIFTS + 1)), "1 to 16 shifts"),
    ([0, float("nan")], "not a finite number"),
    ([0, float("inf")], "not a finite number"),
    ([0, 501], "within 500 mm"),
    ([0, True], "must be numbers"),
    ([0, "50"], "must be numbers"),
    (np.array(50.0), "got a 0-d array"),
    ([10**400], "not a finite number"),
    (np.zeros((2, 2)), "got a 2-d array"),
    ([-50, 0, 50, -50.0], "repeat -50 mm"),
])
def test_bad_shifts_are_refused_by_name(shifts, message):
    with pytest.raises(InputError, match=message):
        validate_vertex_shifts(shifts)
    with pytest.raises(InputError, match=message):
        RuntimeConfig(vertex_shifts=shifts)


def test_command_line_shifts():
    assert parse_vertex_shifts("-100,-50,0,50,100") == SHIFTS
    assert parse_vertex_shifts(" 50 , -50") == (-50.0, 50.0)
    assert parse_vertex_shifts("none") == parse_vertex_shifts("0") == (0.0,)
    with pytest.raises(InputError, match=r"'a' is not a number.*|--vertex-shifts=-100"):
        parse_vertex_shifts("-100,a")
    with pytest.raises(InputError, match="repeat 0 mm"):
        parse_vertex_shifts("0,0")
    for text in ("1_0,0", "inf,0", "nan", "0x10"):
        with pytest.raises(InputError, match="is not a number"):
            parse_vertex_shifts(text)
    assert parse_vertex_shifts("+5e1,-.5") == (-0.5, 50.0)


# -- the pieces -----------------------------------------------------------------------
def test_shifted_features_move_z_and_recompute_eta():
    features = np.array([[0.1, 0.5, 0.2], [0.3, -0.5, -0.4]], dtype=np.float32)
    moved = shifted_features(features, ("r", "phi", "z"), (1000.0, np.pi, 1000.0), 100.0)
    assert moved is not features
    np.testing.assert_array_equal(moved[:, :2], features[:, :2])
    np.testing.assert_allclose(moved[:, 2], features[:, 2] - 0.1, rtol=0, atol=1e-7)
    assert shifted_features(features, ("r", "phi", "z"), (1000.0, np.pi, 1000.0), 0.0) is features
    assert features[0, 2] == np.float32(0.2)  # the input is untouched
    # eta depends on z: computed again from the moved hit, as hit_features computes it from moved hits
    from trackserve.events.features import FeatureSpec, hit_features

    spec = FeatureSpec(("r", "phi", "z", "eta"), (1000.0, np.pi, 1000.0, 2.0))
    x, y, z = np.array([100.0, -250.0, 30.0]), np.array([0.0, 60.0, -40.0]), np.array([300.0, -20.0, 0.0])
    hits = hit_features({"x": x, "y": y, "z": z}, spec)
    moved = shifted_features(hits, spec.names, spec.scales, 120.0)
    expected = hit_features({"x": x, "y": y, "z": z - 120.0}, spec)
    np.testing.assert_allclose(moved, expected, rtol=1e-6, atol=1e-6)
    assert np.abs(moved[:, 3] - hits[:, 3]).max() > 0.1


def test_edge_intercepts_on_lines_through_known_points():
    r = np.array([30.0, 60.0, 90.0, 60.0, 100.0])
    z = np.array([40.0, 70.0, 100.0, 10.0, -200.0])
    edges = np.array([[0, 0, 1, 3, 1], [1, 2, 2, 1, 4]])
    intercepts = edge_intercepts(edges, r, z)
    # hits 0, 1, 2 lie on z = 10 + r; the edge 3 -> 1 joins two hits at one radius; 1 -> 4: z = 70 - 6.75 (r - 60)
    np.testing.assert_allclose(intercepts[:3], [10.0, 10.0, 10.0])
    assert np.isnan(intercepts[3])
    np.testing.assert_allclose(intercepts[4], 70.0 + 6.75 * 60.0)


def _reference_merge(num_hits, shifts, edges, logits, r, z):
    """Edge by edge in Python: the pass nearest the clipped intercept among those holding the edge."""
    held = {}
    for k, (pass_edges, pass_logits) in enumerate(zip(edges, logits)):
        for (a, b), logit in zip(pass_edges.T.tolist(), pass_logits.tolist()):
            held.setdefault((a, b), {})[k] = logit
    merged = []
    for (a, b), by_pass in sorted(held.items()):
        if r[a] == r[b]:
            chosen = min(by_pass)
        else:
            intercept = z[a] - r[a] * (z[b] - z[a]) / (r[b] - r[a])
            intercept = min(max(intercept, min(shifts)), max(shifts))
            chosen = min(by_pass, key=lambda k: (abs(intercept - shifts[k]), k))
        merged.append((a, b, by_pass[chosen]))
    if not merged:
        return np.zeros((2, 0), dtype=np.int64), np.zeros(0, dtype=np.float32)
    array = np.array(merged)
    return array[:, :2].T.astype(np.int64), array[:, 2].astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_matches_an_edge_by_edge_reference(seed):
    rng = np.random.default_rng(seed)
    num_hits, shifts = 60, (-100.0, -50.0, 0.0, 50.0, 100.0)
    r = rng.choice([30.0, 70.0, 115.0, 170.0], size=num_hits)  # few radii: edges at one radius happen
    z = rng.uniform(-400, 400, size=num_hits).round(-1)  # coarse: intercepts exactly between two shifts happen
    pool = np.array([(a, b) for a in range(num_hits) for b in range(a + 1, num_hits)]).T
    edges, logits = [], []
    for _ in shifts:  # every pass holds a random part of one pool: the same edge in several passes
        chosen = np.sort(rng.choice(pool.shape[1], size=400, replace=False))
        edges.append(pool[:, chosen])
        logits.append(rng.normal(size=400).astype(np.float32))
    merged_edges, merged_logits = merge_by_intercept(num_hits, shifts, edges, logits, r, z)
    expected_edges, expected_logits = _reference_merge(num_hits, shifts, edges, logits, r, z)
    np.testing.assert_array_equal(merged_edges, expected_edges)
    np.testing.assert_array_equal(merged_logits, expected_logits)
    assert merged_edges.shape[1] < sum(e.shape[1] for e in edges)  # repeated edges were merged


def test_merge_refuses_what_would_pass_silently_or_fail_deep_inside():
    """QA, 2026-12-02: shifts as a numpy array raised numpy's "truth value ... ambiguous"; NaN
    or infinite positions chose a pass silently; a float num_hits was taken; float64 logits
    beyond float32 became infinities with a RuntimeWarning."""
    import warnings

    edge, logit = np.array([[0], [1]]), np.array([1.0], np.float32)
    r, z = np.array([10.0, 20.0]), np.array([0.0, 5.0])
    merged = merge_by_intercept(2, np.array([0.0, 50.0]), [edge, edge], [logit, logit], r, z)
    assert merged[0].tolist() == [[0], [1]] and merged[1].tolist() == [1.0]
    for bad in (np.nan, np.inf):
        with pytest.raises(InputError, match="z of hit 1 is not finite"):
            merge_by_intercept(2, (0.0, 50.0), [edge, edge], [logit, logit], r, np.array([0.0, bad]))
    with pytest.raises(InputError, match=r"r must be a real array of shape \[2\] \(mm, one per hit\)"):
        merge_by_intercept(2, (0.0, 50.0), [edge, edge], [logit, logit], r[:1], z)
    with pytest.raises(InputError, match="num_hits must be an integer >= 0; got 2.0"):
        merge_by_intercept(2.0, (0.0, 50.0), [edge, edge], [logit, logit], r, z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"the logits of the pass at 50 mm hold 1 finite value\(s\) beyond float32"):
            merge_by_intercept(2, (0.0, 50.0), [edge, edge], [logit, np.array([1e39])], r, z)
    # float64 logits within float32 and infinite ones are taken (as the GNN's float32 would hold them)
    _, merged = merge_by_intercept(2, (0.0, 50.0), [edge, edge], [np.array([-np.inf]), np.array([2.5])], r, z)
    assert merged.dtype == np.float32 and merged.tolist() == [-np.inf]


def test_merge_picks_the_pass_the_edge_points_to():
    # hits on a line from z = 60 mm: the pass at 50 mm decides, whatever the others say
    r = np.array([30.0, 60.0, 90.0])
    z = 60.0 + np.array([30.0, 60.0, 90.0])
    edge = np.array([[0], [1]])
    logits = [np.array([5.0], np.float32), np.array([-3.0], np.float32), np.array([1.5], np.float32)]
    _, merged = merge_by_intercept(3, (-50.0, 0.0, 50.0), [edge] * 3, logits, r, z)
    assert merged.tolist() == [1.5]
    # the pass at 50 mm lacks the edge: the nearest pass that holds it, at 0
    _, merged = merge_by_intercept(3, (-50.0, 0.0, 50.0), [edge, edge, np.zeros((2, 0), np.int64)],
                                   [logits[0], logits[1], np.zeros(0, np.float32)], r, z)
    assert merged.tolist() == [-3.0]
    # an intercept halfway between two passes (25 mm): the earlier of them, whichever order the logits favour
    _, merged = merge_by_intercept(3, (-50.0, 0.0, 50.0), [edge] * 3, logits, r, z - 35.0)
    assert merged.tolist() == [-3.0]
    _, merged = merge_by_intercept(3, (-50.0, 0.0, 50.0), [edge] * 3, logits[::-1], r, z - 35.0)
    assert merged.tolist() == [-3.0]
    # both hits at one radius (no intercept): the earliest pass holding the edge
    flat = np.array([30.0, 30.0, 90.0])
    _, merged = merge_by_intercept(3, (-50.0, 0.0, 50.0), [np.zeros((2, 0), np.int64), edge, edge],
                                   [np.zeros(0, np.float32), logits[1], logits[2]], flat, z)
    assert merged.tolist() == [-3.0]
    # an intercept beyond the shifts goes to the outermost pass
    _, merged = merge_by_intercept(3, (-50.0, 0.0, 50.0), [edge] * 3, logits, r, z + 500.0)
    assert merged.tolist() == [1.5]


def test_merge_of_empty_passes_and_of_one_pass():
    empty = np.zeros((2, 0), np.int64)
    edges, logits = merge_by_intercept(5, (-50.0, 50.0), [empty, empty], [np.zeros(0, np.float32)] * 2,
                                       np.ones(5), np.zeros(5))
    assert edges.shape == (2, 0) and logits.shape == (0,)
    one = np.array([[3, 0, 1], [4, 2, 2]])
    edges, logits = merge_by_intercept(5, (0.0,), [one], [np.array([1, 2, 3], np.float32)], np.arange(5.0), np.zeros(5))
    np.testing.assert_array_equal(edges, [[0, 1, 3], [2, 2, 4]])  # ordered by their hits
    assert logits.tolist() == [2.0, 3.0, 1.0]
    with pytest.raises(InputError, match="one edge set and one logit array per shift"):
        merge_by_intercept(5, (0.0, 50.0), [one], [np.zeros(3, np.float32)], np.arange(5.0), np.zeros(5))
    with pytest.raises(InputError, match=r"the pass at 0 mm has 3 edges but logits of shape \[2\]"):
        merge_by_intercept(5, (0.0,), [one], [np.zeros(2, np.float32)], np.arange(5.0), np.zeros(5))
    # counts that add up but belong to the wrong passes, and 2-d logits, are refused pass by pass
    two = one[:, :2]
    with pytest.raises(InputError, match="the pass at 0 mm has 3 edges but logits of shape"):
        merge_by_intercept(5, (0.0, 50.0), [one, two], [np.zeros(2, np.float32), np.zeros(3, np.float32)],
                           np.arange(5.0), np.zeros(5))
    with pytest.raises(InputError, match=r"logits of shape \[3, 1\]"):
        merge_by_intercept(5, (0.0,), [one], [np.zeros((3, 1), np.float32)], np.arange(5.0), np.zeros(5))
    # an index beyond the hits would collide with another edge's key: refused
    with pytest.raises(InputError, match="the edges of the pass at 0 mm"):
        merge_by_intercept(3, (0.0, 50.0), [np.array([[0, 1], [5, 2]]), np.zeros((2, 0), np.int64)],
                           [np.array([1.0, 2.0]), np.zeros(0)], np.arange(10.0, 40, 10), np.zeros(3))
    with pytest.raises(InputError, match=r"r must be a real array of shape \[5\] \(mm, one per hit\); got float64 \[2\]"):
        merge_by_intercept(5, (0.0,), [one], [np.zeros(3, np.float32)], np.arange(2.0), np.zeros(2))
    with pytest.raises(InputError, match="must be numbers, got dtype"):
        merge_by_intercept(5, (0.0,), [one], [np.array(["a", "b", "c"])], np.arange(5.0), np.zeros(5))
    with pytest.raises(InputError, match="merge_by_intercept takes a list of edge sets, one per shift; got NoneType"):
        merge_by_intercept(5, (0.0,), None, [np.zeros(3, np.float32)], np.arange(5.0), np.zeros(5))
    with pytest.raises(InputError, match="the logits of the pass at 0 mm is a masked array with 1 masked value"):
        merge_by_intercept(5, (0.0,), [one], [np.ma.masked_array(np.zeros(3, np.float32), mask=[0, 1, 0])],
                           np.arange(5.0), np.zeros(5))
    with pytest.raises(InputError, match="repeat 50 mm"):
        merge_by_intercept(5, (50.0, 0.0, 50.0), [one] * 3, [np.zeros(3, np.float32)] * 3, np.arange(5.0), np.zeros(5))
    with pytest.raises(InputError, match="pass at 50 mm hold 1 NaN value"):  # was merged, then refused by track building
        merge_by_intercept(5, (0.0, 50.0), [one] * 2, [np.zeros(3, np.float32), np.array([0.0, np.nan, 1.0])],
                           np.arange(5.0), np.zeros(5))


# -- the pipeline ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_features(tiny_bundle):
    return Pipeline(tiny_bundle).event_features(read_event(SAMPLE_EVENT, parts=()))


def test_one_central_pass_is_the_plain_run(tiny_bundle, sample_features):
    plain = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1)).run(sample_features)
    central = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1,
                                                         vertex_shifts=(0,))).run(sample_features)
    np.testing.assert_array_equal(plain.labels, central.labels)
    assert plain.num_edges == central.num_edges


def test_shifted_run_is_its_passes_merged(tiny_bundle, sample_features):
    """run() with shifts against the stages called by hand: each pass on moved hits, merged, tracks built once."""
    config = RuntimeConfig(intra_op_threads=2, graph_threads=2, vertex_shifts=(-60, 0, 60))
    pipeline = Pipeline(tiny_bundle, config=config)
    result = pipeline.run(sample_features)
    plain = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))
    graphs, edge_sets, logit_sets = [], [], []
    for shift in config.vertex_shifts:
        moved = sample_features.copy()
        moved[:, 2] -= np.float32(shift / 1000.0)  # TRACKML_1000: z / 1000 mm
        graphs.append(plain.build_graph(plain.embed(moved)))
        edge_sets.append(plain.filter_edges(moved, graphs[-1])[0])
        logit_sets.append(plain.gnn_logits(moved, edge_sets[-1]))
    assert len({g.shape[1] for g in graphs}) > 1  # the passes saw different graphs
    r, z = (sample_features[:, column].astype(np.float64) * 1000.0 for column in (0, 2))
    edges, logits = merge_by_intercept(len(sample_features), config.vertex_shifts, edge_sets, logit_sets, r, z)
    expected = plain.build_tracks(len(sample_features), edges, logits, sample_features)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.num_edges["graph"] == sum(g.shape[1] for g in graphs)
    assert result.num_edges["filter"] == sum(e.shape[1] for e in edge_sets)
    assert result.num_edges["merged"] == edges.shape[1] < result.num_edges["filter"]
    assert pipeline.vertex_shifts == (-60.0, 0.0, 60.0) and plain.vertex_shifts is None
    assert set(result.timings) == {"embed", "graph", "filter", "gnn", "tracks", "total"}
    merged = pipeline.merge_vertex_shifts(sample_features, edge_sets, logit_sets)
    np.testing.assert_array_equal(merged[0], edges)
    with pytest.raises(InputError, match="one pass at the centre"):
        plain.merge_vertex_shifts(sample_features, edge_sets, logit_sets)
    with pytest.raises(InputError, match=r"one edge set and one logit array per vertex shift, in the order -60, 0, 60"):
        pipeline.merge_vertex_shifts(sample_features, edge_sets[:2], logit_sets[:2])
    outside = edge_sets[2].copy()
    outside[1, 0] = len(sample_features)
    with pytest.raises(InputError, match="the edges of the pass at 60 mm"):
        pipeline.merge_vertex_shifts(sample_features, [edge_sets[0], edge_sets[1], outside], logit_sets)
    with pytest.raises(InputError, match="features"):
        pipeline.merge_vertex_shifts(sample_features[:, :2], edge_sets, logit_sets)
    with pytest.raises(InputError, match="merge_vertex_shifts takes a list of edge sets, one per vertex shift in the order"):
        pipeline.merge_vertex_shifts(sample_features, None, logit_sets)  # a raw TypeError before


def test_moving_the_hits_of_a_pass_is_timed_with_its_embedding(tiny_bundle, sample_features, monkeypatch):
    # QA, 2026-12-02: the stages of a shifted event did not add up to its total (the hits' move,
    # 0.4 ms on the sample event with five shifts, was in no stage)
    import time

    from trackserve.runtime import pipeline as pipeline_module

    moved_features = pipeline_module.shifted_features

    def slow_move(*args, **kwargs):
        time.sleep(0.05)
        return moved_features(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "shifted_features", slow_move)
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1,
                                                          vertex_shifts=(-60, 0, 60)))
    timings = pipeline.run(sample_features).timings
    assert timings["embed"] >= 0.1  # the two passes away from the centre moved their hits
    stages = sum(timings[name] for name in ("embed", "graph", "filter", "gnn", "tracks"))
    assert stages <= timings["total"] and timings["total"] - stages < 0.1  # (less than the moves took)


def test_shifted_events_in_flight_match_one_at_a_time(tiny_bundle, sample_features):
    events = [sample_features, sample_features[:1], sample_features[:0], sample_features[:700]]
    alone = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, vertex_shifts=SHIFTS))
    expected = [alone.run(features).labels for features in events]
    for executor in ("threads", "processes"):  # worker processes get the shifts with the config
        with Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,
                                                        event_executor=executor, vertex_shifts=SHIFTS)) as flight:
            results = list(flight.run_many(events))
        assert len(results) == len(expected)
        for result, labels in zip(results, expected):
            np.testing.assert_array_equal(result.labels, labels)


def test_merge_memory_is_checked(tiny_bundle, sample_features):
    plain = Pipeline(tiny_bundle, config=RuntimeConfig(vertex_shifts=SHIFTS))
    limit = plain.memory.bytes_per_hit * len(sample_features) + 1000
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(vertex_shifts=SHIFTS))
    with pytest.raises(MemoryLimitError, match="merging the vertex-shift passes"):
        pipeline.memory.check_merged_edges(len(sample_features), 100, limit)
    pipeline.memory.check_merged_edges(len(sample_features), 6, limit)


def test_a_bundle_without_z_cannot_shift(tiny_bundle, tmp_path):
    pytest.importorskip("torch")
    from trackserve.bundle import load_bundle, make_bundle
    from trackserve.events.features import FeatureSpec

    from ..conftest import _tiny_networks

    embedding, edge_filter, gnn = _tiny_networks(3, seed=3)
    make_bundle(tmp_path / "no-z", {"embedding": embedding, "filter": edge_filter, "gnn": gnn},
                features=FeatureSpec(("r", "phi", "eta"), (1000.0, np.pi, 1.0)), stages=load_bundle(tiny_bundle).stages,
                provenance={"data": "random weights, for tests"})
    Pipeline(tmp_path / "no-z")  # one pass is fine
    with pytest.raises(InputError, match=r"needs the features r, z; this bundle reads r, phi, eta \(no z\)"):
        Pipeline(tmp_path / "no-z", config=RuntimeConfig(vertex_shifts=(-50, 0, 50)))


# -- the command line -----------------------------------------------------------------
def test_run_with_vertex_shifts(tiny_bundle, tmp_path, capsys):
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--json", "--vertex-shifts=-50,0,50",
                     str(SAMPLE_EVENT)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["vertex_shifts"] == [-50.0, 0.0, 50.0]
    expected = Pipeline(tiny_bundle, config=RuntimeConfig(vertex_shifts=(-50, 0, 50))).run_event(
        read_event(SAMPLE_EVENT))
    assert report["events"][0]["num_edges"] == expected.num_edges
    assert report["events"][0]["num_tracks_min_hits"] == expected.num_tracks_with(5)
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--vertex-shifts=-50,0,50",
                     str(SAMPLE_EVENT)]) == 0
    out = capsys.readouterr().out
    assert "3 passes at vertex shifts -50, 0, 50 mm" in out and " merged " in out.splitlines()[0]
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--json", str(SAMPLE_EVENT)]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["vertex_shifts"] == [0.0]


def test_run_refuses_bad_vertex_shifts(tiny_bundle, capsys):
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--vertex-shifts=-50,x",
                     str(SAMPLE_EVENT)]) != 0
    assert "'x' is not a number" in capsys.readouterr().err


# -- tuning the cuts on shifted runs --------------------------------------------------
def test_scored_edges_are_what_run_builds_tracks_from(tiny_bundle, sample_features):
    for shifts in (None, (-60, 0, 60)):
        pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1,
                                                              vertex_shifts=shifts))
        edges, logits = pipeline.scored_edges(sample_features)
        labels = pipeline.build_tracks(len(sample_features), edges, logits, sample_features)
        np.testing.assert_array_equal(labels, pipeline.run(sample_features).labels)
    with pytest.raises(InputError, match="takes an event's features array"):
        pipeline.scored_edges(read_event(SAMPLE_EVENT))


def test_tune_cut_scores_the_validation_events_with_the_shifts(tiny_bundle, tmp_path, capsys):
    import shutil

    from trackserve.bundle import load_bundle
    from trackserve.runtime.cut_tuning import ValidationSet

    event = read_event(SAMPLE_EVENT, parts=("truth", "particles"))
    shifted = Pipeline(tiny_bundle, config=RuntimeConfig(vertex_shifts=(-60, 0, 60)))
    validation = ValidationSet(shifted, event)
    expected = shifted.scored_edges(shifted.event_features(event))
    np.testing.assert_array_equal(validation.scored[0][0], expected[0])
    np.testing.assert_array_equal(validation.scored[0][1], expected[1])
    assert validation.scored[0][0].shape != ValidationSet(Pipeline(tiny_bundle), event).scored[0][0].shape

    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")  # random weights find no particle to tune on
    assert cli_main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                     "--vertex-shifts=-60,0,60", "--write"]) == 0
    assert "3 passes at vertex shifts -60, 0, 60 mm, merged" in capsys.readouterr().out
    assert load_bundle(bundle).provenance["gnn_cut_tuned"]["vertex_shifts"] == [-60.0, 0.0, 60.0]

    # the bundle now runs at its shifts: a pipeline, bundle-info and a further tuning take them
    tuned = load_bundle(bundle)
    assert tuned.stages.vertex_shifts == (-60.0, 0.0, 60.0)
    assert json.loads((bundle / "pipeline.json").read_text())["stages"]["vertex_shifts"] == [-60.0, 0.0, 60.0]
    assert Pipeline(bundle).vertex_shifts == (-60.0, 0.0, 60.0)
    assert Pipeline(bundle, config=RuntimeConfig(vertex_shifts=(0,))).vertex_shifts is None  # the runtime overrides
    assert cli_main(["bundle-info", str(bundle)]) == 0
    assert "vertex_shifts -60, 0, 60 mm" in capsys.readouterr().out
    assert cli_main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                     "--write"]) == 0
    assert "3 passes at vertex shifts -60, 0, 60 mm, merged" in capsys.readouterr().out
    assert load_bundle(bundle).stages.vertex_shifts == (-60.0, 0.0, 60.0)
    # tuned for one pass again: the shifts leave the stages
    assert cli_main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                     "--vertex-shifts", "0", "--write"]) == 0
    record = load_bundle(bundle).provenance["gnn_cut_tuned"]
    assert load_bundle(bundle).stages.vertex_shifts is None and "vertex_shifts" not in json.loads(
        (bundle / "pipeline.json").read_text())["stages"]
    assert record["vertex_shifts"] == [0.0] and record["earlier"][0]["vertex_shifts"] == [-60.0, 0.0, 60.0]
    assert record["previous"]["vertex_shifts"] == [-60.0, 0.0, 60.0] and record["stages"]["vertex_shifts"] is None
    assert "and one pass in" in capsys.readouterr().out.split("stored ")[1]
    assert cli_main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--vertex-shifts=1,x"]) == 2
    assert "'x' is not a number" in capsys.readouterr().err


def test_a_negative_list_may_follow_the_option_after_a_space(tiny_bundle, capsys):
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--json", "--vertex-shifts", "-50,0,50",
                     str(SAMPLE_EVENT)]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["vertex_shifts"] == [-50.0, 0.0, 50.0]
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--json", "--vertex-shifts", "none",
                     str(SAMPLE_EVENT)]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["vertex_shifts"] == [0.0]
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--json", "--vertex-shift", "-50,50",
                     str(SAMPLE_EVENT)]) == 0  # the prefix argparse takes for it
    assert json.loads(capsys.readouterr().out)["settings"]["vertex_shifts"] == [-50.0, 50.0]
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--json", "--v", "-50", str(SAMPLE_EVENT)]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["vertex_shifts"] == [-50.0]
    with pytest.raises(SystemExit):  # an option after it is no value
        cli_main(["run", "--vertex-shifts", "--json"])
    assert "--vertex-shifts: expected one argument" in capsys.readouterr().err


# -- a bundle that runs at vertex shifts ----------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("-50,50", "is not a list of positions along the beam"),
    ([0, 0], "repeat 0 mm"),
    ([0, 700], "within 500 mm"),
    ([], "1 to 16 shifts"),
    ([0, None], "must be numbers"),
])
def test_bad_bundle_shifts_are_refused(tiny_bundle, tmp_path, value, message):
    from ..conftest import assert_stages_refused

    assert_stages_refused(tiny_bundle, tmp_path / "bad", {"vertex_shifts": value}, f"stages.vertex_shifts: .*{message}")


def test_bundle_shifts_run_and_one_pass_is_stored_as_none(tiny_bundle, tmp_path, sample_features):
    from trackserve.bundle import StageParameters, load_bundle

    from ..conftest import copy_with_stages

    shifted = copy_with_stages(tiny_bundle, tmp_path / "shifted", vertex_shifts=[60, -60, 0])
    assert load_bundle(shifted).stages.vertex_shifts == (-60.0, 0.0, 60.0)
    labels = Pipeline(shifted, config=RuntimeConfig(intra_op_threads=1, graph_threads=1)).run(sample_features).labels
    given = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, vertex_shifts=(-60, 0, 60)))
    np.testing.assert_array_equal(labels, given.run(sample_features).labels)
    central = copy_with_stages(tiny_bundle, tmp_path / "central", vertex_shifts=[0])
    assert load_bundle(central).stages.vertex_shifts is None
    assert StageParameters.from_dict({**load_bundle(tiny_bundle).stages.to_dict(), "vertex_shifts": [0.0]}).to_dict() \
        == load_bundle(tiny_bundle).stages.to_dict()


def test_a_bundle_without_r_or_z_cannot_store_shifts(tiny_bundle, tmp_path):
    from trackserve.bundle import load_bundle
    from trackserve.errors import BundleError

    from ..conftest import copy_with_stages

    bad = copy_with_stages(tiny_bundle, tmp_path / "bad", vertex_shifts=[-50, 50])
    data = json.loads((bad / "pipeline.json").read_text())
    data["features"]["names"] = ["r", "phi", "x"]  # (also contradicts the networks' configs: both named)
    (bad / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"stages.vertex_shifts: .* lack r or z"):
        load_bundle(bad)


def test_one_shift_away_from_the_centre_is_one_moved_pass(tiny_bundle, sample_features, capsys):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, vertex_shifts=(50,)))
    result = pipeline.run(sample_features)
    plain = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    moved = shifted_features(sample_features, ("r", "phi", "z"), (1000.0, np.pi, 1000.0), 50.0)
    filtered = plain.filter_edges(moved, plain.build_graph(plain.embed(moved)))[0]
    assert result.num_edges["merged"] == result.num_edges["filter"] == filtered.shape[1]
    assert cli_main(["run", "--bundle", str(tiny_bundle), "--no-labels", "--vertex-shifts", "50", str(SAMPLE_EVENT)]) == 0
    out = capsys.readouterr().out
    assert "; one pass at vertex shift 50 mm)" in out and "summed over the passes" not in out
    assert cli_main(["run", "--no-labels", "--vertex-shifts=50,50", str(SAMPLE_EVENT)]) == 2
    assert "error: --vertex-shifts repeat 50 mm" in capsys.readouterr().err


def test_a_bundle_changed_in_memory_keeps_its_stages_in_processes_and_copies(tiny_bundle, sample_features):
    import dataclasses
    import pickle

    from trackserve.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    changed = dataclasses.replace(bundle, stages=dataclasses.replace(bundle.stages, vertex_shifts=(-60.0, 0.0, 60.0),
                                                                     gnn_cut=0.7))
    alone = Pipeline(changed, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    copy = pickle.loads(pickle.dumps(alone))
    assert copy.vertex_shifts == (-60.0, 0.0, 60.0) and copy.stages == changed.stages
    assert pickle.loads(pickle.dumps(Pipeline(tiny_bundle))).stages == bundle.stages
    events = [sample_features[:900], sample_features]
    with Pipeline(changed, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,
                                                event_executor="processes")) as flight:
        results = list(flight.run_many(events))
    for result, features in zip(results, events):
        np.testing.assert_array_equal(result.labels, alone.run(features).labels)
        assert "merged" in result.num_edges


def test_a_shift_out_of_range_is_named_by_the_option_that_gave_it():
    """QA, 2026-12-02: the message named the shift but not the option, unlike the others."""
    from trackserve.runtime.vertex_shifts import parse_vertex_shifts

    with pytest.raises(InputError, match=r"^--vertex-shifts: vertex shift 1000000.0 mm is not a finite number within 500 mm"):
        parse_vertex_shifts("0,1e6")
