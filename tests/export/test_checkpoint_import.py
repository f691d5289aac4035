"""Checkpoint import: the real ExaTrkX TorchScript models and reference event, and
Lightning / state-dict files written the way the ExaTrkX and ACORN training code writes them."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from trackserve import cli
from trackserve.errors import CheckpointImportError
from trackserve.export.bundle_networks import load_torch_network
from trackserve.export.checkpoint_import import ImportNote, import_checkpoint
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.interaction_gnn import InteractionGNN
from trackserve.export.resagnn import ResAGNN

torch.set_num_threads(2)
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
              # the notes of settings taken by convention (tested on their own below)
              pytest.mark.filterwarnings("ignore::trackserve.export.checkpoint_import.ImportNote")]

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SERVICE = DATA / "exatrkx_service"
CTD2022 = DATA / "exatrkx_ctd2022"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")


def crowded_graph(num_nodes: int, num_edges: int, hot_nodes: int, features: int, seed: int):
    """Features and edges where both endpoints crowd onto a few nodes (many repeated indices)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(num_nodes, features, generator=generator) * 2 - 1
    start = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    start[: num_edges // 2] = torch.randint(0, hot_nodes, (num_edges // 2,), generator=generator)
    end = torch.randint(0, hot_nodes, (num_edges,), generator=generator)
    return x, torch.stack([start, end])


def load_csv(name: str, dtype) -> torch.Tensor:
    """One file of the service's reference event as a tensor."""
    return torch.tensor(np.loadtxt(SERVICE / "reference_event" / name, delimiter=","), dtype=dtype)


# ----------------------------------------------------------------------------- the real checkpoints


@needs_data
def test_service_gnn_reproduces_the_reference_event_logits():
    net = import_checkpoint(SERVICE / "models" / "gnn.pt", hparams=SERVICE / "models" / "hparams_GNN.yaml")
    assert isinstance(net, ResAGNN)
    assert net.config["hidden"] == 64 and net.config["n_graph_iters"] == 8 and net.config["edge_hidden"] == 67
    features = load_csv("in_e1000.csv", torch.float32)
    edges = load_csv("applyfilter_output_EDGE_LIST_AFTER_FILTER.csv", torch.int64)
    expected = load_csv("gnn_output_OUTPUT__0.csv", torch.float32)
    assert features.shape == (314, 3) and edges.shape == (2, 584)
    with torch.no_grad():
        logits = net(features, edges)
    assert float((logits - expected).abs().max()) < 1e-3


@needs_data
@pytest.mark.parametrize("path", [SERVICE / "models" / "gnn.pt", CTD2022 / "gnn_model.pt"], ids=["service", "ctd2022"])
def test_imported_gnn_equals_torchscript_exactly_on_crowded_graphs(path):
    net = import_checkpoint(path)  # no hparams: architecture and n_graph_iters from the TorchScript module
    scripted = torch.jit.load(str(path), map_location="cpu")
    x, edges = crowded_graph(1000, 8_000, 30, 3, seed=0)
    with torch.no_grad():
        assert torch.equal(net(x, edges), scripted(x, edges))


@needs_data
def test_ctd2022_gnn_reads_nodes_before_messages():
    net = import_checkpoint(CTD2022 / "gnn_model.pt", kind="gnn")
    assert net.config["node_input_order"] == "nodes_first"
    assert (net.config["nb_input_layer"], net.config["nb_node_layer"], net.config["nb_edge_layer"]) == (1, 2, 2)


@needs_data
def test_frozen_ctd2022_filter_is_recovered_from_its_code():
    net = import_checkpoint(CTD2022 / "filter_model.pt")
    assert isinstance(net, EdgeFilter)
    assert net.config == {
        "in_channels": 12, "hidden": 512, "nb_layer": 3, "activation": "Tanh", "layer_norm": True,
        "edge_differences": False, "periodic_features": [], "period": 2.0, "difference_scale": 1.0, "derived_eta": None, "pair_geometry": None,
    }
    scripted = torch.jit.load(str(CTD2022 / "filter_model.pt"), map_location="cpu")
    x, edges = crowded_graph(500, 3000, 30, 12, seed=3)
    with torch.no_grad():
        expected = scripted(x, edges)[:, 0]  # the TorchScript filter returns [E, 1]
        torch.testing.assert_close(net(x, edges), expected, rtol=1e-5, atol=1e-5)


@needs_data
def test_service_hparams_contradicting_the_weights_are_refused():
    with pytest.raises(CheckpointImportError, match="hidden=32 but the weights give hidden=64"):
        import_checkpoint(SERVICE / "models" / "gnn.pt", hparams={"hidden": 32})
    with pytest.raises(CheckpointImportError, match="nb_node_layer=5 but the weights give nb_node_layer=3"):
        import_checkpoint(SERVICE / "models" / "gnn.pt", hparams={"nb_node_layer": 5})
    # The service's hyperparameter file beside the ctd2022 GNN, whose networks are two layers deep.
    with pytest.raises(CheckpointImportError, match="nb_node_layer=3 but the weights give nb_node_layer=2; "
                                                    "nb_edge_layer=3 but the weights give nb_edge_layer=2"):
        import_checkpoint(CTD2022 / "gnn_model.pt", hparams=SERVICE / "models" / "hparams_GNN.yaml")


@needs_data
def test_a_torchscript_module_with_another_networks_hyperparameters_is_refused():
    # The module was compared and exported as it is; the wrong file given went unremarked.
    with pytest.raises(CheckpointImportError, match="its class is 'ResAGNN', but the hyperparameters name the class "
                                                    "'LayerlessEmbedding': are the hyperparameters another network's"):
        import_checkpoint(SERVICE / "models" / "gnn.pt", hparams=SERVICE / "models" / "hparams_Embedding.yaml")


@needs_data
@pytest.mark.parametrize("hparams, conflict", [
    ({"n_graph_iters": 3}, "n_graph_iters=3, the module has 8"),
    ({"hidden_activation": "Tanh"}, "hidden_activation='Tanh', the module uses ReLU"),
], ids=["n_graph_iters", "activation"])
def test_service_hparams_contradicting_the_torchscript_module_are_refused(tmp_path, hparams, conflict):
    """Hyperparameters the weights cannot check: the rebuilt network is compared with the module itself."""
    text = (SERVICE / "models" / "hparams_GNN.yaml").read_text()
    (key, value), = hparams.items()
    edited = tmp_path / "hparams_GNN.yaml"
    edited.write_text(re.sub(rf"(?m)^{key}: .*$", f"{key}: {value}", text))
    with pytest.raises(CheckpointImportError) as raised:
        import_checkpoint(SERVICE / "models" / "gnn.pt", hparams=edited)
    message = str(raised.value)
    assert "the ResAGNN rebuilt from it does not compute what its TorchScript module computes" in message
    assert f"the hyperparameters given disagree with the checkpoint ({conflict})" in message and "\n" not in message


@needs_data
def test_kind_contradicting_the_checkpoint_is_refused():
    with pytest.raises(CheckpointImportError, match="holds a ResAGNN network, not the VanillaFilter"):
        import_checkpoint(SERVICE / "models" / "gnn.pt", kind="filter")


# ----------------------------------------------------------------------------- Lightning and state-dict files


def save_lightning(path: Path, state: dict, hparams: dict, prefix: str = "") -> Path:
    """A Lightning-style checkpoint: ``state_dict`` plus ``hyper_parameters`` (and training extras)."""
    torch.save({
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.9.0",
        "state_dict": {prefix + name: tensor for name, tensor in state.items()},
        "hyper_parameters": hparams, "optimizer_states": [], "lr_schedulers": [],
    }, path)
    return path


def assert_same_outputs(imported, original, features: int, with_edges: bool = True):
    """Both networks give the same output on a crowded random graph."""
    x, edges = crowded_graph(300, 4000, 20, features, seed=11)
    with torch.no_grad():
        if with_edges:
            torch.testing.assert_close(imported(x, edges), original(x, edges), rtol=0, atol=0)
        else:
            torch.testing.assert_close(imported(x), original(x), rtol=0, atol=0)


def test_lightning_resagnn_checkpoint_imports(tmp_path):
    torch.manual_seed(0)
    # ExaTrkX's ResAGNN builds its input network with make_mlp's default hidden activation
    # (ReLU) and hidden_activation only at its output
    original = ResAGNN(in_channels=3, hidden=16, n_graph_iters=4, nb_node_layer=2, nb_edge_layer=2,
                       hidden_activation="Tanh", input_hidden_activation="ReLU").eval()
    hparams = {"name": "ResAGNN", "in_channels": 3, "hidden": 16, "n_graph_iters": 4, "nb_node_layer": 2,
               "nb_edge_layer": 2, "hidden_activation": "Tanh", "layernorm": True, "lr": 0.001}
    path = save_lightning(tmp_path / "gnn.ckpt", original.state_dict(), hparams)
    imported = import_checkpoint(path)
    assert isinstance(imported, ResAGNN) and imported.config == original.config
    assert [type(m).__name__ for m in imported.input_network] == ["Linear", "LayerNorm", "ReLU", "Linear",
                                                                   "LayerNorm", "Tanh"]
    assert_same_outputs(imported, original, 3)


def test_legacy_layerless_embedding_state_dict_is_renamed(tmp_path):
    """The original LayerlessEmbedding keys (layers.i, emb_layer, unused norm) under a 'model.' prefix."""
    torch.manual_seed(1)
    original = EmbeddingNetwork(in_channels=3, emb_hidden=32, nb_layer=3, emb_dim=8).eval()
    linears = [module for module in original.network if isinstance(module, torch.nn.Linear)]
    state = {}
    for index, linear in enumerate(linears[:-1]):
        state[f"model.layers.{index}.weight"], state[f"model.layers.{index}.bias"] = linear.weight, linear.bias
    state["model.emb_layer.weight"], state["model.emb_layer.bias"] = linears[-1].weight, linears[-1].bias
    state["model.norm.weight"], state["model.norm.bias"] = torch.ones(32), torch.zeros(32)
    torch.save(state, tmp_path / "embedding.pt")
    imported = import_checkpoint(tmp_path / "embedding.pt")
    assert imported.config["normalize"] is False and imported.config["activation"] == "Tanh"
    assert_same_outputs(imported, original, 3, with_edges=False)


def test_acorn_embedding_with_norm_regime_is_normalised(tmp_path):
    torch.manual_seed(2)
    original = EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=4, activation="SiLU",
                                layer_norm=True, layer_norm_affine=False, normalize=True).eval()
    hparams = {"name": "LayerlessEmbedding", "emb_hidden": 16, "nb_layer": 2, "emb_dim": 4,
               "activation": "SiLU", "regime": ["rp", "hnm", "norm"]}
    imported = import_checkpoint(save_lightning(tmp_path / "emb.ckpt", original.state_dict(), hparams))
    assert imported.config == original.config
    assert_same_outputs(imported, original, 3, with_edges=False)


def test_vanilla_filter_lightning_checkpoint_drops_unused_batchnorm(tmp_path):
    torch.manual_seed(3)
    original = EdgeFilter(in_channels=3, hidden=32, nb_layer=4).eval()
    state = dict(original.state_dict())
    state["batchnorm.weight"], state["batchnorm.bias"] = torch.ones(32), torch.zeros(32)
    hparams = {"hparams": {"name": "VanillaFilter", "in_channels": 3, "hidden": 32, "nb_layer": 4,
                           "layernorm": True, "batchnorm": False, "emb_channels": 0}}
    imported = import_checkpoint(save_lightning(tmp_path / "filter.ckpt", state, hparams))
    assert imported.config == original.config
    assert_same_outputs(imported, original, 3)


def test_filter_trained_with_batchnorm_is_refused(tmp_path):
    original = EdgeFilter(in_channels=3, hidden=8, nb_layer=2)
    path = save_lightning(tmp_path / "filter.ckpt", original.state_dict(), {"name": "VanillaFilter", "batchnorm": True})
    with pytest.raises(CheckpointImportError, match="batchnorm=True"):
        import_checkpoint(path)


@pytest.mark.parametrize("variant", [
    {},
    # ACORN's make_mlp puts no LayerNorm before the output activation (output_layer_norm False)
    dict(residual=False, bidirectional_messages=True, edge_update_uses_new_nodes=True, layer_norm_affine=False,
         hidden_activation="SiLU", output_activation="Tanh", output_layer_norm=False),
], ids=["exatrkx", "acorn"])
def test_interaction_gnn_state_dict_imports_with_hparams(tmp_path, variant):
    torch.manual_seed(4)
    original = InteractionGNN(in_channels=4, hidden=16, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=3,
                              **variant).eval()
    torch.save(original.state_dict(), tmp_path / "ignn.pt")
    hparams = {"n_graph_iters": 3, "hidden_activation": variant.get("hidden_activation", "ReLU"),
               "output_activation": variant.get("output_activation")}
    imported = import_checkpoint(tmp_path / "ignn.pt", kind="interaction", hparams=hparams)
    assert imported.config == original.config
    assert_same_outputs(imported, original, 4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_torchscript_with_wrong_hparams_is_refused(tmp_path):
    """A TorchScript module without an n_graph_iters attribute: the outputs tell the hyperparameters are wrong."""
    torch.manual_seed(6)
    original = ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=1, nb_edge_layer=1).eval()
    x, edges = crowded_graph(20, 50, 5, 3, seed=1)
    torch.jit.save(torch.jit.trace(original, (x, edges)), tmp_path / "traced.pt")
    imported = import_checkpoint(tmp_path / "traced.pt", hparams={"n_graph_iters": 2})
    assert_same_outputs(imported, original, 3)
    with pytest.raises(CheckpointImportError, match=r"outputs differ by up to .* on random inputs of 23 hits, 61 edges\): "
                                                    r"the hyperparameters given likely disagree with the checkpoint"):
        import_checkpoint(tmp_path / "traced.pt", hparams={"n_graph_iters": 3})
    with pytest.raises(CheckpointImportError, match=r"\(hidden_activation='Tanh', the module uses ReLU\): correct them"):
        import_checkpoint(tmp_path / "traced.pt", hparams={"n_graph_iters": 2, "hidden_activation": "Tanh"})


@pytest.mark.parametrize("value", [0, -2, float("nan"), 2.5, True, "8"])
def test_n_graph_iters_must_be_a_positive_integer(tmp_path, value):
    torch.save(InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=1, nb_edge_layer=1).state_dict(),
               tmp_path / "ignn.pt")
    with pytest.raises(CheckpointImportError, match=rf"'n_graph_iters' must be an integer >= 1, the hyperparameters give "
                                                    rf"{re.escape(repr(value))}$"):
        import_checkpoint(tmp_path / "ignn.pt", hparams={"n_graph_iters": value})


def test_hparams_that_are_beyond_any_network_or_given_twice_are_refused(tmp_path):
    # QA, 2026-12-02: n_graph_iters 100000000 was built and run (minutes to hours before the
    # comparison with the module refused it); a key given twice kept the last value silently
    torch.save(InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=1, nb_edge_layer=1).state_dict(),
               tmp_path / "ignn.pt")
    with pytest.raises(CheckpointImportError, match="n_graph_iters 100000000 is beyond the 64 layers or iterations"):
        import_checkpoint(tmp_path / "ignn.pt", hparams={"n_graph_iters": 10**8, "hidden_activation": "ReLU"})

    def refusal(text: str) -> tuple[Path, str]:
        hparams = tmp_path / "hparams.yaml"
        hparams.write_text(text)
        with pytest.raises(CheckpointImportError) as raised:
            import_checkpoint(tmp_path / "ignn.pt", hparams=hparams)
        return hparams, str(raised.value)

    twice, message = refusal("n_graph_iters: 8\nn_graph_iters: 2\n")
    assert message == (f"hyperparameter file {twice} is not valid YAML: the key 'n_graph_iters' appears twice in one "
                       "mapping (keep one of them) at line 2, column 1")
    nested, message = refusal("n_graph_iters: 2\nhparams:\n  n_graph_iters: 8\n  hidden: 8\n")
    assert message == (f"hyperparameter file {nested}: 1 key(s) have two values, at the top level and under 'hparams': "
                       "n_graph_iters: 2 and 8 under hparams; keep one value of each")


def test_weights_alone_are_built_as_their_layout_reads_with_a_note(tmp_path):
    # QA, 2026-12-02: a bundle's weights file copied out of its bundle was exported without a
    # word as a network reading 7 features (its first layer's derived columns taken for features)
    torch.save(EdgeFilter(in_channels=3, hidden=8, nb_layer=2).state_dict(), tmp_path / "filter.pt")
    with pytest.warns(ImportNote, match=r"holds weights alone: the VanillaFilter was built as their layout reads "
                                        r"\(in_channels=3, hidden=8, nb_layer=2\); a network whose first layer reads "
                                        r"derived columns"):
        network = import_checkpoint(tmp_path / "filter.pt")
    assert network.config["in_channels"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportNote)  # with hyperparameters: nothing to note
        import_checkpoint(tmp_path / "filter.pt", hparams={"in_channels": 3, "hidden": 8, "nb_layer": 2})


def test_weights_missing_a_layer_are_refused_naming_the_checkpoint(tmp_path):
    # QA, 2026-12-02: "no Linear layer found under 'input_network.'" did not say which file
    state = {key: value for key, value in ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=1,
                                                  nb_edge_layer=1).state_dict().items()
             if not key.startswith("input_network.")}
    torch.save({"state_dict": state, "hyper_parameters": {"n_graph_iters": 2, "hidden_activation": "ReLU"}},
               tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointImportError, match=rf"^checkpoint {re.escape(str(tmp_path / 'lightning.ckpt'))}: no "
                                                    r"Linear layer found under 'input_network\.'"):
        import_checkpoint(tmp_path / "lightning.ckpt", kind="resagnn")


def test_invalid_hparams_yaml_is_one_line(tmp_path):
    (tmp_path / "hparams.yaml").write_text("hidden: 64\nregime: [rp, hnm\n")
    torch.save(EdgeFilter(in_channels=3, hidden=8, nb_layer=2).state_dict(), tmp_path / "filter.pt")
    with pytest.raises(CheckpointImportError) as raised:
        import_checkpoint(tmp_path / "filter.pt", hparams=tmp_path / "hparams.yaml")
    assert str(raised.value) == (f"hyperparameter file {tmp_path / 'hparams.yaml'} is not valid YAML: "
                                 "expected ',' or ']', but got '<stream end>' at line 3, column 1")


def test_missing_n_graph_iters_is_asked_for(tmp_path):
    torch.save(InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=1, nb_edge_layer=1).state_dict(),
               tmp_path / "ignn.pt")
    with pytest.raises(CheckpointImportError, match="'n_graph_iters' cannot be read from the weights"):
        import_checkpoint(tmp_path / "ignn.pt")


def test_unmappable_keys_and_shapes_are_all_listed(tmp_path):
    state = dict(ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=1).state_dict())
    state["edge_network.network.0.bias"] = torch.zeros(5)  # shape mismatch
    state["attention.weight"] = torch.zeros(3, 3)          # unexpected
    del state["node_network.network.3.bias"]               # missing
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointImportError) as raised:
        import_checkpoint(tmp_path / "broken.pt", hparams={"n_graph_iters": 2, "hidden_activation": "ReLU"})
    message = str(raised.value)
    assert "unexpected keys (in the checkpoint, not in the network): attention.weight" in message
    assert "missing keys (in the network, not in the checkpoint): node_network.network.3.bias" in message
    assert "edge_network.network.0.bias: checkpoint (5,), network (11,)" in message


def test_unknown_network_and_bad_files_are_explained(tmp_path):
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointImportError, match="cannot tell which network"):
        import_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointImportError, match="does not exist"):
        import_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("text.pt", "empty.pt"):  # neither a zip archive nor a pickle: no advice to trust it
        with pytest.raises(CheckpointImportError, match="is not a PyTorch checkpoint: it is neither a zip") as error:
            import_checkpoint(tmp_path / name)
        assert "trust_pickle" not in str(error.value)
    good = (tmp_path / "other.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])  # a zip archive cut short
    with pytest.raises(CheckpointImportError, match="is a damaged zip archive"):
        import_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "cut-pickle.pt").write_bytes(b"\x80\x02}q\x00")  # a pickle cut short
    with pytest.raises(CheckpointImportError, match="cannot be read by torch.load: it ends early"):
        import_checkpoint(tmp_path / "cut-pickle.pt")
    with pytest.raises(CheckpointImportError, match="unknown kind"):
        import_checkpoint(tmp_path / "other.pt", kind="transformer")


class _Unsafe:
    """A pickled class: loading it needs trust."""


def test_legacy_torch_save_format_still_reads(tmp_path):
    # torch.save's format before the zip archive: pickles one after the other.
    network = EdgeFilter(in_channels=3, hidden=8, nb_layer=2)
    path = tmp_path / "legacy.pt"
    torch.save(network.state_dict(), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    imported = import_checkpoint(path)
    assert isinstance(imported, EdgeFilter)
    for name, tensor in network.state_dict().items():
        assert torch.equal(imported.state_dict()[name], tensor)


def test_pickle_with_python_objects_needs_trust(tmp_path):
    state = EdgeFilter(in_channels=3, hidden=8, nb_layer=2).state_dict()
    path = tmp_path / "filter.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"name": "VanillaFilter"}, "extra": _Unsafe()}, path)
    with pytest.raises(CheckpointImportError, match="trust_pickle=True") as raised:
        import_checkpoint(path)
    assert f"holds Python objects besides tensors, which are not read unless trusted (Unsupported global: GLOBAL {__name__}._Unsafe)" \
        in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(import_checkpoint(path, trust_pickle=True), EdgeFilter)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cli_import_writes_an_onnx_file_that_matches_the_checkpoint(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(5)
    original = ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=1).eval()
    path = save_lightning(tmp_path / "gnn.ckpt", original.state_dict(), {"name": "ResAGNN", "n_graph_iters": 2,
                                                                          "hidden_activation": "ReLU"})
    output = tmp_path / "gnn.onnx"
    assert cli.main(["import", str(path), "--output", str(output)]) == 0
    assert "imported ResAGNN" in capsys.readouterr().out
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    x, edges = crowded_graph(500, 20_000, 25, 3, seed=12)
    feeds = dict(zip([tensor.name for tensor in session.get_inputs()], (x.numpy(), edges.numpy())))
    with torch.no_grad():
        expected = original(x, edges).numpy()
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_cli_import_reports_errors_with_status_2(tmp_path, capsys):
    status = cli.main(["import", str(tmp_path / "absent.pt"), "--output", str(tmp_path / "x.onnx")])
    assert status == 2
    assert "absent.pt does not exist" in capsys.readouterr().err


def _small_interaction(**variant):
    torch.manual_seed(8)
    return InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2, **variant).eval()


@pytest.mark.parametrize("hparams, message", [
    ({"aggregation": "mean"}, "aggregation 'mean': trackserve's GNNs sum the messages"),
    ({"aggregation": ["sum", "max"]}, r"aggregation \['sum', 'max'\]: trackserve's GNNs sum the messages"),
    ({"aggregation": "sum_max"}, "aggregation 'sum_max'"),
    ({"undirected": True}, r"undirected=True \(each edge scored both ways and the two scores averaged\)"),
    ({"batchnorm": True}, "trained with batchnorm=True, whose batch statistics"),
    ({"node_net_recurrent": False}, "node_net_recurrent=False gives each message-passing step networks of its own"),
])
def test_gnn_options_that_change_what_it_computes_are_refused(tmp_path, hparams, message):
    path = save_lightning(tmp_path / "gnn.ckpt", _small_interaction().state_dict(),
                          {"name": "InteractionGNN", "n_graph_iters": 2, "hidden_activation": "ReLU", **hparams})
    with pytest.raises(CheckpointImportError, match=message):
        import_checkpoint(path)


@pytest.mark.parametrize("aggregation", ["sum", ["sum"], "add"])
def test_summed_aggregations_import(tmp_path, aggregation):
    original = _small_interaction()
    path = save_lightning(tmp_path / "gnn.ckpt", original.state_dict(),
                          {"name": "InteractionGNN", "n_graph_iters": 2, "hidden_activation": "ReLU",
                           "aggregation": aggregation})
    assert_same_outputs(import_checkpoint(path), original, 3)


@pytest.mark.parametrize("key", ["name", "model"])
def test_acorn_interaction_gnn2_is_refused_by_name(tmp_path, key):
    path = save_lightning(tmp_path / "gnn.ckpt", _small_interaction().state_dict(),
                          {key: "InteractionGNN2", "n_graph_iters": 2, "hidden_activation": "ReLU"})
    with pytest.raises(CheckpointImportError, match="holds ACORN's InteractionGNN2 .* which trackserve cannot rebuild"):
        import_checkpoint(path)


def test_acorn_output_activation_has_no_layer_norm_before_it(tmp_path):
    """ACORN's make_mlp adds the output LayerNorm only when asked (output_layer_norm), which its
    InteractionGNN never does: the imported encoders end Linear, activation."""
    acorn = dict(residual=False, bidirectional_messages=True, edge_update_uses_new_nodes=True, layer_norm_affine=False,
                 output_layer_norm=False, hidden_activation="SiLU", output_activation="Tanh")
    original = _small_interaction(**acorn)
    path = save_lightning(tmp_path / "gnn.ckpt", original.state_dict(),
                          {"model": "InteractionGNN", "n_graph_iters": 2, "hidden_activation": "SiLU",
                           "output_activation": "Tanh", "layernorm": True})
    imported = import_checkpoint(path)
    assert [type(m).__name__ for m in imported.node_encoder] == ["Linear", "LayerNorm", "SiLU", "Linear", "Tanh"]
    assert_same_outputs(imported, original, 3)


def test_acorn_metric_learning_named_by_model_is_normalised(tmp_path):
    torch.manual_seed(3)
    original = EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=4, activation="Tanh",
                                layer_norm=True, layer_norm_affine=False, normalize=True).eval()
    path = save_lightning(tmp_path / "embedding.ckpt", original.state_dict(),
                          {"model": "MetricLearning", "activation": "Tanh", "emb_hidden": 16, "nb_layer": 2,
                           "emb_dim": 4})
    imported = import_checkpoint(path)
    assert imported.config["normalize"] is True
    assert_same_outputs(imported, original, 3, with_edges=False)


def test_a_gnn_state_dict_without_its_activation_is_asked_for_it(tmp_path):
    torch.save(_small_interaction(hidden_activation="SiLU").state_dict(), tmp_path / "gnn.pt")
    with pytest.raises(CheckpointImportError, match="the hidden activation cannot be read from the weights; pass "
                                                    "hyperparameters \\(--hparams YAML\\) with 'hidden_activation'"):
        import_checkpoint(tmp_path / "gnn.pt", kind="interaction", hparams={"n_graph_iters": 2})
    with pytest.raises(CheckpointImportError, match="pass hyperparameters \\(--hparams YAML\\) with 'n_graph_iters' \\(and "
                                                    "'hidden_activation', which they cannot tell either\\)"):
        import_checkpoint(tmp_path / "gnn.pt", kind="interaction")


class _LogitsAndScores(InteractionGNN):
    """A GNN whose traced module returns its logits and their sigmoid."""

    def forward(self, x, edge_index):
        logits = super().forward(x, edge_index)
        return logits, torch.sigmoid(logits)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_module_returning_several_tensors_is_compared(tmp_path):
    original = _small_interaction(hidden_activation="Tanh")
    both = _LogitsAndScores(**original.config)
    both.load_state_dict(original.state_dict())
    x, edges = crowded_graph(20, 50, 5, 3, seed=1)
    torch.jit.save(torch.jit.trace(both.eval(), (x, edges)), tmp_path / "traced.pt")
    hparams = {"n_graph_iters": 2, "hidden_activation": "Tanh"}
    assert_same_outputs(import_checkpoint(tmp_path / "traced.pt", kind="interaction", hparams=hparams), original, 3)
    with pytest.raises(CheckpointImportError, match="does not compute what its TorchScript module computes"):
        import_checkpoint(tmp_path / "traced.pt", kind="interaction", hparams={**hparams, "n_graph_iters": 3})


class _OtherInterface(InteractionGNN):
    """A GNN whose traced module takes a third input."""

    def forward(self, x, edge_index, edge_weights):
        return super().forward(x, edge_index) * edge_weights


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_module_that_cannot_be_compared_is_said_so(tmp_path, capsys):
    other = _OtherInterface(**_small_interaction().config).eval()
    x, edges = crowded_graph(20, 50, 5, 3, seed=1)
    torch.jit.save(torch.jit.trace(other, (x, edges, torch.ones(edges.shape[1]))), tmp_path / "scripted.pt")
    with pytest.warns(UserWarning, match="not compared with its TorchScript module: it cannot be called as "
                                         r"module\(features, edge_index\)"):
        import_checkpoint(tmp_path / "scripted.pt", kind="interaction", hparams={"n_graph_iters": 2,
                                                                                "hidden_activation": "ReLU"})
    assert cli.main(["import", str(tmp_path / "scripted.pt"), "--kind", "interaction", "--hparams",
                     str(_write_yaml(tmp_path / "h.yaml", "n_graph_iters: 2\nhidden_activation: ReLU\n")),
                     "-o", str(tmp_path / "gnn.onnx")]) == 0
    assert "trackserve import: note: checkpoint" in capsys.readouterr().err


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unreadable_hyperparameters_are_one_line_errors(tmp_path):
    torch.save(_small_interaction().state_dict(), tmp_path / "gnn.pt")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    for hparams, message in ((tmp_path, "is a directory: give the YAML file itself"),
                             (tmp_path / "binary.yaml", r"is not UTF-8 text \(byte 0\)")):
        with pytest.raises(CheckpointImportError, match=message):
            import_checkpoint(tmp_path / "gnn.pt", hparams=hparams)
    path = tmp_path / "listed.ckpt"
    torch.save({"state_dict": _small_interaction().state_dict(), "hyper_parameters": [1, 2]}, path)
    with pytest.raises(CheckpointImportError, match="its hyper_parameters are a list, not a mapping"):
        import_checkpoint(path)


@pytest.mark.parametrize("value, refused", [("false", False), ("False", False), (0, False), ("true", True),
                                            ("Yes", True), (1, True)])
def test_flags_written_as_words_or_numbers_are_read_as_they_mean(tmp_path, value, refused):
    original = _small_interaction()
    path = save_lightning(tmp_path / "gnn.ckpt", original.state_dict(),
                          {"name": "InteractionGNN", "n_graph_iters": 2, "hidden_activation": "ReLU",
                           "undirected": value, "node_net_recurrent": "True"})
    if refused:
        with pytest.raises(CheckpointImportError, match="undirected=True"):
            import_checkpoint(path)
    else:
        assert_same_outputs(import_checkpoint(path), original, 3)


def test_a_flag_that_is_neither_true_nor_false_is_named(tmp_path):
    path = save_lightning(tmp_path / "gnn.ckpt", _small_interaction().state_dict(),
                          {"name": "InteractionGNN", "n_graph_iters": 2, "hidden_activation": "ReLU",
                           "node_net_recurrent": "sometimes"})
    with pytest.raises(CheckpointImportError, match="hyperparameter node_net_recurrent='sometimes' is neither true "
                                                    "nor false"):
        import_checkpoint(path)


# ----------------------------------------------------------------------------- trackserve's own networks


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,kind", [("embedding", "embedding"), ("filter", "filter"), ("pruner", "gnn"),
                                       ("gnn", "gnn")])
def test_a_bundle_networks_weights_import_with_its_own_config(name, kind):
    # The default bundle's networks read more first-layer columns than features (derived eta,
    # pair differences, edge geometry): the original layouts' shape rules cannot tell their
    # config, the bundle's own config (as pipeline.json gives it) must build them as they are.
    bundle = REPO / "models" / "default"
    original = load_torch_network(str(bundle), name)
    imported = import_checkpoint(bundle / f"{name}.pt", kind=kind, hparams=dict(original.config))
    assert type(imported) is type(original) and imported.config == original.config
    in_channels = original.config["in_channels"]
    x, edges = crowded_graph(300, 2000, 10, in_channels, seed=3)
    with torch.no_grad():
        ours = imported(x) if kind == "embedding" else imported(x, edges)
        theirs = original(x) if kind == "embedding" else original(x, edges)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_full_config_that_does_not_fit_the_weights_is_refused_with_every_mismatch():
    config = dict(load_torch_network(str(REPO / "models" / "default"), "gnn").config)
    config["hidden"] = 32  # the pruner's width, not this GNN's 48
    with pytest.raises(CheckpointImportError, match="shape mismatches: .*node_encoder.0.weight: checkpoint \\(48, "):
        import_checkpoint(REPO / "models" / "default" / "gnn.pt", kind="gnn", hparams=config)


def test_settings_the_weights_cannot_show_are_noted_when_taken_by_convention(tmp_path, capsys):
    torch.manual_seed(2)
    original = InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2,
                              bidirectional_messages=True, residual=True).eval()
    torch.save(original.state_dict(), tmp_path / "ignn.pt")
    hparams = {"n_graph_iters": 2, "hidden_activation": "ReLU"}
    with pytest.warns(ImportNote, match="residual and edge_update_uses_new_nodes cannot be read from the weights"):
        guessed = import_checkpoint(tmp_path / "ignn.pt", kind="interaction", hparams=hparams)
    assert guessed.config["residual"] is False  # ACORN's convention for a bidirectional one: not this network
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportNote)  # given: nothing to note, and the network is the trained one
        given = import_checkpoint(tmp_path / "ignn.pt", kind="interaction",
                                  hparams={**hparams, "residual": True, "edge_update_uses_new_nodes": False})
    assert given.config == original.config
    assert cli.main(["import", str(tmp_path / "ignn.pt"), "--kind", "interaction", "--hparams",
                     str(_write_yaml(tmp_path / "h.yaml", "n_graph_iters: 2\nhidden_activation: ReLU\n")),
                     "-o", str(tmp_path / "gnn.onnx")]) == 0
    assert "trackserve import: note: checkpoint" in capsys.readouterr().err

    resagnn = ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2,
                      node_input_order="nodes_first").eval()
    torch.save(resagnn.state_dict(), tmp_path / "res.pt")
    with pytest.warns(ImportNote, match="node_input_order cannot be read from the weights .* built with "
                                        "node_input_order='messages_first'"):
        import_checkpoint(tmp_path / "res.pt", kind="resagnn", hparams={"n_graph_iters": 2, "hidden_activation": "ReLU"})


def test_cli_export_of_a_bundle_networks_weights_with_its_config(tmp_path, capsys):
    bundle = REPO / "models" / "default"
    config = load_torch_network(str(bundle), "filter").config
    hparams = tmp_path / "filter.json"
    hparams.write_text(json.dumps(config))
    assert cli.main(["export", str(bundle / "filter.pt"), "--kind", "filter", "--hparams", str(hparams),
                     "-o", str(tmp_path / "filter.onnx")]) == 0
    out = capsys.readouterr().out
    assert "network: VanillaFilter from" in out and "wrote " in out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_unknown_class_name_is_noted_and_trackserve_own_class_names_are_known(tmp_path):
    torch.manual_seed(1)
    net = ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2).eval()
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": {"name": "GravNetGNN", "n_graph_iters": 2,
                                                                     "hidden_activation": "ReLU"}},
               tmp_path / "gravnet.ckpt")
    with pytest.warns(ImportNote, match="names its class 'GravNetGNN', which trackserve does not know; it was taken "
                                        "for a ResAGNN by its key layout"):
        import_checkpoint(tmp_path / "gravnet.ckpt")
    embedding = EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=4).eval()
    x = torch.rand(50, 3)
    torch.jit.save(torch.jit.trace(embedding, (x,)), tmp_path / "embedding.pt")
    imported = import_checkpoint(tmp_path / "embedding.pt")
    assert isinstance(imported, EmbeddingNetwork)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), embedding(x))


def test_hyperparameters_of_another_network_are_named_as_such(tmp_path):
    # Was "no Linear layer found under 'network.'": the class the hyperparameters named was built and found no weights.
    torch.save(_small_interaction().state_dict(), tmp_path / "gnn.pt")
    with pytest.raises(CheckpointImportError, match="the hyperparameters name the class 'LayerlessEmbedding', but its "
                                                    "weights have the key layout of InteractionGNN .*another network's"):
        import_checkpoint(tmp_path / "gnn.pt", hparams={"name": "LayerlessEmbedding", "n_graph_iters": 2})
