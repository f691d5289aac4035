"""The blocked form of a message-passing network: the sequential form's output bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trackserve.engines import row_blocks, scatter_split
from trackserve.engines.row_blocks import (
    KINDS, ROW_ALIGN, BlockedFormUnavailable, RowBlockedForm, aligned_parts, is_row_wise, stage_numbers,
)
from trackserve.engines.scatter_split import ScatterSplitNetwork, sequential_scatter_model
from trackserve.errors import BundleError, InputError
from trackserve.runtime.parallel import PartRunner

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def _export(module, tmp_path_factory, name: str) -> Path:
    from trackserve.export.onnx_export import export_network

    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    export_network(module.eval(), "gnn", path, num_features=3, validate=False)
    return path


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> dict[str, Path]:
    """Message-passing networks of every kind the runtime runs: small interaction networks
    (both update orders), the published service's attention GNN, the default bundle's
    pruner and GNN (with their geometry features)."""
    torch = pytest.importorskip("torch")
    from trackserve.export.interaction_gnn import InteractionGNN
    from trackserve.export.resagnn import ResAGNN

    torch.manual_seed(3)
    paths = {
        "interaction": _export(InteractionGNN(in_channels=3, hidden=8, n_graph_iters=3, nb_node_layer=2,
                                              nb_edge_layer=2), tmp_path_factory, "interaction"),
        "interaction_new_nodes": _export(InteractionGNN(in_channels=3, hidden=16, n_graph_iters=2, nb_node_layer=2,
                                                        nb_edge_layer=2, edge_update_uses_new_nodes=True),
                                         tmp_path_factory, "interaction_new_nodes"),
        "resagnn": _export(ResAGNN(in_channels=3, hidden=8, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2),
                           tmp_path_factory, "resagnn"),
    }
    paths.update({f"default_{name}": DEFAULT_BUNDLE / f"{name}.onnx" for name in ("pruner", "gnn")})
    return paths


def _graph(num_hits: int, num_edges: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # (r, phi, z) scaled as the default bundle's features; many repeated destinations
    features = np.stack([rng.uniform(0.01, 0.4, num_hits), rng.uniform(-1, 1, num_hits),
                         rng.uniform(-1, 1, num_hits)], axis=1).astype(np.float32)
    return features, rng.integers(0, num_hits, (2, num_edges)).astype(np.int64)


def _sequential_output(path: Path, features, edges) -> np.ndarray:
    import onnxruntime as ort

    from trackserve.engines.onnx_runtime import session_options

    model = sequential_scatter_model(onnx.load(str(path)))
    session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(1))
    return session.run(None, {"features": features, "edge_index": edges})[0]


@pytest.mark.parametrize("name", ["interaction", "interaction_new_nodes", "resagnn", "default_pruner", "default_gnn"])
@pytest.mark.parametrize("num_hits, num_edges", [(1, 1), (40, 63), (3000, 20000)])
def test_blocked_form_gives_the_sequential_forms_bits(networks, name, num_hits, num_edges):
    features, edges = _graph(num_hits, num_edges, seed=num_edges)
    expected = _sequential_output(networks[name], features, edges)
    form = RowBlockedForm(sequential_scatter_model(onnx.load(str(networks[name]))))
    assert form.counts["edges"] > 0 and form.counts["hits"] > 0 and form.counts["scatter"] > 0
    runner = PartRunner(2)
    try:
        for parallel in (None, runner):
            for block_rows in (ROW_ALIGN, 4 * ROW_ALIGN, row_blocks.BLOCK_ROWS):
                got = form.run({"features": features, "edge_index": edges}, parallel, block_rows=block_rows,
                               min_part_rows=ROW_ALIGN)
                assert got.dtype == expected.dtype and got.shape == expected.shape
                assert np.array_equal(got, expected), (name, parallel, block_rows)
    finally:
        runner.close()


def test_blocks_must_keep_the_row_alignment(networks):
    form = RowBlockedForm(sequential_scatter_model(onnx.load(str(networks["interaction"]))))
    features, edges = _graph(50, 300)
    with pytest.raises(ValueError, match="multiple of 64"):
        form.run({"features": features, "edge_index": edges}, block_rows=100)


def test_aligned_parts_cover_every_row_once_from_aligned_starts():
    assert aligned_parts(0, 2, 1024) == []
    for count in (1, 63, 64, 65, 2047, 20_000, 870_009):
        for parts in (1, 2, 3):
            cut = aligned_parts(count, parts, 1024)
            assert 1 <= len(cut) <= parts
            assert cut[0].start == 0 and cut[-1].stop == count
            assert all(a.stop == b.start for a, b in zip(cut, cut[1:]))
            assert all(part.start % ROW_ALIGN == 0 and part.stop > part.start for part in cut)
    assert len(aligned_parts(870_009, 2, 1024)) == 2
    assert len(aligned_parts(1500, 2, 1024)) == 1  # too few rows for two parts


def _values(**shapes):
    return {name: np.zeros(shape, dtype=np.float32) for name, shape in shapes.items()}


def test_row_wise_operators_are_told_from_the_others():
    E = row_blocks.PROBE_EDGES
    values = _values(table=(613, 4), rows=(E, 32), rows4=(E, 4), wide=(E, 32), weight=(32, 32), bias=(32,),
                     row_bias=(1, 32), out=(E, 32), out4=(E, 4), flat=(E,), col=(E, 1), sum=(1, 32), cat=(E, 36),
                     twice=(2 * E, 32))
    values.update(index=np.zeros(E, dtype=np.int64), one=np.array([1], dtype=np.int64),
                  zero=np.array([0], dtype=np.int64), cols=np.array([0, 2], dtype=np.int64))
    rows = {"rows", "rows4", "wide", "out", "out4", "flat", "col", "index", "cat"}
    constants = {"weight", "bias", "row_bias", "one", "zero", "cols"}

    def row_wise(op, inputs, output, **attributes):
        return is_row_wise(helper.make_node(op, inputs, [output], **attributes), values, rows, constants)

    assert row_wise("Gather", ["table", "index"], "out4")  # hit rows picked by each edge
    assert not row_wise("Gather", ["rows", "index"], "out")  # edge rows reordered
    assert row_wise("Gather", ["rows4", "cols"], "out4", axis=1)  # columns of each row
    assert row_wise("Add", ["rows", "bias"], "out") and row_wise("Add", ["rows", "row_bias"], "out")
    assert row_wise("Mul", ["rows", "col"], "out")  # a per-row factor
    assert row_wise("Add", ["rows", "sum"], "out")  # [1, W] broadcasts along the rows
    assert not row_wise("Add", ["rows", "table"], "out")  # a whole table of other rows does not
    assert row_wise("MatMul", ["rows", "weight"], "out") and row_wise("Gemm", ["rows", "weight", "bias"], "out")
    assert not row_wise("Gemm", ["rows", "weight", "bias"], "out", transA=1)
    assert row_wise("LayerNormalization", ["rows", "bias", "bias"], "out", axis=-1)
    assert not row_wise("LayerNormalization", ["rows", "bias", "bias"], "out", axis=0)
    assert row_wise("Concat", ["rows", "rows4"], "cat", axis=1)
    assert not row_wise("Concat", ["rows", "rows"], "twice", axis=0)  # output not edge rows
    assert row_wise("Unsqueeze", ["flat", "one"], "col") and not row_wise("Unsqueeze", ["flat", "zero"], "col")
    assert not row_wise("Unsqueeze", ["flat", "index"], "col")  # axes not a constant
    assert row_wise("Squeeze", ["col", "one"], "flat")
    assert row_wise("Slice", ["rows", "zero", "one", "one"], "col") and not row_wise("Slice", ["rows", "zero", "one", "zero"], "col")
    assert not row_wise("ReduceSum", ["rows", "one"], "col")  # not on the list
    assert not row_wise("Add", ["table", "bias"], "out4")  # its input is not edge rows: not an edge operator


def test_stages_alternate_kinds_in_dependency_order():
    # whole -> edges -> scatter -> scatter (reads the first) -> hits -> edges; an edge
    # product (node 6) read only by the last edge node moves next to it
    kinds = ["whole", "edges", "scatter", "scatter", "hits", "edges", "edges", "edges"]
    inputs_of = [[], [0], [1], [2], [3], [4], [1], [5, 6]]
    consumers_of = [[] for _ in kinds]
    for node, sources in enumerate(inputs_of):
        for source in sources:
            consumers_of[source].append(node)
    pinned = [False] * 7 + [True]
    stage = stage_numbers(kinds, inputs_of, consumers_of, pinned)
    assert all(KINDS[s % len(KINDS)] == kind for s, kind in zip(stage, kinds))
    assert all(stage[source] <= stage[node] for node, sources in enumerate(inputs_of) for source in sources)
    assert stage[3] > stage[2]  # dependent scatters never share a stage
    assert stage[6] == stage[7] > stage[1]  # the product joins its reader's stage


def _cumulative_model():
    """features [N, 3], edge_index [2, E] -> the running sum over the edges of the start
    hits' first feature: not row-wise (each row depends on every earlier one)."""
    nodes = [
        helper.make_node("Gather", ["edge_index", "first"], ["start"], axis=0),
        helper.make_node("Gather", ["features", "start"], ["gathered"], axis=0),
        helper.make_node("CumSum", ["gathered", "axis"], ["running"]),
        helper.make_node("Gather", ["running", "column"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cumulative",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["num_hits", 3]),
         helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["num_edges"])],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "first"),
         numpy_helper.from_array(np.array(0, dtype=np.int64), "axis"),
         numpy_helper.from_array(np.array(0, dtype=np.int64), "column")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_form_that_would_not_be_exact_is_refused(monkeypatch):
    model = _cumulative_model()
    RowBlockedForm(model)  # CumSum runs whole: the form is exact
    classify = row_blocks.is_row_wise
    monkeypatch.setattr(row_blocks, "is_row_wise",
                        lambda node, *args: node.op_type == "CumSum" and node.output[0] in args[1] or classify(node, *args))
    with pytest.raises(BlockedFormUnavailable, match="differs from the network's"):
        RowBlockedForm(model)


def test_a_form_that_cannot_run_the_probe_is_refused(monkeypatch):
    from trackserve.engines.onnx_runtime import SessionPool

    def fail(self, inputs, outputs):
        raise RuntimeError("kernel failure")

    monkeypatch.setattr(SessionPool, "run_into", fail)
    with pytest.raises(BlockedFormUnavailable, match="could not run the probe inputs: kernel failure"):
        RowBlockedForm(_cumulative_model())


def test_networks_with_other_inputs_have_no_blocked_form():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["scores"])], "other",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3, 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(BlockedFormUnavailable, match="neither an edge index"):
        RowBlockedForm(model)
    edges_only = helper.make_graph(
        [helper.make_node("Cast", ["edge_index"], ["scores"], to=TensorProto.FLOAT)], "edges_only",
        [helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)])
    with pytest.raises(BlockedFormUnavailable, match="and a hit table"):
        RowBlockedForm(helper.make_model(edges_only, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert issubclass(BlockedFormUnavailable, BundleError)


def test_network_runs_large_graphs_in_blocks_and_falls_back_without_a_form(networks, monkeypatch):
    path = networks["default_pruner"]
    features, edges = _graph(3000, 20000, seed=5)
    expected = _sequential_output(path, features, edges)
    network = ScatterSplitNetwork(path, intra_op_threads=2)
    assert not network.runs_in_blocks(20000, 1) and network.runs_in_blocks(20000, 2)
    assert not network.runs_in_blocks(scatter_split.BLOCKED_MIN_EDGES_PARALLEL - 1, 2)
    monkeypatch.setattr(scatter_split, "BLOCKED_MIN_EDGES", 10_000)
    calls = []
    form = network.blocked_form()
    monkeypatch.setattr(form, "run", lambda inputs, parallel, run=form.run: calls.append(parallel) or run(inputs, parallel))
    assert np.array_equal(network.run(features=features, edge_index=edges), expected)
    assert calls == [None]  # one call on the calling thread, in blocks
    runner = PartRunner(2)
    try:
        assert np.array_equal(network.run_in_blocks(runner, features=features, edge_index=edges), expected)
    finally:
        runner.close()
    # a network whose blocked form cannot be built runs as before and says why
    monkeypatch.setattr(row_blocks, "RowBlockedForm", _refuse)
    plain = ScatterSplitNetwork(path, intra_op_threads=2)
    assert not plain.runs_in_blocks(20000, 2)
    assert plain.blocked_form_problem == "no form here"
    assert np.array_equal(plain.run(features=features, edge_index=edges), expected)
    with pytest.raises(BundleError, match="no blocked form: no form here"):
        plain.run_in_blocks(None, features=features, edge_index=edges)


def _refuse(*args, **kwargs):
    raise BlockedFormUnavailable("no form here")


def test_blocked_form_reads_negative_indices_and_refuses_hits_outside_like_the_sequential_form(networks):
    path = networks["interaction"]
    features, edges = _graph(300, 4000, seed=9)
    edges[:, ::7] -= 300  # the same hits, written as negative indices
    expected = _sequential_output(path, features, edges)
    network = ScatterSplitNetwork(path, intra_op_threads=2)
    runner = PartRunner(2)
    try:
        got = network.run_in_blocks(runner, features=features, edge_index=edges)
        assert np.array_equal(got, expected)
        edges[1, 123] = 300  # one past the last hit
        with pytest.raises(InputError, match="network 'interaction' cannot run on these inputs"):
            network.run_in_blocks(runner, features=features, edge_index=edges)
    finally:
        runner.close()
