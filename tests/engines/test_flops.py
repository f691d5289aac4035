"""network_flops against hand-computed counts of small MLPs, MatMul and Gemm."""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.engines.flops import network_flops
from trackserve.errors import BundleError, InputError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(tmp_path, nodes, inputs, output, initializers, name="net.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, [output], [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _tiny_mlp(tmp_path):
    """features[num_hits, 3] -Gemm(transB)-> 5 -Relu-> MatMul -> 2."""
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["out"]),
    ]
    inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["num_hits", 3])]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["num_hits", 2])
    weights = {"w1": np.ones((5, 3), np.float32), "b1": np.ones(5, np.float32), "w2": np.ones((5, 2), np.float32)}
    return _save(tmp_path, nodes, inputs, output, weights)


def test_tiny_mlp_hand_count(tmp_path):
    path = _tiny_mlp(tmp_path)
    # 2*N*3*5 (Gemm) + 2*N*5*2 (MatMul) = 50 N
    assert network_flops(path, 7, 0) == 50 * 7
    assert network_flops(path, 0, 100) == 0


def test_edge_network_gathers_count_per_edge(tmp_path):
    """Gather by an edge index gives num_edges rows; Gemm with transA."""
    nodes = [
        helper.make_node("Gather", ["features", "edge_index"], ["pairs"], axis=0),  # [2, num_edges, 4]
        helper.make_node("Gather", ["pairs", "zero"], ["first"], axis=0),  # [num_edges, 4]
        helper.make_node("Transpose", ["first"], ["firstT"], perm=[1, 0]),  # [4, num_edges]
        helper.make_node("Gemm", ["firstT", "w"], ["out"], transA=1),  # [num_edges, 6]
    ]
    inputs = [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["num_hits", 4]),
        helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"]),
    ]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["num_edges", 6])
    path = _save(tmp_path, nodes, inputs, output, {"w": np.ones((4, 6), np.float32), "zero": np.array(0, np.int64)})
    assert network_flops(path, 1000, 11) == 2 * 11 * 4 * 6


def test_matches_torch_config_of_a_bundle_network(tmp_path):
    """The exported edge filter: 2*E*(2F*H + (L-1)*H*H + H)."""
    torch = pytest.importorskip("torch")
    from trackserve.export.filter import EdgeFilter
    from trackserve.export.onnx_export import export_network

    module = EdgeFilter(in_channels=3, hidden=16, nb_layer=3).eval()
    with torch.no_grad():
        export_network(module, "filter", tmp_path / "filter.onnx", num_features=3, validate=False)
    edges = 1234
    assert network_flops(tmp_path / "filter.onnx", 500, edges) == 2 * edges * (6 * 16 + 2 * 16 * 16 + 16)


def test_unknown_dim_and_bad_sizes_are_refused(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["out"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])
    path = _save(tmp_path, nodes, inputs, output, {"w": np.ones((3, 2), np.float32)})
    with pytest.raises(BundleError, match="'batch'"):
        network_flops(path, 1, 1)
    with pytest.raises(InputError, match="num_hits"):
        network_flops(path, -1, 1)
    with pytest.raises(BundleError, match="cannot read"):
        network_flops(tmp_path / "absent.onnx", 1, 1)
