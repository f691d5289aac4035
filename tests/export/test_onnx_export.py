"""ONNX export with parity: correct networks pass at new shapes, wrong aggregations are caught.

The small networks below follow the interfaces of trackserve's networks:
``forward(features[N, F]) -> embedding[N, D]`` and ``forward(features[N, F],
edge_index[2, E]) -> scores[E]``. ``ToyGNN("index_add")`` and ``ToyGNN("index_put")``
aggregate in a way the legacy exporter turns into a scatter without reduction, which
is silently wrong when destinations repeat: the parity check must refuse them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from trackserve.bundle import file_sha256
from trackserve.errors import ExportError, ExportParityError, InputError
from trackserve.export.graph_scan import scan_graph
from trackserve.export.onnx_export import MIN_OPSET, export_network, max_abs_difference, validate_onnx
from trackserve.export.specs import SPECS, get_spec, power_law_edges

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
POWER_LAW_CASE = "power-law destinations (5000 hits, 50000 edges)"


class ToyEmbedding(torch.nn.Module):
    """Features [N, 3] -> embedding [N, 4]."""

    kind = "embedding"

    def __init__(self):
        super().__init__()
        self.config = {"in_channels": 3}
        self.network = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

    def forward(self, features):
        return self.network(features)


class ToyEdgeMLP(torch.nn.Module):
    """Scores each edge from the features of its two ends."""

    kind = "filter"

    def __init__(self, shape: str = "flat"):
        super().__init__()
        self.config = {"in_channels": 3}
        self.shape = shape
        self.network = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, features, edge_index):
        scores = self.network(torch.cat([features[edge_index[0]], features[edge_index[1]]], dim=1))
        return scores if self.shape == "column" else scores.squeeze(-1)


class ToyGNN(torch.nn.Module):
    """One round of message passing: the sum of incoming messages, then an edge MLP.

    ``aggregation``: ``"scatter_add"`` (right), ``"index_add"`` or ``"index_put"``
    (exported without reduction: wrong when destinations repeat).
    """

    kind = "gnn"

    def __init__(self, aggregation: str = "scatter_add"):
        super().__init__()
        self.config = {"in_channels": 3}
        self.aggregation = aggregation
        self.encoder = torch.nn.Linear(3, 4)
        self.output = torch.nn.Linear(8, 1)

    def forward(self, features, edge_index):
        hidden = torch.tanh(self.encoder(features))
        source, destination = edge_index[0], edge_index[1]
        messages = hidden[source]
        zeros = torch.zeros_like(hidden)
        if self.aggregation == "scatter_add":
            summed = zeros.scatter_add(0, destination.unsqueeze(1).expand_as(messages), messages)
        elif self.aggregation == "index_add":
            summed = zeros.index_add(0, destination, messages)
        else:
            summed = zeros.index_put((destination,), messages, accumulate=True)
        return self.output(torch.cat([summed[source], summed[destination]], dim=1)).squeeze(-1)


def _manual_export(module, path, *, input_names=("features", "edge_index"), dynamic=True):
    """Export with the legacy exporter and chosen names/axes, bypassing export_network."""
    spec = get_spec(module.kind)
    inputs = spec.make_inputs(spec.trace, 3)
    args = tuple(torch.from_numpy(inputs[name]) for name in spec.input_names)
    axes = spec.dynamic_axes() if dynamic else None
    if axes and list(input_names) != spec.input_names:
        axes = {new: axes[old] for old, new in zip(spec.input_names, input_names)} | {"scores": axes["scores"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17,
                          input_names=list(input_names), output_names=spec.output_names, dynamic_axes=axes)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- specs


def test_specs_validate_at_shapes_other_than_the_traced_one():
    for spec in SPECS.values():
        traced = (spec.trace.num_hits, spec.trace.num_edges)
        sizes = [(case.num_hits, case.num_edges) for case in spec.cases]
        assert traced not in sizes
        assert min(n for n, _ in sizes) <= 1
    edge_cases = SPECS["edge_classifier"].cases
    assert any(case.power_law and case.num_edges >= 50_000 for case in edge_cases)
    assert SPECS["edge_classifier"].dynamic_axes() == {
        "features": {0: "num_hits"}, "edge_index": {1: "num_edges"}, "scores": {0: "num_edges"},
    }
    assert SPECS["embedding"].dynamic_axes() == {"features": {0: "num_hits"}, "embedding": {0: "num_hits"}}
    assert get_spec("filter") is get_spec("gnn") is SPECS["edge_classifier"]
    with pytest.raises(ValueError, match="unknown network kind 'tracker'"):
        get_spec("tracker")


def test_power_law_edges_have_hubs_with_thousands_of_incoming_edges():
    edges = power_law_edges(5000, 50_000, np.random.default_rng(1))
    assert edges.shape == (2, 50_000) and edges.dtype == np.int64
    assert edges.min() >= 0 and edges.max() < 5000
    in_degree = np.bincount(edges[1], minlength=5000)
    assert in_degree.max() > 2000
    assert (in_degree > 1).sum() > 500  # many repeated destinations, not one hub only
    assert power_law_edges(0, 0, np.random.default_rng(1)).shape == (2, 0)


def test_max_abs_difference_treats_nan_and_infinity_as_infinite_unless_equal():
    a = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    assert max_abs_difference(a, a.copy()) == 0.0
    assert max_abs_difference(np.array([1.0, 2.0, np.inf], np.float32), a) == np.inf
    assert max_abs_difference(np.array([1.5, np.nan, np.inf], np.float32), a) == pytest.approx(0.5)
    assert max_abs_difference(np.zeros(0, np.float32), np.zeros(0, np.float32)) == 0.0


def test_an_export_stopped_during_its_validation_leaves_no_partial_file(tmp_path, monkeypatch):
    from trackserve.export import onnx_export

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while ONNX Runtime checks the file

    monkeypatch.setattr(onnx_export, "validate_onnx", stopped)
    with pytest.raises(KeyboardInterrupt):
        export_network(ToyEdgeMLP(), None, tmp_path / "network.onnx")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- correct networks


@pytest.mark.parametrize("module", [ToyEmbedding(), ToyEdgeMLP(), ToyGNN("scatter_add")], ids=lambda m: type(m).__name__)
def test_correct_networks_export_and_pass_at_new_shapes(tmp_path, module):
    path = tmp_path / "network.onnx"
    report = export_network(module, None, path)
    spec = get_spec(module.kind)
    assert path.is_file() and report.sha256 == file_sha256(path)
    assert not list(tmp_path.glob("*.partial"))
    assert report.validation.passed and not report.validation.hazards
    assert {check.case for check in report.validation.checks} == {
        f"case '{case.describe(with_edges=spec.kind == 'edge_classifier')}'" for case in spec.cases
    }
    assert all(check.runs == 3 for check in report.validation.checks)
    # The ONNX file has the interface's names and dynamic dims.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == spec.input_names
    assert [o.name for o in session.get_outputs()] == spec.output_names
    assert session.get_inputs()[0].shape == ["num_hits", 3]
    assert [tuple(t.dims) for t in report.inputs] == [tuple(i.shape) for i in session.get_inputs()]
    # Independent check at yet another size, with repeated destinations.
    rng = np.random.default_rng(7)
    features = rng.normal(size=(777, 3)).astype(np.float32)
    feeds = {"features": features}
    args = [torch.from_numpy(features)]
    if spec.kind == "edge_classifier":
        edges = np.concatenate([rng.integers(0, 777, (2, 3000)), np.stack([np.arange(500), np.zeros(500, int)])], axis=1)
        feeds["edge_index"] = edges.astype(np.int64)
        args.append(torch.from_numpy(feeds["edge_index"]))
    with torch.no_grad():
        expected = module(*args).numpy()
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_embedding_dim_comes_from_the_network(tmp_path):
    report = export_network(ToyEmbedding(), "embedding", tmp_path / "embedding.onnx")
    assert [t.to_dict() for t in report.outputs] == [{"name": "embedding", "dtype": "float32", "dims": ["num_hits", 4]}]


def test_a_link_is_replaced_unless_followed(tmp_path):
    # A bundle's network file that links to another bundle's must not change that one (its
    # recorded sha256 would no longer match); `--output link` of export and import writes through.
    shared = tmp_path / "shared.onnx"
    shared.write_bytes(b"another bundle's network")
    link = tmp_path / "embedding.onnx"
    link.symlink_to(shared)
    report = export_network(ToyEmbedding(), "embedding", link)
    assert not link.is_symlink() and file_sha256(link) == report.sha256
    assert shared.read_bytes() == b"another bundle's network"
    link.unlink()
    link.symlink_to(shared)
    report = export_network(ToyEmbedding(), "embedding", link, follow_link=True)
    assert link.is_symlink() and file_sha256(shared) == report.sha256


# ----------------------------------------------------------------------------- wrong networks


def test_a_file_of_another_output_width_is_refused_naming_both_shapes(tmp_path):
    from trackserve.export.embedding import EmbeddingNetwork

    torch.manual_seed(0)
    export_network(EmbeddingNetwork(in_channels=3, emb_hidden=8, nb_layer=2, emb_dim=4).eval(), "embedding",
                   tmp_path / "a.onnx")
    wider = EmbeddingNetwork(in_channels=3, emb_hidden=8, nb_layer=2, emb_dim=6).eval()
    with pytest.raises(ExportParityError, match=r"case 'a few hits \(5 hits\)': output 'embedding' has shape \[5, 4\] "
                                                r"in ONNX Runtime, \[5, 6\] in PyTorch"):
        validate_onnx(tmp_path / "a.onnx", wider, "embedding")


@pytest.mark.parametrize("aggregation", ["index_add", "index_put"])
def test_accumulating_scatter_without_reduction_is_refused_with_a_listing(tmp_path, aggregation):
    path = tmp_path / "gnn.onnx"
    with pytest.raises(ExportParityError) as caught:
        export_network(ToyGNN(aggregation), "gnn", path)
    message = str(caught.value)
    report = caught.value.report
    assert not path.exists() and not list(tmp_path.iterdir())
    assert "rejected (nothing written)" in message
    # Every output of every case is listed with its difference; the power-law case fails.
    assert len(report.checks) == len(get_spec("gnn").cases)
    failed = {check.case for check in report.checks if not check.passed}
    assert f"case '{POWER_LAW_CASE}'" in failed
    power_law = next(c for c in report.checks if c.case == f"case '{POWER_LAW_CASE}'")
    assert power_law.max_abs_diff > 100 * power_law.bound
    assert f"case '{POWER_LAW_CASE}': 'scores' max|onnx - torch| =" in message and "FAIL" in message
    assert "case 'one edge (2 hits, 1 edge)': 'scores'" in message  # passing comparisons listed too
    op = "ScatterElements" if aggregation == "index_add" else "ScatterND"
    assert f"graph: node '/{op}' ({op} without reduction)" in message


def test_value_check_alone_catches_the_wrong_aggregation(tmp_path):
    path = tmp_path / "gnn.onnx"
    report = export_network(ToyGNN("index_add"), "gnn", path, validate=False)
    assert report.validation is None and path.is_file()
    with pytest.raises(ExportParityError) as caught:
        validate_onnx(path, ToyGNN("index_add"), "gnn", check_graph=False)
    assert "graph:" not in str(caught.value)
    assert f"case '{POWER_LAW_CASE}': 'scores'" in str(caught.value)


def _scatternd_add_model(path: Path) -> Path:
    """scores[e] = sum_c (sum over edges k with dst[k] = dst[e] of features[src[k], c]), via ScatterND(add)."""
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [], [0])),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [], [1])),
        helper.make_node("Constant", [], ["axis1"], value=helper.make_tensor("axis1", TensorProto.INT64, [1], [1])),
        helper.make_node("Gather", ["edge_index", "zero"], ["src"], axis=0),
        helper.make_node("Gather", ["edge_index", "one"], ["dst"], axis=0),
        helper.make_node("Gather", ["features", "src"], ["messages"], axis=0),
        helper.make_node("Unsqueeze", ["dst", "axis1"], ["indices"]),
        helper.make_node("Mul", ["features", "zero_f"], ["zeros"]),
        helper.make_node("ScatterND", ["zeros", "indices", "messages"], ["summed"], reduction="add", name="aggregate"),
        helper.make_node("Gather", ["summed", "dst"], ["at_edges"], axis=0),
        helper.make_node("ReduceSum", ["at_edges", "axis1"], ["scores"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "scatternd_add",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["num_hits", 3]),
         helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["num_edges"])],
        initializer=[helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class SumOfIncoming(torch.nn.Module):
    """The torch twin of :func:`_scatternd_add_model`."""

    kind = "gnn"
    config = {"in_channels": 3}

    def forward(self, features, edge_index):
        messages = features[edge_index[0]]
        index = edge_index[1].unsqueeze(1).expand_as(messages)
        summed = torch.zeros_like(features).scatter_add(0, index, messages)
        return summed[edge_index[1]].sum(dim=1)


def test_scatternd_with_reduction_is_reported_as_a_known_bad_op(tmp_path):
    path = _scatternd_add_model(tmp_path / "third_party.onnx")
    hazards = scan_graph(path)
    assert [(h.node, h.op_type) for h in hazards] == [("aggregate", "ScatterND(reduction='add')")]
    assert "18048" in hazards[0].reason
    with pytest.raises(ExportParityError) as caught:
        validate_onnx(path, SumOfIncoming())
    assert "graph: node 'aggregate' (ScatterND(reduction='add'))" in str(caught.value)


def test_scatter_add_export_has_no_hazard(tmp_path):
    path = export_network(ToyGNN("scatter_add"), "gnn", tmp_path / "gnn.onnx", validate=False).path
    assert scan_graph(path) == []
    ops = {node.op_type: node for node in onnx.load(path).graph.node}
    assert helper.get_attribute_value(ops["ScatterElements"].attribute[1]) == b"add"


# ----------------------------------------------------------------------------- names and shapes


def test_wrong_input_names_are_reported(tmp_path):
    path = _manual_export(ToyGNN(), tmp_path / "gnn.onnx", input_names=("x", "edge_index"))
    with pytest.raises(ExportParityError, match=r"inputs are named \['x', 'edge_index'\], the edge_classifier "
                                                r"interface needs \['features', 'edge_index'\]"):
        validate_onnx(path, ToyGNN())


def test_frozen_shapes_are_reported(tmp_path):
    path = _manual_export(ToyGNN(), tmp_path / "gnn.onnx", dynamic=False)
    with pytest.raises(ExportParityError) as caught:
        validate_onnx(path, ToyGNN())
    message = str(caught.value)
    assert "input 'features' has the fixed size 23 at dim 0 where the interface has the dynamic dim 'num_hits'" in message
    assert "input 'edge_index' has the fixed size 61 at dim 1" in message
    assert "case 'one edge (2 hits, 1 edge)': ONNX Runtime fails (run 1)" in message


def test_wrong_output_shape_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"output 'scores' has shape \[61, 1\], the interface needs \['num_edges'\]"):
        export_network(ToyEdgeMLP("column"), None, tmp_path / "filter.onnx")
    assert not list(tmp_path.iterdir())
    path = _manual_export(ToyEdgeMLP("column"), tmp_path / "filter.onnx")
    with pytest.raises(ExportParityError) as caught:
        validate_onnx(path, ToyEdgeMLP("column"))
    assert "PyTorch output 'scores' has shape [1, 1], the interface needs ['num_edges'] = [1]" in str(caught.value)
    assert "output 'scores' has dims ['num_edges', 1], the interface needs ['num_edges']" in str(caught.value)


def test_a_failed_export_leaves_the_previous_file_untouched(tmp_path):
    path = tmp_path / "gnn.onnx"
    export_network(ToyGNN(), "gnn", path)
    before = file_sha256(path)
    with pytest.raises(ExportParityError):
        export_network(ToyGNN("index_add"), "gnn", path)
    assert file_sha256(path) == before


def test_unknown_feature_count_and_kind_are_explained(tmp_path):
    module = ToyGNN()
    del module.config
    with pytest.raises(ExportError, match="pass num_features"):
        export_network(module, "gnn", tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="unknown network kind 'tracker'"):
        export_network(ToyGNN(), "tracker", tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="forward fails on features \\[17, 5\\]"):
        export_network(ToyEmbedding(), None, tmp_path / "a.onnx", num_features=5)


class CumulativeMax(torch.nn.Module):
    """An embedding through ``cummax``, an operator the TorchScript-based exporter cannot write."""

    kind = "embedding"
    config = {"in_channels": 3}

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, features):
        return torch.cummax(self.linear(features), dim=0)[0]


def test_a_failing_export_is_one_error_without_torch_ir_on_stdout(tmp_path, capfd):
    with pytest.raises(ExportError, match="aten::cummax"):
        export_network(CumulativeMax(), None, tmp_path / "embedding.onnx")
    assert "Torch IR graph" not in capfd.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opset", [7, MIN_OPSET - 1, 99])
def test_opsets_outside_the_supported_range_are_refused(tmp_path, opset):
    with pytest.raises(InputError, match=rf"opset {opset} is not supported: trackserve exports ONNX opsets 16 to \d+ "):
        export_network(ToyGNN(), "gnn", tmp_path / "gnn.onnx", opset=opset)
    assert not list(tmp_path.iterdir())


def test_the_lowest_supported_opset_exports_message_passing(tmp_path):
    report = export_network(ToyGNN(), "gnn", tmp_path / "gnn.onnx", opset=MIN_OPSET, runs=1)
    assert report.validation.passed and onnx.load(report.path).opset_import[0].version == MIN_OPSET


def test_nan_outputs_fail_even_where_onnx_and_torch_agree(tmp_path):
    module = ToyEdgeMLP()
    with torch.no_grad():
        module.network[0].bias[0] = float("inf")  # tanh(inf) = 1: finite; the NaN comes from the weight
        module.network[2].weight[0, 0] = float("nan")
    path = tmp_path / "filter.onnx"
    with pytest.raises(ExportParityError) as caught:
        export_network(module, None, path, runs=1)
    report = caught.value.report
    assert not path.exists()
    failed = [check for check in report.checks if not check.passed]
    assert failed and all(check.max_abs_diff == 0 and check.torch_nonfinite == check.values for check in failed)
    message = str(caught.value)
    assert ("case 'a few hits (6 hits, 15 edges)': 'scores' max|onnx - torch| = 0, bound 0.0001 (max|torch| = 0), "
            "1 run(s), not finite (NaN or infinity): 15 of 15 values in PyTorch and 15 of 15 values in ONNX Runtime: FAIL") in message
    assert "weights hold NaN or infinity: network.0.bias (1 of 8), network.2.weight (1 of 8);" in message


# ----------------------------------------------------------------------------- trackserve's networks


def _networks():
    from trackserve.export.embedding import EmbeddingNetwork
    from trackserve.export.filter import EdgeFilter
    from trackserve.export.interaction_gnn import InteractionGNN
    from trackserve.export.resagnn import ResAGNN

    return [
        EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=8, layer_norm=True, normalize=True),
        EdgeFilter(in_channels=3, hidden=16, nb_layer=2),
        ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2),
        InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2),
    ]


@pytest.mark.parametrize("index", range(4), ids=["embedding", "filter", "resagnn", "interaction_gnn"])
def test_trackserve_networks_export_with_parity(tmp_path, index):
    network = _networks()[index]
    report = export_network(network, None, tmp_path / "network.onnx")
    assert report.validation.passed and not report.validation.hazards
    assert report.inputs[0].dims == ("num_hits", 3)


@pytest.mark.slow
def test_published_service_gnn_exports_with_parity_and_matches_its_reference_output(tmp_path):
    """The ExaTrkX service's trained GNN: parity at every case, and the published logits of its reference event."""
    model = DATA / "exatrkx_service" / "models" / "gnn.pt"
    event = DATA / "exatrkx_service" / "reference_event"
    if not model.is_file():
        pytest.skip(f"shared data not found at {model}")
    from trackserve.export.checkpoint_import import import_checkpoint

    report = export_network(import_checkpoint(model, "gnn"), None, tmp_path / "gnn.onnx")
    assert report.validation.passed
    features = np.loadtxt(event / "in_e1000.csv", delimiter=",", dtype=np.float32)
    edges = np.loadtxt(event / "applyfilter_output_EDGE_LIST_AFTER_FILTER.csv", delimiter=",").astype(np.int64)
    published = np.loadtxt(event / "gnn_output_OUTPUT__0.csv", dtype=np.float32)
    session = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], {"features": features, "edge_index": edges})[0]
    assert scores.shape == published.shape == (584,)
    assert max_abs_difference(scores, published) <= 1e-4 * max(1.0, float(np.abs(published).max()))
