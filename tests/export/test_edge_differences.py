"""The edge-difference inputs of the filter and the interaction GNN: values, wrap-around, ONNX parity."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trackserve.export.filter import EdgeFilter  # noqa: E402
from trackserve.export.interaction_gnn import InteractionGNN  # noqa: E402
from trackserve.export.mlp import pair_differences  # noqa: E402
from trackserve.export.onnx_export import export_network  # noqa: E402


def test_differences_wrap_the_periodic_column_only():
    x = torch.tensor([[0.5, 0.99], [0.7, -0.99], [0.1, 0.0]])
    edges = torch.tensor([[0, 1], [1, 2]])
    got = pair_differences(x, edges, periodic=[1], period=2.0, scale=10.0)
    expected = torch.tensor([[0.2 * 10, 0.02 * 10], [-0.6 * 10, 0.99 * 10]])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_filter_with_differences_sees_them():
    torch.manual_seed(0)
    net = EdgeFilter(in_channels=3, hidden=8, nb_layer=2, edge_differences=True, periodic_features=[1],
                     difference_scale=5.0).eval()
    assert net.input_layer.in_features == 9
    x = torch.randn(20, 3)
    edges = torch.randint(0, 20, (2, 50))
    reference = EdgeFilter(in_channels=3, hidden=8, nb_layer=2).eval()
    assert reference.input_layer.in_features == 6
    with torch.no_grad():
        net.input_layer.weight[:, 6:] = 0  # without the difference columns it is the plain filter
        reference.load_state_dict({k: (v[:, :6] if k == "input_layer.weight" else v) for k, v in net.state_dict().items()})
        torch.testing.assert_close(net(x, edges), reference(x, edges))


@pytest.mark.parametrize(
    "network",
    [
        lambda: EdgeFilter(in_channels=4, hidden=16, nb_layer=2, edge_differences=True, periodic_features=[1],
                           difference_scale=20.0),
        lambda: InteractionGNN(in_channels=4, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2,
                               edge_differences=True, periodic_features=[1], difference_scale=20.0,
                               bidirectional_messages=True),
    ],
)
def test_networks_with_differences_export_with_parity(network, tmp_path):
    torch.manual_seed(1)
    module = network().eval()
    report = export_network(module, "edge_classifier", tmp_path / "net.onnx")
    assert report.validation is not None and not report.validation.failures
    assert len(report.validation.checks) > 0
