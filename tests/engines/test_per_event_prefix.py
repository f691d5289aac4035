"""The filter cut after its work on the hits alone: the same outputs as the whole network."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trackserve.bundle import load_bundle
from trackserve.engines.onnx_runtime import OnnxNetwork
from trackserve.engines.per_event_prefix import split_per_event
from trackserve.errors import InputError
from trackserve.events.features import FeatureSpec, hit_features
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE
from trackserve.runtime import network_steps
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.network_steps import NetworkSteps

from ..conftest import SAMPLE_EVENT


@pytest.fixture(scope="module")
def default_features():
    bundle = load_bundle(DEFAULT_BUNDLE)
    spec = FeatureSpec(tuple(bundle.feature_names), tuple(bundle.feature_scales))
    return hit_features(read_event(SAMPLE_EVENT, parts=()).hits, spec)


def edges_with_repeats(num_hits: int, count: int, seed: int) -> np.ndarray:
    """Random edges where many share a hit (a tenth of the hits) and some repeat exactly."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, max(1, num_hits // 10), size=(2, count))
    edges[:, count // 2:] = edges[:, : count - count // 2]
    return edges


def test_the_default_filter_hands_its_per_hit_work_to_the_rest():
    split = split_per_event(onnx.load(str(DEFAULT_BUNDLE / "filter.onnx")), ("features",))
    assert split is not None
    assert split.handed  # the derived features of every hit, at least
    assert all(i.name != "features" for i in split.prefix.graph.output)
    assert {i.name for i in split.rest.graph.input} >= {"edge_index", *split.handed}
    onnx.checker.check_model(split.prefix)
    onnx.checker.check_model(split.rest)


def test_nothing_to_hoist_gives_none():
    # The embedding's output depends on the hits alone: there is no rest to hand to.
    assert split_per_event(onnx.load(str(DEFAULT_BUNDLE / "embedding.onnx")), ("features",)) is None
    # A network whose first work already reads the edges.
    graph = helper.make_graph(
        [helper.make_node("Gather", ["features", "edge_index"], ["pairs"]),
         helper.make_node("ReduceSum", ["pairs"], ["scores"], keepdims=0)],
        "edges_first",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["hits", 3]),
         helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "edges"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert split_per_event(model, ("features",)) is None
    with pytest.raises(ValueError, match="not inputs"):
        split_per_event(model, ("hits",))


@pytest.mark.parametrize("count", [0, 1, 7, 5000, 60_000])
def test_run_prepared_gives_the_whole_network_bits(default_features, count):
    network = OnnxNetwork(DEFAULT_BUNDLE / "filter.onnx", intra_op_threads=1, per_event=("features",))
    assert network.is_split
    prepared = network.prepare(features=default_features)
    edges = edges_with_repeats(default_features.shape[0], count, seed=count)
    assert np.array_equal(network.run_prepared(prepared, edge_index=edges),
                          network.run(features=default_features, edge_index=edges))


def test_one_hit_event(default_features):
    network = OnnxNetwork(DEFAULT_BUNDLE / "filter.onnx", intra_op_threads=1, per_event=("features",))
    one = default_features[:1]
    edges = np.zeros((2, 3), dtype=np.int64)
    assert np.array_equal(network.run_prepared(network.prepare(features=one), edge_index=edges),
                          network.run(features=one, edge_index=edges))


def test_bad_inputs_are_named(default_features):
    network = OnnxNetwork(DEFAULT_BUNDLE / "filter.onnx", intra_op_threads=1, per_event=("features",))
    with pytest.raises(InputError, match="dtype float32"):
        network.prepare(features=default_features.astype(np.float64))
    with pytest.raises(InputError, match="takes inputs"):
        network.prepare(features=default_features, edge_index=np.zeros((2, 1), np.int64))
    prepared = network.prepare(features=default_features)
    outside = np.array([[0], [default_features.shape[0] + 5]])
    with pytest.raises(InputError, match="network 'filter' cannot run"):
        network.run_prepared(prepared, edge_index=outside)
    with pytest.raises(InputError, match="dtype int64"):
        network.run_prepared(prepared, edge_index=outside.astype(np.int32))
    plain = OnnxNetwork(DEFAULT_BUNDLE / "filter.onnx", intra_op_threads=1)
    with pytest.raises(InputError, match="without per-event inputs"):
        plain.prepare(features=default_features)
    with pytest.raises(InputError, match="no inputs"):
        OnnxNetwork(DEFAULT_BUNDLE / "filter.onnx", intra_op_threads=1, per_event=("hits",))


def test_the_filter_in_blocks_scores_as_one_call(default_features, monkeypatch):
    """NetworkSteps scores the filter's edges in blocks on the prepared hits, on 2 threads;
    the scores are the one call's (the blocks cut parts, chunks and repeated hits)."""
    bundle = load_bundle(DEFAULT_BUNDLE)
    monkeypatch.setattr(network_steps, "FILTER_BLOCK_EDGES", 1000)
    steps = NetworkSteps(bundle, RuntimeConfig(intra_op_threads=2, edge_chunk_size=7000), ("filter",))
    assert steps.networks["filter"].session_count == 2
    edges = edges_with_repeats(default_features.shape[0], 20_500, seed=3)
    whole = steps.networks["filter"].run(features=default_features, edge_index=edges)
    blocks = steps.edge_logits("filter", default_features, edges, chunked=True)
    np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6)
