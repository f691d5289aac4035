"""``trackserve export``: to a file, into a bundle, and ``--check`` of an existing export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trackserve.bundle import StageParameters, file_sha256, load_bundle, make_bundle
from trackserve.cli import main
from trackserve.events.features import EXATRKX_SERVICE
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.resagnn import ResAGNN


def _gnn(seed: int) -> ResAGNN:
    torch.manual_seed(seed)
    return ResAGNN(in_channels=3, hidden=4, n_graph_iters=1, nb_node_layer=1, nb_edge_layer=1)


def _save_checkpoint(network, path):
    """A Lightning-style checkpoint (state dict and hyperparameters), as training writes it."""
    torch.save({"state_dict": network.state_dict(), "hyper_parameters": network.config}, path)
    return str(path)


@pytest.fixture(scope="module")
def made_bundle(tmp_path_factory):
    torch.manual_seed(0)
    networks = {
        "embedding": EmbeddingNetwork(in_channels=3, emb_hidden=8, nb_layer=1, emb_dim=4),
        "filter": EdgeFilter(in_channels=3, hidden=8, nb_layer=1),
        "gnn": _gnn(0),
    }
    stages = StageParameters(radius=0.5, max_neighbours=32, filter_cut=0.2, gnn_cut=0.5, edge_direction="i<j")
    return make_bundle(tmp_path_factory.mktemp("made") / "bundle", networks, features=EXATRKX_SERVICE, stages=stages).directory


@pytest.fixture
def bundle_dir(made_bundle, tmp_path):
    """A copy of the made bundle that a test may change."""
    return Path(shutil.copytree(made_bundle, tmp_path / "bundle"))


def test_export_to_a_file_then_check_it(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    output = tmp_path / "gnn.onnx"
    assert main(["export", checkpoint, "--kind", "gnn", "-o", str(output), "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "comparisons:" in out and "power-law destinations (5000 hits, 50000 edges)" in out
    assert f"wrote {output} (opset 17, sha256 {file_sha256(output)})" in out
    assert main(["export", checkpoint, "--kind", "gnn", "-o", str(output), "--check", "--runs", "2"]) == 0
    assert f"ok: {output} computes what {checkpoint} computes" in capsys.readouterr().out


def test_check_against_other_weights_fails_with_the_listing(tmp_path, capsys):
    output = tmp_path / "gnn.onnx"
    assert main(["export", _save_checkpoint(_gnn(1), tmp_path / "a.ckpt"), "--kind", "gnn", "-o", str(output), "--runs", "1"]) == 0
    capsys.readouterr()
    other = _save_checkpoint(_gnn(2), tmp_path / "b.ckpt")
    assert main(["export", other, "--kind", "gnn", "-o", str(output), "--check", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "trackserve export: error:" in err and "'scores' max|onnx - torch|" in err and "FAIL" in err


def test_export_into_a_bundle_replaces_the_network(bundle_dir, tmp_path, capsys):
    before = load_bundle(bundle_dir).networks["gnn"].sha256
    checkpoint = _save_checkpoint(_gnn(3), tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 0
    assert "updated" in capsys.readouterr().out
    bundle = load_bundle(bundle_dir)
    assert bundle.networks["gnn"].sha256 != before
    assert bundle.networks["gnn"].sha256 == file_sha256(bundle_dir / "gnn.onnx")
    assert main(["export", checkpoint, "--bundle", str(bundle_dir), "--network", "gnn", "--check", "--runs", "1"]) == 0
    assert "ok:" in capsys.readouterr().out


def test_bundle_without_network_name_is_refused(bundle_dir, tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(3), tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--bundle", str(bundle_dir)]) == 2
    assert "--bundle needs --network embedding|filter|pruner|gnn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", checkpoint, "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "0"])


def test_a_bundle_network_is_exported_again_from_its_own_weights(bundle_dir, capsys):
    (bundle_dir / "gnn.onnx").write_bytes(b"an export from another version")
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--check", "--runs", "1"]) == 2
    assert "trackserve export: error:" in capsys.readouterr().err
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "network: ResAGNN from the bundle's own weights (gnn.pt)" in out and "updated" in out
    bundle = load_bundle(bundle_dir)
    assert bundle.networks["gnn"].sha256 == file_sha256(bundle_dir / "gnn.onnx")
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--check", "--runs", "1"]) == 0
    assert "ok: " in capsys.readouterr().out


def test_export_without_a_network_needs_a_bundle(tmp_path, capsys):
    assert main(["export", "-o", str(tmp_path / "gnn.onnx")]) == 2
    assert "give the torch network NET.pt to export" in capsys.readouterr().err
