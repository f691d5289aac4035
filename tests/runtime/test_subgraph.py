"""Running a message-passing GNN on the touched hits only gives the same scores, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.engines.scatter_split import open_network
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.subgraph import LOCAL_GNN_ARCHITECTURES, touched_subgraph


def test_touched_hits_keep_their_order_and_edges_their_endpoints():
    features = np.arange(24, dtype=np.float32).reshape(8, 3)
    # Repeated edges, a self-loop and both directions; hits 0, 2, 5 and 7 untouched.
    edges = np.array([[6, 3, 1, 1, 4, 6], [1, 4, 6, 6, 4, 3]], dtype=np.int64)
    sub_features, sub_edges = touched_subgraph(features, edges)
    touched = np.array([1, 3, 4, 6])
    assert np.array_equal(sub_features, features[touched])
    assert np.array_equal(touched[sub_edges], edges)  # same edges, same order
    assert sub_edges.dtype == np.int64 and sub_features.flags.c_contiguous


def test_all_hits_touched_returns_the_inputs_unchanged():
    features = np.ones((3, 2), dtype=np.float32)
    edges = np.array([[0, 1], [1, 2]], dtype=np.int64)
    sub_features, sub_edges = touched_subgraph(features, edges)
    assert sub_features is features and sub_edges is edges


def test_the_export_architectures_of_gnns_are_known():
    from trackserve.export.networks import ARCHITECTURES

    assert LOCAL_GNN_ARCHITECTURES <= set(ARCHITECTURES)


def _gnn(architecture: str):
    import torch

    from trackserve.export.interaction_gnn import InteractionGNN
    from trackserve.export.resagnn import ResAGNN

    torch.manual_seed(5)
    if architecture == "InteractionGNN":
        return InteractionGNN(in_channels=3, hidden=16, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2).eval()
    return ResAGNN(in_channels=3, hidden=16, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2).eval()


@pytest.mark.parametrize("architecture", sorted(LOCAL_GNN_ARCHITECTURES))
def test_gnn_scores_on_the_touched_hits_equal_the_whole_event(tmp_path, architecture):
    pytest.importorskip("torch")
    from trackserve.export.onnx_export import export_network

    path = export_network(_gnn(architecture), "gnn", tmp_path / "gnn.onnx", validate=False).path
    network = open_network(path, intra_op_threads=2)
    rng = np.random.default_rng(3)
    features = rng.normal(size=(3000, 3)).astype(np.float32)
    # Few touched hits, hubs with many repeated destinations, one edge, a self-loop,
    # and a graph large enough for the split (scipy scatter) path.
    cases = [
        rng.integers(0, 3000, size=(2, 40)),
        np.stack([rng.integers(0, 3000, size=400), rng.choice([7, 2999, 1500], size=400)]),
        np.array([[2999], [0]]),
        np.array([[11], [11]]),
        rng.integers(0, 3000, size=(2, 30_000)),
    ]
    for edges in cases:
        edges = edges.astype(np.int64)
        whole = network.run(features=features, edge_index=edges)
        sub_features, sub_edges = touched_subgraph(features, edges)
        assert np.array_equal(network.run(features=sub_features, edge_index=sub_edges), whole)


def test_pipeline_gnn_scores_labels_and_counts_do_not_change(tiny_bundle):
    from trackserve.events.trackml import read_event

    from ..conftest import SAMPLE_EVENT

    fast = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    plain = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    plain._steps.is_local["gnn"] = False
    assert fast._steps.is_local["gnn"]
    features = fast.event_features(read_event(SAMPLE_EVENT, parts=()))
    for count in (2, 300, 4000):
        part = features[:count]
        edges = fast.build_graph(fast.embed(part))
        kept, _ = fast.filter_edges(part, edges)
        logits = fast.gnn_logits(part, kept)
        assert np.array_equal(logits, fast.classify_edges("gnn", part, kept, chunked=False))
        a, b = fast.run(part), plain.run(part)
        assert np.array_equal(a.labels, b.labels)
        assert a.num_edges == b.num_edges
