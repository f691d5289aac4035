"""ScatterSplitNetwork against the whole-graph ONNX Runtime session: identical bits."""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.engines.onnx_runtime import OnnxNetwork
from trackserve.engines import row_blocks, scatter_split
from trackserve.engines.scatter_split import ScatterSplitNetwork, _scatter_add, open_network
from trackserve.errors import InputError

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def gnn_path(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from trackserve.export.interaction_gnn import InteractionGNN
    from trackserve.export.onnx_export import export_network

    torch.manual_seed(0)
    module = InteractionGNN(in_channels=3, hidden=8, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2).eval()
    path = tmp_path_factory.mktemp("gnn") / "gnn.onnx"
    export_network(module, "gnn", path, num_features=3, validate=False)
    return path


def _graph(num_hits, num_edges):
    rng = np.random.default_rng(num_edges)
    features = rng.normal(size=(num_hits, 3)).astype(np.float32)
    # Many repeated destinations: the order of the additions matters at float32 rounding.
    edges = rng.integers(0, num_hits, (2, num_edges)).astype(np.int64)
    return features, edges


@pytest.mark.parametrize("num_hits, num_edges", [(1, 1), (2, 0), (50, 3000), (5000, 40000)])
def test_sequential_form_same_bits_as_whole_session_at_one_thread(gnn_path, num_hits, num_edges):
    features, edges = _graph(num_hits, num_edges)
    expected = OnnxNetwork(gnn_path, intra_op_threads=1).run(features=features, edge_index=edges)
    network = ScatterSplitNetwork(gnn_path, intra_op_threads=2)  # below SPLIT_MIN_THREADS
    for _ in range(2):
        got = network.run(features=features, edge_index=edges)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("num_hits, num_edges", [(1, 1), (50, 3000), (5000, 40000)])
def test_split_form_same_bits_as_whole_session(gnn_path, num_hits, num_edges, monkeypatch):
    monkeypatch.setattr(scatter_split, "SPLIT_MIN_INPUT_ELEMENTS", 0)
    # only a network without a blocked form of rows runs split
    monkeypatch.setattr(row_blocks, "RowBlockedForm", _no_blocked_form)
    features, edges = _graph(num_hits, num_edges)
    threads = scatter_split.SPLIT_MIN_THREADS
    expected = OnnxNetwork(gnn_path, intra_op_threads=threads).run(features=features, edge_index=edges)
    split = ScatterSplitNetwork(gnn_path, intra_op_threads=threads)
    for _ in range(2):  # the incidence cache must not leak between calls
        got = split.run(features=features, edge_index=edges)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


def _no_blocked_form(*args, **kwargs):
    raise row_blocks.BlockedFormUnavailable("not in this test")


def test_many_threads_run_a_network_with_a_blocked_form_on_the_callers_threads(gnn_path, monkeypatch):
    monkeypatch.setattr(scatter_split, "SPLIT_MIN_INPUT_ELEMENTS", 0)
    features, edges = _graph(5000, 40000)
    expected = ScatterSplitNetwork(gnn_path, intra_op_threads=1).run(features=features, edge_index=edges)
    network = ScatterSplitNetwork(gnn_path, intra_op_threads=scatter_split.SPLIT_MIN_THREADS)
    assert network.uses_one_thread(features.size + edges.size)  # parts of the graph at once, not the split form
    assert np.array_equal(network.run(features=features, edge_index=edges), expected)


def test_sequential_model_has_row_scatters_and_no_expanded_indices(gnn_path):
    import onnx

    model = onnx.load(str(gnn_path))
    rewritten = scatter_split.sequential_scatter_model(model)
    ops = [node.op_type for node in rewritten.graph.node]
    scatters = len(scatter_split.splittable_scatters(model))
    assert scatters == 3  # one per message-passing iteration
    assert ops.count("ScatterElements") == 0
    rows = [n for n in rewritten.graph.node if n.op_type == "ScatterND"
            and any(a.name == "reduction" and a.s == b"add" for a in n.attribute)]
    assert len(rows) == scatters
    expanded = {out for node in rewritten.graph.node if node.op_type == "Expand" for out in node.output}
    assert not any(name in expanded for row in rows for name in row.input)  # the [E, 1] index itself
    # ... and the messages themselves, not a copy of them all (Slice to the expanded shape).
    sliced = {out for node in rewritten.graph.node if node.op_type == "Slice" for out in node.output}
    assert not any(row.input[2] in sliced for row in rows)
    assert ops.count("Slice") == [n.op_type for n in model.graph.node].count("Slice") - scatters
    assert ops.count("Expand") == [n.op_type for n in model.graph.node].count("Expand") - scatters
    assert [node.op_type for node in model.graph.node].count("ScatterElements") == scatters  # original untouched


def test_sequential_form_counts_negative_indices_from_the_end_like_the_whole_graph(gnn_path):
    features, edges = _graph(40, 500)
    edges[:, ::7] -= 40  # the same hits, written as negative indices
    expected = OnnxNetwork(gnn_path, intra_op_threads=1).run(features=features, edge_index=edges)
    got = ScatterSplitNetwork(gnn_path, intra_op_threads=1).run(features=features, edge_index=edges)
    assert np.array_equal(got, expected)


def test_sequential_form_refuses_an_index_outside_the_hits(gnn_path):
    network = ScatterSplitNetwork(gnn_path, intra_op_threads=1)
    features, edges = _graph(10, 20)
    edges[1, 3] = 10
    with pytest.raises(InputError, match="cannot run on these inputs"):
        network.run(features=features, edge_index=edges)


@pytest.mark.parametrize("index", [10, -11])
def test_an_index_outside_the_hits_is_named_not_onnx_runtimes_text(gnn_path, tiny_bundle, index):
    # before: ONNX Runtime's "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ... Gather node ..." text
    features, edges = _graph(10, 20)
    edges[1, 3] = index
    filter_inputs = {"features": features[:, :OnnxNetwork(tiny_bundle / "filter.onnx").inputs[0].shape[1]],
                     "edge_index": edges}
    for network, inputs in ((ScatterSplitNetwork(gnn_path, intra_op_threads=1), {"features": features, "edge_index": edges}),
                            (OnnxNetwork(tiny_bundle / "filter.onnx"), filter_inputs)):
        with pytest.raises(InputError) as error:
            network.run(**inputs)
        assert f"edge_index holds 1 hit index(es) outside the 10 hits (first {index}; an index must lie in " \
               "[-10, 10)" in str(error.value)
        assert "ONNXRuntimeError" not in str(error.value)


def test_open_network_splits_only_graphs_with_scatter_adds(gnn_path, tiny_bundle):
    assert isinstance(open_network(gnn_path), ScatterSplitNetwork)
    embedding = open_network(tiny_bundle / "embedding.onnx")
    assert type(embedding) is OnnxNetwork


def _sequential(data, index, updates):
    out = data.copy()
    full = np.broadcast_to(index, updates.shape)
    for e in range(updates.shape[0]):
        for c in range(updates.shape[1]):
            out[full[e, c] % data.shape[0], c] += updates[e, c]
    return out


def test_scatter_add_fast_and_general_paths_add_in_update_order():
    rng = np.random.default_rng(3)
    updates = rng.normal(size=(400, 3)).astype(np.float32) * np.float32(1e4) ** rng.integers(-1, 2, (400, 1))
    index = rng.integers(-5, 5, (400, 1))  # negative indices count from the end
    zeros = np.zeros((5, 3), np.float32)
    np.testing.assert_array_equal(_scatter_add(zeros, index, updates, {}, "t"), _sequential(zeros, index, updates))
    data = rng.normal(size=(5, 3)).astype(np.float32)  # non-zero data: the general path
    np.testing.assert_array_equal(_scatter_add(data, index, updates, {}, "t"), _sequential(data, index, updates))


def test_scatter_index_out_of_range_is_an_input_error():
    with pytest.raises(InputError, match="outside"):
        _scatter_add(np.zeros((3, 2), np.float32), np.array([[3]]), np.ones((1, 2), np.float32), {}, "t")
