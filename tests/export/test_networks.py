"""The network definitions against independent references (dense matrices, explicit loops) and ONNX Runtime."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trackserve.errors import CheckpointImportError
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.interaction_gnn import InteractionGNN
from trackserve.export.mlp import make_mlp
from trackserve.export.networks import ARCHITECTURES, build_network
from trackserve.export.resagnn import ResAGNN
from trackserve.export.scatter import scatter_sum

torch.set_num_threads(2)


def random_graph(num_nodes: int, num_edges: int, hot_nodes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, 3] and edges [2, E] whose destinations crowd onto ``hot_nodes`` nodes."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_nodes, 3, generator=generator)
    start = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    end = torch.randint(0, hot_nodes, (num_edges,), generator=generator)
    return features, torch.stack([start, end])


def dense_sum(values: torch.Tensor, index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sum of ``values`` rows into ``index`` via a one-hot matrix product (no scatter)."""
    one_hot = F.one_hot(index, num_nodes).to(values.dtype)  # [E, N]
    return one_hot.t() @ values


# ----------------------------------------------------------------------------- make_mlp


def test_make_mlp_layer_order_matches_exatrkx():
    mlp = make_mlp(3, [8, 8, 2], hidden_activation="Tanh", output_activation="ReLU", layer_norm=True)
    kinds = [type(module).__name__ for module in mlp]
    assert kinds == ["Linear", "LayerNorm", "Tanh", "Linear", "LayerNorm", "Tanh", "Linear", "LayerNorm", "ReLU"]
    bare = make_mlp(3, [8, 1], output_activation=None, layer_norm=True)
    assert [type(module).__name__ for module in bare] == ["Linear", "LayerNorm", "ReLU", "Linear"]
    assert list(bare.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


def test_make_mlp_without_affine_layer_norm_has_no_norm_parameters():
    mlp = make_mlp(4, [6, 6], layer_norm=True, layer_norm_affine=False)
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    x = torch.randn(5, 4)
    hidden = torch.relu(F.layer_norm(F.linear(x, mlp[0].weight, mlp[0].bias), (6,)))
    torch.testing.assert_close(mlp(x), F.linear(hidden, mlp[3].weight, mlp[3].bias))


def test_make_mlp_rejects_unknown_activation():
    with pytest.raises(CheckpointImportError, match="Swish"):
        make_mlp(3, [4], hidden_activation="Swish")


# ----------------------------------------------------------------------------- scatter


@pytest.mark.parametrize("num_edges", [0, 1, 5000])
def test_scatter_sum_matches_loop_with_repeated_indices(num_edges):
    generator = torch.Generator().manual_seed(num_edges)
    messages = torch.randn(num_edges, 4, generator=generator, dtype=torch.float64)
    index = torch.randint(0, 7, (num_edges,), generator=generator)  # 7 destinations: heavy repetition
    like = torch.empty(10, 4, dtype=torch.float64)
    expected = torch.zeros(10, 4, dtype=torch.float64)
    for row, destination in enumerate(index.tolist()):
        expected[destination] += messages[row]
    result = scatter_sum(messages, index, like)
    torch.testing.assert_close(result, expected)
    assert torch.all(result[7:] == 0)


def test_scatter_sum_rejects_width_mismatch():
    with pytest.raises(ValueError, match="columns"):
        scatter_sum(torch.ones(3, 2), torch.zeros(3, dtype=torch.int64), torch.ones(4, 5))


# ----------------------------------------------------------------------------- embedding and filter


@pytest.mark.parametrize("normalize", [False, True])
def test_embedding_matches_explicit_layers(normalize):
    net = EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=3, emb_dim=4, normalize=normalize)
    x = torch.randn(50, 3)
    linears = [module for module in net.network if isinstance(module, nn.Linear)]
    hidden = x
    for linear in linears[:-1]:
        hidden = torch.tanh(linear(hidden))
    expected = linears[-1](hidden)
    if normalize:
        expected = expected / expected.norm(dim=1, keepdim=True)
    out = net(x)
    assert out.shape == (50, 4)
    torch.testing.assert_close(out, expected)
    if normalize:
        torch.testing.assert_close(out.norm(dim=1), torch.ones(50))


def test_filter_matches_vanilla_filter_computation():
    net = EdgeFilter(in_channels=3, hidden=16, nb_layer=3)
    x, edges = random_graph(40, 300, 5, seed=2)
    pair = torch.cat([x[edges[0]], x[edges[1]]], dim=1)
    hidden = net.input_layer(pair)  # no activation after the input layer
    for layer in net.layers:
        hidden = F.layer_norm(torch.tanh(layer(hidden)), (16,), net.layernorm.weight, net.layernorm.bias)
    expected = net.output_layer(hidden)[:, 0]
    torch.testing.assert_close(net(x, edges), expected)
    assert net(x, torch.zeros(2, 0, dtype=torch.int64)).shape == (0,)


# ----------------------------------------------------------------------------- GNNs against dense references


def resagnn_reference(net: ResAGNN, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """ResAGNN with the messages computed by dense adjacency products."""
    n = x.shape[0]
    start, end = edges
    h = torch.cat([net.input_network(x), x], dim=-1)

    def edge_logits(h):
        return net.edge_network.network(torch.cat([h[start], h[end]], dim=1))[:, 0]

    for _ in range(net.config["n_graph_iters"]):
        w = torch.sigmoid(edge_logits(h))
        adjacency = torch.zeros(n, n, dtype=x.dtype)
        adjacency.index_put_((end, start), w, accumulate=True)  # adjacency[end, start] += w
        messages = adjacency @ h + adjacency.t() @ h
        parts = [messages, h] if net.config["node_input_order"] == "messages_first" else [h, messages]
        h = h + torch.cat([net.node_network.network(torch.cat(parts, dim=1)), x], dim=-1)
    return edge_logits(h)


@pytest.mark.parametrize("order", ["messages_first", "nodes_first"])
def test_resagnn_matches_dense_reference(order):
    torch.manual_seed(3)
    net = ResAGNN(in_channels=3, hidden=8, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2,
                  node_input_order=order).double()
    x, edges = random_graph(60, 2000, 6, seed=4)
    x = x.double()
    torch.testing.assert_close(net(x, edges), resagnn_reference(net, x, edges))


def interaction_reference(net: InteractionGNN, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """InteractionGNN with aggregation by one-hot matrix products."""
    c, n = net.config, x.shape[0]
    start, end = edges
    nodes = net.node_encoder(x)
    e = net.edge_encoder(torch.cat([nodes[start], nodes[end]], dim=1))
    for _ in range(c["n_graph_iters"]):
        m = dense_sum(e, end, n)
        if c["bidirectional_messages"]:
            m = torch.cat([m, dense_sum(e, start, n)], dim=1)
        new = net.node_network(torch.cat([nodes, m], dim=1)) + (nodes if c["residual"] else 0)
        src = new if c["edge_update_uses_new_nodes"] else nodes
        e = net.edge_network(torch.cat([src[start], src[end], e], dim=1)) + (e if c["residual"] else 0)
        nodes = new
    return net.output_edge_classifier(torch.cat([nodes[start], nodes[end], e], dim=1))[:, 0]


ACORN_STYLE = dict(residual=False, bidirectional_messages=True, edge_update_uses_new_nodes=True,
                   layer_norm_affine=False, hidden_activation="SiLU", output_activation="Tanh")


@pytest.mark.parametrize("variant", [{}, ACORN_STYLE], ids=["exatrkx", "acorn"])
def test_interaction_gnn_matches_dense_reference(variant):
    torch.manual_seed(5)
    net = InteractionGNN(in_channels=3, hidden=8, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2, **variant).double()
    x, edges = random_graph(60, 2000, 6, seed=6)
    x = x.double()
    torch.testing.assert_close(net(x, edges), interaction_reference(net, x, edges))


@pytest.mark.parametrize("net", [
    ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2),
    InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2),
], ids=["resagnn", "interaction"])
def test_gnn_handles_no_edges_and_one_edge(net):
    x = torch.randn(4, 3)
    assert net(x, torch.zeros(2, 0, dtype=torch.int64)).shape == (0,)
    assert net(x, torch.tensor([[0], [3]])).shape == (1,)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("net", [
    EmbeddingNetwork(in_channels=3, emb_hidden=8, nb_layer=2, emb_dim=4, layer_norm=True),
    EdgeFilter(in_channels=3, hidden=8, nb_layer=2, layer_norm=False),
    ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=1, node_input_order="nodes_first"),
    InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2, **ACORN_STYLE),
], ids=lambda net: net.architecture)
def test_config_round_trip_rebuilds_the_same_network(net):
    config = json.loads(json.dumps(net.config))
    rebuilt = build_network(net.architecture, config)
    assert type(rebuilt) is ARCHITECTURES[net.architecture] and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x, edges = random_graph(20, 100, 5, seed=7)
    args = (x,) if net.kind == "embedding" else (x, edges)
    torch.testing.assert_close(rebuilt(*args), net(*args))


def test_config_errors_name_the_problem():
    with pytest.raises(CheckpointImportError, match="missing emb_dim"):
        EmbeddingNetwork(in_channels=3, emb_hidden=8, nb_layer=2)
    with pytest.raises(CheckpointImportError, match="unknown widht"):
        EdgeFilter(in_channels=3, hidden=8, nb_layer=2, widht=3)
    with pytest.raises(CheckpointImportError, match="hidden must be an integer"):
        ResAGNN(in_channels=3, hidden=0, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=1)
    with pytest.raises(CheckpointImportError, match="node_input_order"):
        ResAGNN(in_channels=3, hidden=4, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=1, node_input_order="x")
    with pytest.raises(CheckpointImportError, match="unknown network architecture"):
        build_network("GravNet", {})


# ----------------------------------------------------------------------------- ONNX export


@pytest.mark.parametrize("net", [
    ResAGNN(in_channels=3, hidden=16, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2),
    InteractionGNN(in_channels=3, hidden=16, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2, **ACORN_STYLE),
], ids=["resagnn", "interaction"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gnn_exports_to_onnx_with_correct_scatter(net):
    """Legacy export with dynamic N and E; ONNX Runtime (default threads) matches PyTorch on
    50k edges crowding onto 60 destinations, run after run."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net.eval()
    buffer = io.BytesIO()
    x, edges = random_graph(30, 80, 30, seed=8)
    torch.onnx.export(
        net, (x, edges), buffer, dynamo=False, opset_version=17,
        input_names=["features", "edge_index"], output_names=["scores"],
        dynamic_axes={"features": {0: "N"}, "edge_index": {1: "E"}, "scores": {0: "E"}},
    )
    model = onnx.load_from_string(buffer.getvalue())
    scatters = [node for node in model.graph.node if "Scatter" in node.op_type]
    assert scatters and all(node.op_type == "ScatterElements" for node in scatters)
    assert all(any(a.name == "reduction" and a.s == b"add" for a in node.attribute) for node in scatters)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x, edges = random_graph(3000, 50_000, 60, seed=9)
    with torch.no_grad():
        expected = net(x, edges).numpy()
    for _ in range(3):
        scores = session.run(None, {"features": x.numpy(), "edge_index": edges.numpy()})[0]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    empty = session.run(None, {"features": x[:5].numpy(), "edge_index": np.zeros((2, 0), np.int64)})[0]
    assert empty.shape == (0,)
