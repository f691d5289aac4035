"""The factored interaction network computes what the original computes, and is what gets exported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.inference_forms import FactoredInteractionGNN, FactoredResAGNN, factored_form, inference_form
from trackserve.export.interaction_gnn import InteractionGNN
from trackserve.export.resagnn import ResAGNN
from trackserve.export.onnx_export import export_network
from trackserve.export.specs import power_law_edges
from trackserve.train.classifier import classifier_step

VARIANTS = {
    "exatrkx": {},
    "acorn": {"residual": False, "bidirectional_messages": True, "edge_update_uses_new_nodes": True,
              "layer_norm_affine": False},
    "differences_and_eta": {"edge_differences": True, "periodic_features": [1], "difference_scale": 20.0,
                            "derived_eta": {"r": 0, "z": 2, "r_scale": 1000.0, "z_scale": 1000.0}},
    "one_edge_layer": {"nb_edge_layer": 1, "output_activation": "ReLU"},
    "no_iterations": {"n_graph_iters": 0},
}


def _network(options, seed=0):
    torch.manual_seed(seed)
    config = {"in_channels": 3, "hidden": 16, "n_graph_iters": 3, "nb_node_layer": 2, "nb_edge_layer": 2, **options}
    return InteractionGNN(**config).eval()


def _graph(num_hits, num_edges, seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 0.5, (num_hits, 3)).astype(np.float32)
    features[:, 0] = np.abs(features[:, 0]) + 0.03
    return torch.from_numpy(features), torch.from_numpy(power_law_edges(num_hits, num_edges, rng))


def test_factored_form_shares_the_trained_parameters():
    network = _network({})
    factored = FactoredInteractionGNN(network)
    assert factored.edge_network.first.weight is network.edge_network[0].weight
    assert dict(factored.named_parameters()).keys() == {f"network.{key}" for key, _ in network.named_parameters()}


RESAGNN_VARIANTS = {
    "service": {},
    "ctd2022": {"node_input_order": "nodes_first", "hidden_activation": "Tanh"},
    "no_norm_wide_edges": {"layer_norm": False, "edge_hidden": 24},
    "bare_edge_network": {"nb_edge_layer": 0},
    "no_iterations": {"n_graph_iters": 0},
}


def _resagnn(options, seed=0):
    torch.manual_seed(seed)
    config = {"in_channels": 3, "hidden": 16, "n_graph_iters": 3, "nb_node_layer": 2, "nb_edge_layer": 2, **options}
    return ResAGNN(**config).eval()


FORMS = [pytest.param(_network, FactoredInteractionGNN, options, id=f"interaction-{name}")
         for name, options in VARIANTS.items()] + \
        [pytest.param(_resagnn, FactoredResAGNN, options, id=f"resagnn-{name}") for name, options in RESAGNN_VARIANTS.items()]


@pytest.mark.parametrize("training", [False, True], ids=["exported", "training"])
@pytest.mark.parametrize("build, form, options", FORMS)
@pytest.mark.parametrize("num_hits, num_edges", [(1, 0), (2, 1), (300, 5000)])
def test_factored_form_matches_the_network(build, form, options, num_hits, num_edges, training):
    network = build(options)
    factored = form(network, training=training).eval()
    features, edges = _graph(num_hits, num_edges, seed=num_edges)
    if num_edges == 1:
        edges = torch.tensor([[0], [1]])
    with torch.no_grad():
        expected, got = network(features, edges), factored(features, edges)
    assert got.shape == expected.shape == (edges.shape[1],)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    difference = float((got - expected).abs().max()) if got.numel() else 0.0
    assert difference <= 1e-5 * scale


def test_factored_resagnn_shares_the_trained_parameters():
    network = _resagnn({})
    factored = FactoredResAGNN(network)
    assert factored.edge_network.first.weight is network.edge_network.network[0].weight
    assert dict(factored.named_parameters()).keys() == {f"network.{key}" for key, _ in network.named_parameters()}


@pytest.mark.parametrize("training", [False, True], ids=["exported", "training"])
@pytest.mark.parametrize("build", [_network, _resagnn], ids=["interaction", "resagnn"])
def test_a_training_step_through_the_factored_form_is_the_networks_own_step(build, training):
    """Training takes its steps through the factored form (``training=True``: with the
    cheap-gradient gathers and sums): the gradients, hence the updated parameters, must
    be the original network's (to float32 rounding)."""
    features, edges = _graph(200, 3000, seed=5)
    labels = np.random.default_rng(5).random(3000) < 0.3
    plain, factored = build({}, seed=1).train(), build({}, seed=1).train()
    before = [p.detach().clone() for p in plain.parameters()]
    for module, network in ((plain, plain), (factored_form(factored, training=training), factored)):
        classifier_step(module, torch.optim.SGD(network.parameters(), lr=0.5), features.numpy(), edges.numpy(),
                        labels, 2.0)
    moved = 0.0
    for start, (name, a), b in zip(before, plain.named_parameters(), factored.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name
        moved = max(moved, float((a.detach() - start).abs().max()))
    assert moved > 1e-3  # the step changed the weights, so the comparison means something


def test_the_exported_form_never_uses_the_training_gathers():
    """The training gathers and sums are autograd functions ONNX cannot express."""
    from trackserve.export.inference_forms import _index_rows
    from trackserve.export.scatter import scatter_sum
    from trackserve.export.training_rows import gather_rows, sum_rows

    exported, training = inference_form(_network({})), factored_form(_network({}), training=True)
    assert exported.sum_into is scatter_sum and training.sum_into is sum_rows
    for name in ("edge_encoder", "edge_network", "output_edge_classifier"):
        assert getattr(exported, name).gather is _index_rows and getattr(training, name).gather is gather_rows
    assert inference_form(_resagnn({})).edge_network.gather is _index_rows
    assert factored_form(_resagnn({}), training=True).edge_network.gather is gather_rows


def test_other_networks_are_exported_and_trained_as_they_are():
    embedding = EmbeddingNetwork(in_channels=3, emb_hidden=8, nb_layer=2, emb_dim=4)
    assert inference_form(embedding) is embedding
    assert factored_form(embedding) is embedding
    assert isinstance(inference_form(_network({})), FactoredInteractionGNN)
    assert isinstance(inference_form(_resagnn({})), FactoredResAGNN)


def _products_reading(path, width):
    """How many MatMul/Gemm nodes of the exported graph multiply by a weight with a dim of ``width``."""
    model = onnx.load(str(path))
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return sum(1 for node in model.graph.node
               if node.op_type in ("MatMul", "Gemm") and width in weights.get(node.input[1], ()))


def test_exported_graph_is_the_factored_one_and_passes_parity(tmp_path):
    network = _network(VARIANTS["acorn"])
    report = export_network(network, None, tmp_path / "gnn.onnx")
    assert report.validation.passed
    # No product reads a [rows, 3 x hidden] concatenation: the edge networks and the
    # classifier read hidden-wide blocks of the hits' rows, the node networks one block per
    # part of their input (the hits, the messages in, the messages out) ...
    assert _products_reading(tmp_path / "gnn.onnx", 3 * 16) == 0
    assert _products_with_weight(tmp_path / "gnn.onnx", (16, 16)) >= network.n_graph_iters * (3 + 3 + 1)
    # ... and nothing concatenates them.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "gnn.onnx")))
    widths = {info.name: info.type.tensor_type.shape.dim[-1].dim_value for info in model.graph.value_info
              if info.type.tensor_type.shape.dim}
    assert not [node.output[0] for node in model.graph.node
                if node.op_type == "Concat" and widths.get(node.output[0]) in (2 * 16, 3 * 16)]


def _products_with_weight(path, dims):
    """How many MatMul/Gemm nodes of the exported graph multiply by a weight of these two dims (either order)."""
    model = onnx.load(str(path))
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return sum(1 for node in model.graph.node
               if node.op_type in ("MatMul", "Gemm") and sorted(weights.get(node.input[1], ())) == sorted(dims))


def test_exported_resagnn_is_the_factored_one_and_passes_parity(tmp_path):
    network = _resagnn({"edge_hidden": 24})
    report = export_network(network, None, tmp_path / "gnn.onnx")
    assert report.validation.passed
    width = 16 + 3
    # the edge network's first layer: [N, width] times each [width, 24] half, never [E, 2 * width] times the whole
    assert _products_with_weight(tmp_path / "gnn.onnx", (2 * width, 24)) == 0
    assert _products_with_weight(tmp_path / "gnn.onnx", (width, 24)) >= 2
