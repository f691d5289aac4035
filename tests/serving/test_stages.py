"""The ensemble's stages, chained in-process, against the local runtime (no server needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trackserve.errors import InputError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline
from trackserve.serving.interface import ENSEMBLE_STAGES, FEATURES, LABELS, STAGE_NAMES
from trackserve.serving.stages import make_stage, run_stages


def _stages(pipeline, config=None):
    return [make_stage(name, pipeline.bundle, config) for name in STAGE_NAMES]


def test_every_stage_input_is_produced_before_it_is_used():
    produced = {FEATURES}
    for stage in ENSEMBLE_STAGES:
        assert set(stage.inputs) <= produced, stage.name
        produced |= set(stage.outputs)
    assert LABELS in produced


def test_chained_stages_give_the_runtime_labels_on_the_sample_event(tiny_bundle, tiny_pipeline, sample_features,
                                                                    tmp_path):
    """The tiny bundle's random GNN passes every edge; a copy cut between the two GNN scores of
    the widest gap near the median keeps about half of them, so the labels depend on GNN_SCORES."""
    from tests.conftest import copy_with_stages

    _, logits = tiny_pipeline.scored_edges(sample_features)
    ranked = np.sort(logits.astype(np.float64))
    middle = np.arange(len(ranked) // 3, 2 * len(ranked) // 3)
    widest = middle[np.argmax(ranked[middle + 1] - ranked[middle])]
    cut = float(1 / (1 + np.exp(-(ranked[widest] + ranked[widest + 1]) / 2)))
    pipeline = Pipeline(copy_with_stages(tiny_bundle, tmp_path / "cut", gnn_cut=cut))
    expected = pipeline.run(sample_features)
    assert expected.num_edges["filter"] / 3 <= expected.num_edges["gnn"] <= 2 * expected.num_edges["filter"] / 3, \
        "the GNN cut must keep some edges and remove others, or the comparison proves little"
    uncut = tiny_pipeline.run(sample_features)
    assert uncut.num_edges["gnn"] == uncut.num_edges["filter"] == expected.num_edges["filter"]
    assert not np.array_equal(expected.labels, uncut.labels)  # the GNN's cut changed the tracks
    labels = run_stages(_stages(pipeline), sample_features)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected.labels)


def test_chunked_filter_gives_the_same_labels(tiny_bundle, sample_features):
    config = RuntimeConfig(edge_chunk_size=997, intra_op_threads=1, graph_threads=1)
    pipeline = Pipeline(tiny_bundle, config=config)
    assert pipeline.run(sample_features).num_edges["graph"] > 10 * 997
    np.testing.assert_array_equal(run_stages(_stages(pipeline, config), sample_features), pipeline.run(sample_features).labels)


def test_chained_stages_on_real_service_events(tiny_pipeline, lrt_features):
    stages = _stages(tiny_pipeline)
    for features in lrt_features:
        np.testing.assert_array_equal(run_stages(stages, features), tiny_pipeline.run(features).labels)


@pytest.mark.parametrize("num_hits", [0, 1, 2])
def test_tiny_events(tiny_pipeline, sample_features, num_hits):
    features = np.ascontiguousarray(sample_features[:num_hits])
    labels = run_stages(_stages(tiny_pipeline), features)
    np.testing.assert_array_equal(labels, tiny_pipeline.run(features).labels)
    assert labels.shape == (num_hits,)


def test_bad_features_are_refused_by_the_first_stage(tiny_pipeline, sample_features):
    embed = make_stage("embed", tiny_pipeline.bundle)
    bad = sample_features[:10].copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="hit 3"):
        embed({FEATURES: bad})
    with pytest.raises(InputError, match="float32"):
        embed({FEATURES: sample_features[:10].astype(np.float64)})


def test_features_the_networks_cannot_take_are_refused_alike_by_both_layouts():
    # Two equal hits at 1e16 gave the filter a NaN for their edge: the custom model dropped the
    # edge and answered, the ensemble refused it naming FILTER_SCORES, a tensor the client never
    # sent; at 3e38 the ensemble did not say why.
    from trackserve.paths import DEFAULT_BUNDLE

    pipeline = Pipeline(DEFAULT_BUNDLE)
    stages = _stages(pipeline)
    rng = np.random.default_rng(2)
    features = np.stack([rng.uniform(0.03, 0.3, 200), rng.uniform(-1, 1, 200), rng.uniform(-2, 2, 200)],
                        axis=1).astype(np.float32)
    for value, message in [(1e16, "the filter network gives NaN for 1 edge(s), the first between hits 0 and 1 "),
                           (3e38, "the embedding network gives NaN or infinite values for hit 0 ")]:
        bad = features.copy()
        bad[:2] = value
        for run in (pipeline.run, lambda features: run_stages(stages, features)):
            with pytest.raises(InputError) as refused:
                run(bad)
            assert message in str(refused.value) and "were they divided by the bundle's scales?" in str(refused.value)


def test_a_gnn_logit_that_is_not_a_number_is_refused_by_the_gnn_stage():
    # as the filter's above: an edge whose GNN logit is NaN is named, never dropped in silence
    from tests.runtime.test_pipeline import _features_with_a_gnn_nan
    from trackserve.paths import DEFAULT_BUNDLE

    pipeline = Pipeline(DEFAULT_BUNDLE)
    features, edges, (first, second) = _features_with_a_gnn_nan(pipeline)
    gnn = make_stage("gnn", pipeline.bundle)
    with pytest.raises(InputError) as refused:
        gnn({FEATURES: features, "EDGE_LIST_AFTER_FILTER": edges})
    assert (f"the gnn network gives NaN for 1 edge(s), the first between hits {first} and {second} (0-based; "
            f"features {features[first].tolist()} and {features[second].tolist()}): ") in str(refused.value)
    assert "were they divided by the bundle's scales?" in str(refused.value)
    scores = gnn({FEATURES: features, "EDGE_LIST_AFTER_FILTER": edges[:, :-1]})["GNN_SCORES"]
    np.testing.assert_array_equal(scores, pipeline.gnn_logits(features, edges[:, :-1]))


def test_stage_inputs_of_wrong_shape_are_refused(tiny_pipeline):
    applyfilter = make_stage("applyfilter", tiny_pipeline.bundle)
    edges = np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int64)
    with pytest.raises(InputError, match=r"FILTER_SCORES must have shape \[3\]"):
        applyfilter({"EDGE_LIST": edges, "FILTER_SCORES": np.zeros(2, dtype=np.float32)})
    with pytest.raises(InputError, match=r"EDGE_LIST must have shape \[2, M\]"):
        applyfilter({"EDGE_LIST": edges.T.copy(), "FILTER_SCORES": np.zeros(3, dtype=np.float32)})
    # NaN filter scores passed no cut and their edges were dropped silently (wcc refused NaN GNN scores)
    with pytest.raises(InputError, match="FILTER_SCORES: score of edge 0 is NaN \\(2 NaN scores in all\\)"):
        applyfilter({"EDGE_LIST": edges, "FILTER_SCORES": np.array([np.nan, 1, np.nan], dtype=np.float32)})
    wcc = make_stage("wcc", tiny_pipeline.bundle)
    with pytest.raises(InputError, match="GNN_SCORES: score of edge 1 is NaN"):
        wcc({FEATURES: np.zeros((4, 3), dtype=np.float32), "EDGE_LIST_AFTER_FILTER": edges,
             "GNN_SCORES": np.array([1, np.nan, 1], dtype=np.float32)})


def test_unknown_stage_is_named(tiny_pipeline):
    with pytest.raises(InputError, match="unknown ensemble stage 'cluster'.*embed, frnn"):
        make_stage("cluster", tiny_pipeline.bundle)


@pytest.mark.filterwarnings("ignore::trackserve.errors.GraphConventionWarning")  # an edge j -> i on purpose
def test_gnn_stage_scores_the_touched_hits_as_the_pipeline_does(tiny_pipeline, sample_features):
    gnn = make_stage("gnn", tiny_pipeline.bundle)
    assert gnn.steps.is_local["gnn"]
    # a few edges among many hits: most hits untouched, repeated destinations
    edges = np.array([[0, 5, 7, 7, 900], [5, 7, 900, 901, 5]], dtype=np.int64)
    scores = gnn({FEATURES: sample_features, "EDGE_LIST_AFTER_FILTER": edges})["GNN_SCORES"]
    np.testing.assert_array_equal(scores, tiny_pipeline.gnn_logits(sample_features, edges))
    whole = tiny_pipeline.classify_edges("gnn", sample_features, edges, chunked=False)
    np.testing.assert_allclose(scores, whole, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match=f"refers to hit {sample_features.shape[0]}, but the event has"):
        gnn({FEATURES: sample_features, "EDGE_LIST_AFTER_FILTER": edges + sample_features.shape[0] - 901})


@pytest.mark.parametrize("stage, edges_name", [("filter", "EDGE_LIST"), ("gnn", "EDGE_LIST_AFTER_FILTER")])
@pytest.mark.parametrize("bad", [-1, "num_hits"])
def test_edge_stages_refuse_indices_outside_the_event(tiny_pipeline, sample_features, stage, edges_name, bad):
    # a negative index would silently wrap to the last hit in a gather
    index = sample_features.shape[0] if bad == "num_hits" else bad
    edges = np.array([[0, index], [5, 3]], dtype=np.int64)
    with pytest.raises(InputError, match=f"{edges_name} refers to hit {index}, but the event has"):
        make_stage(stage, tiny_pipeline.bundle)({FEATURES: sample_features, edges_name: edges})


def test_the_filter_cut_is_decided_in_float64_as_the_custom_model_decides_it(tiny_pipeline):
    # a float32 score that float32 comparison rounds onto the threshold: the two layouts kept different edges
    from trackserve.runtime.cuts import logit_threshold, passes_cut

    cut = 0.0028
    threshold = logit_threshold(cut)
    at = np.float32(threshold)  # rounds up or down onto the float32 grid
    scores = np.array([at, np.nextafter(at, np.float32(-np.inf)), np.nextafter(at, np.float32(np.inf))],
                      dtype=np.float32)
    expected = scores.astype(np.float64) > threshold
    assert float(at) != threshold  # so a float32 comparison would see the score equal to the threshold
    assert expected.tolist() != (scores > np.float32(threshold)).tolist()
    stage = make_stage("applyfilter", tiny_pipeline.bundle)
    stage.stages = dataclasses.replace(stage.stages, filter_cut=cut)
    edges = np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int64)
    kept = stage({"EDGE_LIST": edges, "FILTER_SCORES": scores})["EDGE_LIST_AFTER_FILTER"]
    assert kept.tolist() == edges[:, expected].tolist()
    assert passes_cut(scores, cut).tolist() == expected.tolist()
