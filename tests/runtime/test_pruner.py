"""A bundle's pruner: a first GNN whose cut leaves the GNN only the edges it passes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ..conftest import assert_stages_refused
from trackserve.bundle import StageParameters, load_bundle, make_bundle
from trackserve.errors import BundleError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.cuts import logit_threshold
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.track_building import build_tracks, bundle_track_options

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def one_thread(pruned_bundle):
    return Pipeline(pruned_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))


def _filtered(pipeline, features):
    return pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))[0]


def test_the_gnn_scores_only_the_edges_the_pruner_passes(one_thread, sample_features):
    filtered = _filtered(one_thread, sample_features)
    first = one_thread.classify_edges("pruner", sample_features, filtered, chunked=False)
    keep = first.astype(np.float64) > logit_threshold(0.3)
    assert 0.2 < keep.mean() < 0.8  # both kinds of edge, many of each
    second = one_thread._steps.edge_logits("gnn", sample_features, np.ascontiguousarray(filtered[:, keep]),
                                           chunked=False)
    logits = one_thread.gnn_logits(sample_features, filtered)
    np.testing.assert_array_equal(logits[~keep], first[~keep])  # a pruned edge keeps the pruner's logit
    np.testing.assert_allclose(logits[keep], second, rtol=0, atol=1e-5 * max(1.0, np.abs(second).max()))
    # the GNN on the pruned graph is not the GNN on all the edges: the pruning changes what it computes
    unpruned = one_thread._steps.edge_logits("gnn", sample_features, filtered, chunked=False)
    assert np.abs(unpruned[keep] - logits[keep]).max() > 1e-3
    # the stage callable alone means the whole GNN step
    np.testing.assert_array_equal(one_thread.classify_edges("gnn", sample_features, filtered, chunked=False), logits)
    # the edges the GNN scores, for callers that want them
    np.testing.assert_array_equal(one_thread.pruned_edges(sample_features, filtered), filtered[:, keep])


def test_a_bundle_without_a_pruner_has_no_pruned_edges(tiny_bundle, sample_features):
    from trackserve.errors import InputError

    plain = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    with pytest.raises(InputError, match="this bundle has no pruner"):
        plain.pruned_edges(sample_features, np.zeros((2, 0), dtype=np.int64))


def test_runs_give_the_labels_of_the_pruned_scores_on_any_threads(one_thread, pruned_bundle, sample_features):
    filtered = _filtered(one_thread, sample_features)
    logits = one_thread.gnn_logits(sample_features, filtered)
    expected = build_tracks(sample_features.shape[0], filtered, logits, 0.5,
                            **bundle_track_options(one_thread.bundle, sample_features))
    result = one_thread.run(sample_features)
    np.testing.assert_array_equal(result.labels, expected)
    two = Pipeline(pruned_bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))
    np.testing.assert_allclose(two.gnn_logits(sample_features, filtered), logits, rtol=0, atol=1e-5)
    assert "pruner" in two._steps.last_gnn_layout and "GNN on" in two._steps.last_gnn_layout
    np.testing.assert_array_equal(two.run(sample_features).labels, expected)
    # the halo of each message-passing network follows its own steps
    assert two._steps.halo_hops == {"pruner": 2, "gnn": 1}


def test_zero_and_one_hit_events(one_thread, sample_features):
    assert one_thread.run(sample_features[:0]).labels.shape == (0,)
    assert one_thread.run(sample_features[:1]).labels.tolist() == [0]
    empty = np.zeros((2, 0), dtype=np.int64)
    assert one_thread.gnn_logits(sample_features, empty).shape == (0,)


def test_the_pruner_and_its_cut_come_together(pruned_bundle, tiny_bundle, tmp_path):
    data = json.loads((pruned_bundle / "pipeline.json").read_text())
    shutil.copytree(pruned_bundle, tmp_path / "no_cut")
    del data["stages"]["prune_cut"]
    (tmp_path / "no_cut" / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="has a pruner network but no 'prune_cut'"):
        load_bundle(tmp_path / "no_cut")
    shutil.copytree(tiny_bundle, tmp_path / "no_pruner")
    data = json.loads((tiny_bundle / "pipeline.json").read_text())
    data["stages"]["prune_cut"] = 0.1
    (tmp_path / "no_pruner" / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="prune_cut: 0.1 is set but the bundle has no pruner network"):
        load_bundle(tmp_path / "no_pruner")


@pytest.mark.parametrize("change, message", [
    ({"prune_cut": 0.7}, r"prune_cut: 0.7 is above gnn_cut 0.5"),
    ({"prune_cut": 1.0}, r"prune_cut: 1.0 is outside \[0, 1\)"),
    ({"prune_cut": "low"}, r"prune_cut: 'low' is not a number \(a probability in \[0, 1\)"),
    ({"track_building": "best_edges", "gap_cut": 0.2}, r"prune_cut: 0.3 is above gap_cut 0.2"),
    ({"track_building": "best_edges", "join_pieces": {"min_score": 0.1, "transverse_mm": 2.0, "z_mm": 10.0,
                                                      "single_hit_scale": 0.5, "rounds": 3}},
     r"prune_cut: 0.3 is above join_pieces.min_score 0.1"),
])
def test_a_pruning_cut_above_a_later_cut_is_refused(pruned_bundle, tmp_path, change, message):
    assert_stages_refused(pruned_bundle, tmp_path / "bad", change, message)


def test_make_bundle_refuses_a_pruner_without_its_cut(tiny_torch_networks, tmp_path):
    embedding, edge_filter, gnn = tiny_torch_networks
    stages = StageParameters(radius=1.0, max_neighbours=8, filter_cut=0.4, gnn_cut=0.5, edge_direction="i<j")
    with pytest.raises(BundleError, match="has a pruner network but no 'prune_cut'"):
        make_bundle(tmp_path / "b", {"embedding": embedding, "filter": edge_filter, "pruner": gnn, "gnn": gnn},
                    features={"names": ["r", "phi", "z"], "scales": [1000.0, 3.14159, 1000.0]}, stages=stages)
    assert not (tmp_path / "b").exists()


def test_the_ensemble_gnn_stage_runs_the_pruner_too(one_thread, sample_features):
    from trackserve.serving.interface import FEATURES
    from trackserve.serving.stages import make_stage

    filtered = _filtered(one_thread, sample_features)
    gnn = make_stage("gnn", one_thread.bundle)
    assert set(gnn.steps.networks) == {"gnn", "pruner"}
    scores = gnn({FEATURES: sample_features, "EDGE_LIST_AFTER_FILTER": filtered})["GNN_SCORES"]
    np.testing.assert_allclose(scores, one_thread.gnn_logits(sample_features, filtered), rtol=0, atol=1e-5)


def test_each_component_group_runs_the_pruner_its_cut_and_the_gnn_in_one_go(one_thread, pruned_bundle,
                                                                              sample_features, monkeypatch):
    import trackserve.runtime.network_steps as network_steps
    from trackserve.runtime.components import component_labels
    from trackserve.runtime.subgraph import touched_subgraph

    # 300 separate chains of 5 hits (1,200 edges): components enough for groups on 2 threads.
    hits = sample_features[:1500]
    chains = np.arange(1500).reshape(300, 5)
    edges = np.ascontiguousarray(np.stack([chains[:, :-1].ravel(), chains[:, 1:].ravel()]).astype(np.int64))
    found, maps = [], []

    def counted(*args, **kwargs):
        found.append(args[1].shape[1])
        return component_groups(*args, **kwargs)

    component_groups = network_steps.component_groups
    monkeypatch.setattr(network_steps, "component_groups", counted)
    two = Pipeline(pruned_bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))
    steps = two._steps
    mapped = steps.parts.map
    monkeypatch.setattr(steps.parts, "map", lambda function, parts: maps.append(len(parts)) or mapped(function, parts))
    calls = []
    for name in ("pruner", "gnn"):
        runner = steps.networks[name]
        monkeypatch.setattr(runner, "run", lambda *, _run=runner.run, _name=name, **inputs:
                            calls.append((_name, inputs["edge_index"].copy())) or _run(**inputs))
    logits = two.gnn_logits(hits, edges)
    assert found == [edges.shape[1]] and maps == [2]  # the groups found once, one hand-over to the threads
    groups = component_groups(hits.shape[0], edges, 2)
    first = one_thread.classify_edges("pruner", hits, edges, chunked=False)
    keep = first.astype(np.float64) > logit_threshold(0.3)
    assert steps.last_gnn_layout == f"pruner and GNN on 2 component groups (GNN on {int(keep.sum()):,} edges)"
    # each group's GNN call sees exactly what the kept edges of that group give, renumbered onto their hits
    kept_calls = sorted(edge_index.tolist() for name, edge_index in calls if name == "gnn")
    expected = sorted(touched_subgraph(hits, np.ascontiguousarray(edges[:, group[keep[group]]]))[1].tolist()
                      for group in groups)
    assert kept_calls == expected
    # the groups are whole components of the kept graph too
    kept = edges[:, keep]
    _, component = component_labels(hits.shape[0], kept)
    owners = [set(component[edges[0, group[keep[group]]]]) for group in groups]
    assert not owners[0] & owners[1]
    np.testing.assert_array_equal(logits[~keep], first[~keep])  # a pruned edge keeps the pruner's logit
    np.testing.assert_allclose(logits, one_thread.gnn_logits(hits, edges), rtol=0, atol=1e-5)


def test_a_graph_in_no_groups_runs_the_pruner_then_the_gnn_each_on_its_own_layout(pruned_bundle, sample_features,
                                                                                   monkeypatch):
    import trackserve.runtime.network_steps as network_steps

    # one chain through 600 hits: a single component, too few edges for halo slices
    hits = sample_features[:600]
    edges = np.ascontiguousarray(np.stack([np.arange(599), np.arange(1, 600)]).astype(np.int64))
    found = []
    component_groups = network_steps.component_groups
    monkeypatch.setattr(network_steps, "component_groups",
                        lambda *args, **kwargs: found.append(args[1].shape[1]) or component_groups(*args, **kwargs))
    two = Pipeline(pruned_bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))
    logits = two.gnn_logits(hits, edges)
    layout, looked = two._steps.last_gnn_layout, list(found)
    kept = two.pruned_edges(hits, edges).shape[1]
    assert 0 < kept < edges.shape[1]
    # looked for once on all the edges (not again for the pruner), once on the kept ones for the GNN
    assert looked == [edges.shape[1], kept]
    assert layout == f"pruner one call, GNN on {kept:,} edges one call"
    one = Pipeline(pruned_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    np.testing.assert_allclose(logits, one.gnn_logits(hits, edges), rtol=0, atol=1e-5)
