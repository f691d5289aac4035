"""``trackserve export``: to a file, into a bundle, and ``--check`` of an existing export."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from trackserve.bundle import StageParameters, file_sha256, load_bundle, make_bundle, replace_network
from trackserve.errors import BundleError
from trackserve.cli import main
from trackserve.events.features import EXATRKX_SERVICE
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.onnx_export import read_onnx_model
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
    # the provenance records the export again; the same network is not "replaced", so no note
    record = bundle.provenance["exported_again"][-1]
    assert record["network"] == "gnn" and record["replaced"] is False and record["opset"] >= 16


@pytest.mark.parametrize("options, named", [
    (["--kind", "gnn", "--hparams", "h.yaml"], "--kind and --hparams describe NET.pt, but NET.pt is not given"),
    (["--trust-pickle"], "--trust-pickle describes NET.pt, but NET.pt is not given"),
    (["--check", "--opset", "18"], "--opset is for writing, and --check writes nothing"),
    (["--check", "--overwrite"], "--overwrite is for writing, and --check writes nothing"),  # QA, 2026-12-02: ignored
])
def test_options_a_bundle_export_would_ignore_are_refused(bundle_dir, capsys, options, named):
    # They were ignored without a word: the network written or checked was the bundle's own.
    before = (bundle_dir / "pipeline.json").read_bytes()
    assert main(["export", "--bundle", str(bundle_dir), "--network", "embedding", *options]) == 2
    assert named in capsys.readouterr().err
    assert (bundle_dir / "pipeline.json").read_bytes() == before


def test_a_network_of_another_kind_than_the_bundle_slot_is_refused_by_name(bundle_dir, capsys):
    # QA, 2026-12-02: an embedding given for the GNN failed inside the parity check with
    # "forward() takes 2 positional arguments but 3 were given"
    before = (bundle_dir / "pipeline.json").read_bytes()
    status = main(["export", str(bundle_dir / "embedding.pt"), "--kind", "embedding", "--bundle", str(bundle_dir),
                   "--network", "gnn"])
    assert status == 2
    assert "(embedding network), but the bundle's gnn is a gnn network: give a gnn network" in capsys.readouterr().err
    assert (bundle_dir / "pipeline.json").read_bytes() == before


def test_weights_without_their_config_point_at_the_bundles_own(bundle_dir, tmp_path, capsys):
    torch.save(_gnn(3).state_dict(), tmp_path / "gnn.pt")  # weights only: the iterations cannot be read from them
    assert main(["export", str(tmp_path / "gnn.pt"), "--bundle", str(bundle_dir), "--network", "gnn", "--check"]) == 2
    err = capsys.readouterr().err
    assert "pass hyperparameters (--hparams YAML) with 'n_graph_iters'" in err
    assert "or, for the bundle's own weights of gnn with the config it records, leave NET.pt out" in err


def test_a_bundle_s_own_weights_file_exports_with_the_config_the_bundle_records(tmp_path, capsys):
    # a plain state dict: rebuilt from its layout alone, the default filter took 7 features, not the bundle's 3
    shipped = Path(__file__).resolve().parents[2] / "models" / "default"
    assert main(["export", str(shipped / "filter.pt"), "--output", str(tmp_path / "filter.onnx")]) == 0
    assert (f"trackserve export: note: {shipped / 'filter.pt'} is the filter weights of the bundle {shipped}: built with "
            "the config its pipeline.json records") in capsys.readouterr().err
    assert file_sha256(tmp_path / "filter.onnx") == file_sha256(shipped / "filter.onnx")
    from trackserve.export.checkpoint_import import ImportNote, import_checkpoint

    with pytest.warns(ImportNote, match="is the filter weights of the bundle"):  # the library function too
        assert import_checkpoint(shipped / "filter.pt").config == load_bundle(shipped).networks["filter"].config
    # a copy away from its bundle, or one changed since, is no such file: built from its layout, no note
    from trackserve.export.bundle_networks import recorded_config

    shutil.copy(shipped / "filter.pt", tmp_path / "filter.pt")
    assert recorded_config(tmp_path / "filter.pt") is None
    copy = tmp_path / "bundle"
    shutil.copytree(shipped, copy)
    assert recorded_config(copy / "filter.pt")[1:] == ("filter", load_bundle(shipped).networks["filter"].config)
    torch.save({**torch.load(copy / "filter.pt"), "extra": torch.zeros(1)}, copy / "filter.pt")
    assert recorded_config(copy / "filter.pt") is None


def test_an_edited_entry_is_not_built_into_the_bundle_from_its_own_weights(bundle_dir, capsys):
    path = bundle_dir / "pipeline.json"
    data = json.loads(path.read_text())
    data["networks"]["gnn"]["config"]["hidden"] = 6  # the weights' network is 4 wide
    path.write_text(json.dumps(data))
    before = (bundle_dir / "gnn.onnx").read_bytes()
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds another network than pipeline.json declares (config keys differ: hidden: the file's 4, the entry's 6)" in err
    assert "the bundle's weights fit the network the file records" in err and "restore the entry first" in err
    assert (bundle_dir / "gnn.onnx").read_bytes() == before


def test_another_networks_file_in_place_of_one_is_repaired_from_the_bundles_weights(bundle_dir, capsys):
    import shutil

    shutil.copyfile(bundle_dir / "filter.onnx", bundle_dir / "gnn.onnx")  # the filter's file over the GNN's
    assert main(["bundle-info", str(bundle_dir)]) == 2
    capsys.readouterr()
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 0
    assert load_bundle(bundle_dir).networks["gnn"].sha256 == file_sha256(bundle_dir / "gnn.onnx")


def test_a_network_replaced_by_another_is_recorded_and_noted(bundle_dir, tmp_path, capsys):
    torch.manual_seed(4)
    wider = ResAGNN(in_channels=3, hidden=6, n_graph_iters=1, nb_node_layer=1, nb_edge_layer=1)  # the bundle's: 4
    checkpoint = _save_checkpoint(wider, tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 0
    err = capsys.readouterr().err
    assert "the gnn network is now another than the one" in err and "tune-cut" in err
    record = load_bundle(bundle_dir).provenance["exported_again"][-1]
    assert record["replaced"] is True and record["architecture"] == "ResAGNN"
    assert "cuts and the provenance's settings and figures describe that one" in record["note"]


def test_other_weights_of_the_same_network_are_a_replacement_too(bundle_dir, tmp_path, capsys):
    # same architecture and config, other weights: the cuts were chosen for the old weights
    checkpoint = _save_checkpoint(_gnn(5), tmp_path / "gnn.ckpt")  # the bundle's GNN: _gnn(0)
    assert main(["export", checkpoint, "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 0
    assert "the gnn network is now another than the one" in capsys.readouterr().err
    assert load_bundle(bundle_dir).provenance["exported_again"][-1]["replaced"] is True
    # the same weights again (its own, re-exported): no replacement
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 0
    assert "another than the one" not in capsys.readouterr().err
    assert load_bundle(bundle_dir).provenance["exported_again"][-1]["replaced"] is False


def test_a_network_that_would_make_the_bundle_invalid_leaves_it_untouched(bundle_dir):
    from trackserve.events.features import TRACKML_1000

    # the same layout, made for other scales: its derived inputs disagree with the bundle's features
    torch.manual_seed(1)
    other = EdgeFilter(in_channels=3, hidden=8, nb_layer=1, derived_eta={"r": 0, "z": 2, "r_scale": TRACKML_1000.scales[0],
                                                                         "z_scale": TRACKML_1000.scales[2]})
    before = {path.name: path.read_bytes() for path in bundle_dir.iterdir()}
    with pytest.raises(BundleError, match=f"the filter network was not exported into {bundle_dir}, which is left as it "
                                          "was: with it the bundle would be invalid: networks.filter.config.derived_eta"):
        replace_network(bundle_dir, "filter", other, runs=1)
    assert {path.name: path.read_bytes() for path in bundle_dir.iterdir()} == before  # no stray scratch folder either
    assert main(["bundle-info", str(bundle_dir)]) == 0


def test_export_without_a_network_needs_a_bundle(tmp_path, capsys):
    assert main(["export", "-o", str(tmp_path / "gnn.onnx")]) == 2
    assert "give the torch network NET.pt to export" in capsys.readouterr().err
    assert main(["export", "-o", str(tmp_path / "gnn.onnx"), "--check"]) == 2
    assert "give the torch network NET.pt to check the ONNX file against" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusals, each in one line


def _one_line(err: str) -> str:
    """The error ``trackserve`` printed, checked to be a single line."""
    assert err.count("\n") == 1, err
    return err


def _nan_gnn() -> ResAGNN:
    """A GNN whose first layer holds a NaN: every score it computes is NaN."""
    network = _gnn(1)
    with torch.no_grad():
        network.input_network[0].weight[0, 0] = float("nan")
    return network


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text("n_graph_iters: 1\n")
    before = file_sha256(checkpoint), file_sha256(hparams)
    for command, source in (
        (["export", checkpoint, "--kind", "gnn", "-o", checkpoint], checkpoint),
        (["import", checkpoint, "-o", checkpoint], checkpoint),
        (["import", checkpoint, "--hparams", str(hparams), "-o", str(hparams)], str(hparams)),
    ):
        assert main(command + ["--overwrite"]) == 2
        assert f"--output {source} is the input file {source}: writing it would destroy" in _one_line(capsys.readouterr().err)
    assert (file_sha256(checkpoint), file_sha256(hparams)) == before


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    output = tmp_path / "gnn.onnx"
    output.write_bytes(b"an earlier export")
    for command in (["export", checkpoint, "--kind", "gnn", "--runs", "1"], ["import", checkpoint]):
        assert main(command + ["-o", str(output)]) == 2
        assert f"--output {output} exists; pass --overwrite to replace it" in _one_line(capsys.readouterr().err)
        assert output.read_bytes() == b"an earlier export"
        assert main(command + ["-o", str(output), "--overwrite"]) == 0
        assert f"wrote {output}" in capsys.readouterr().out
        output.write_bytes(b"an earlier export")
    # a missing directory is still created, as before
    assert main(["export", checkpoint, "--kind", "gnn", "--runs", "1", "-o", str(tmp_path / "new" / "gnn.onnx")]) == 0


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_unusable_output_path_is_refused_before_any_work(tmp_path, capsys, where):
    (tmp_path / "out").mkdir()
    (tmp_path / "plain").write_text("a file")
    output, problem = {
        "a directory": (tmp_path / "out", "is a directory; give a file name"),
        "under a file": (tmp_path / "plain" / "gnn.onnx", f"{tmp_path / 'plain'} is a file, not a directory"),
    }[where]
    absent = str(tmp_path / "absent.ckpt")  # would be the error if the network were loaded first
    for command in (["export", absent, "--kind", "gnn"], ["import", absent]):
        assert main(command + ["-o", str(output)]) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"--output {output}" in err and problem in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "plain"]  # no .partial file left
    assert not any((tmp_path / "out").iterdir())


def test_an_output_that_is_no_regular_file_is_refused_even_with_overwrite(tmp_path, capsys):
    """A FIFO (or a device) is no place for a network: os.replace would put a regular file in its place."""
    fifo = tmp_path / "gnn.onnx"
    os.mkfifo(fifo)
    absent = str(tmp_path / "absent.ckpt")  # would be the error if the network were loaded first
    for command in (["export", absent, "--kind", "gnn"], ["import", absent]):
        for overwrite in ([], ["--overwrite"]):
            assert main(command + ["-o", str(fifo), *overwrite]) == 2
            err = _one_line(capsys.readouterr().err)
            assert f"--output {fifo} is a FIFO (named pipe), not a file: an ONNX network is written to a regular " \
                   "file; give a file name" in err and "--overwrite" not in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gnn.onnx"]  # no .partial file left


@pytest.mark.skipif(not stat.S_ISCHR(os.stat("/dev/null").st_mode), reason="needs /dev/null, a character device")
def test_a_device_output_is_refused_even_with_overwrite(tmp_path, capsys):
    absent = str(tmp_path / "absent.ckpt")  # nothing to export even if the refusal failed: /dev/null stays
    for command in (["export", absent, "--kind", "gnn"], ["import", absent]):
        # checked first: without --overwrite the error must not invite it
        for overwrite in ([], ["--overwrite"]):
            assert main(command + ["-o", "/dev/null", *overwrite]) == 2
            err = _one_line(capsys.readouterr().err)
            assert "--output /dev/null is a character device, not a file" in err and "--overwrite" not in err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_symbolic_link_output_is_written_through(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    target, link = tmp_path / "target.onnx", tmp_path / "cur.onnx"
    target.write_bytes(b"an earlier export")
    link.symlink_to(target.name)
    export = ["export", checkpoint, "--kind", "gnn", "--runs", "1", "-o", str(link)]
    assert main(export) == 2
    assert f"--output {link} exists; pass --overwrite to replace it" in _one_line(capsys.readouterr().err)
    assert main(export + ["--overwrite"]) == 0
    assert f"wrote {link}" in capsys.readouterr().out
    assert link.is_symlink() and os.readlink(link) == target.name
    assert read_onnx_model(target).graph.node and file_sha256(link) == file_sha256(target)
    # a link to nothing yet: its target is created, the link kept
    dangling, new = tmp_path / "dangling.onnx", tmp_path / "new.onnx"
    dangling.symlink_to(new.name)
    assert main(["import", checkpoint, "-o", str(dangling)]) == 0
    assert dangling.is_symlink() and read_onnx_model(new).graph.node
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")]
    # a link to an input is the input: still refused
    before = file_sha256(checkpoint)
    to_input = tmp_path / "input.onnx"
    to_input.symlink_to(checkpoint)
    assert main(["import", checkpoint, "-o", str(to_input), "--overwrite"]) == 2
    assert f"--output {to_input} is the input file {checkpoint}" in _one_line(capsys.readouterr().err)
    assert file_sha256(checkpoint) == before and to_input.is_symlink()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_an_output_where_no_file_can_be_created_is_blamed_on_the_path(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--kind", "gnn", "-o", "/proc/gnn.onnx"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--output /proc/gnn.onnx" in err and "network" not in err


def test_check_of_a_file_that_is_no_onnx_model_is_explained(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--kind", "gnn", "-o", str(tmp_path / "gnn.onnx"), "--runs", "1"]) == 0
    data = (tmp_path / "gnn.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("not an ONNX model\n")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "folder.onnx").mkdir()
    for name, problem in (
        ("cut.onnx", "cannot be read as an ONNX model (DecodeError"), ("text.onnx", "cannot be read as an ONNX model"),
        ("empty.onnx", "holds no ONNX graph"), ("absent.onnx", "does not exist"), ("folder.onnx", "is a directory"),
    ):
        capsys.readouterr()
        assert main(["export", checkpoint, "--kind", "gnn", "-o", str(tmp_path / name), "--check"]) == 2
        assert f"ONNX file {tmp_path / name} {problem}" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("opset", ["7", "99"])
def test_an_unsupported_opset_is_refused_in_one_line(tmp_path, capfd, opset):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--kind", "gnn", "-o", str(tmp_path / "gnn.onnx"), "--opset", opset]) == 2
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.out
    assert f"--opset {opset} is not supported: trackserve exports ONNX opsets 16 to" in _one_line(captured.err)
    assert not (tmp_path / "gnn.onnx").exists()


def test_network_without_a_bundle_is_refused(tmp_path, capsys):
    checkpoint = _save_checkpoint(_gnn(1), tmp_path / "gnn.ckpt")
    assert main(["export", checkpoint, "--network", "gnn", "-o", str(tmp_path / "gnn.onnx")]) == 2
    assert "--network gnn names a network of a bundle and needs --bundle DIR" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "gnn.onnx").exists()


def test_nan_weights_fail_the_export_and_the_check(tmp_path, capsys):
    from trackserve.export.onnx_export import export_network

    checkpoint = _save_checkpoint(_nan_gnn(), tmp_path / "nan.ckpt")
    assert main(["export", checkpoint, "--kind", "gnn", "-o", str(tmp_path / "gnn.onnx"), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "'scores' max|onnx - torch| = 0" in err  # both sides agree on their NaN...
    assert "not finite (NaN or infinity): 15 of 15 values in PyTorch and 15 of 15 values in ONNX Runtime: FAIL" in err
    assert "weights hold NaN or infinity: input_network.0.weight (1 of 12)" in err
    assert not (tmp_path / "gnn.onnx").exists()
    unchecked = export_network(_nan_gnn(), "gnn", tmp_path / "unchecked.onnx", validate=False).path
    assert main(["export", checkpoint, "--kind", "gnn", "-o", unchecked, "--check", "--runs", "1"]) == 2
    assert "values in PyTorch and 15 of 15 values in ONNX Runtime: FAIL" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["cut short", "missing", "another network's"])
def test_damaged_bundle_weights_are_named_in_one_line(bundle_dir, capsys, damage):
    weights = bundle_dir / "gnn.pt"
    if damage == "cut short":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "missing":
        weights.unlink()
    else:
        shutil.copy(bundle_dir / "filter.pt", weights)
    for check in ([], ["--check"]):
        assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1", *check]) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"network 'gnn' of bundle {bundle_dir}: its torch weights gnn.pt" in err
        assert f"trackserve export NET.pt --bundle {bundle_dir} --network gnn" in err


def test_exporting_into_a_bundle_that_cannot_be_written_says_so(bundle_dir, capsys, monkeypatch):
    import os

    before = (bundle_dir / "pipeline.json").read_bytes()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == bundle_dir else real_access(path, mode))
    assert main(["export", "--bundle", str(bundle_dir), "--network", "gnn", "--runs", "1"]) == 2
    assert (f"cannot export into the bundle {bundle_dir}: its directory is not writable; export into a copy of the "
            "bundle you can write") in capsys.readouterr().err
    assert (bundle_dir / "pipeline.json").read_bytes() == before


def test_the_shipped_bundle_exported_again_is_the_same_network_with_the_same_config(tmp_path, capsys):
    """Config keys added later (output_layer_norm) are not written while at their default: a
    bundle written before them, exported again from its own weights, keeps its config and is
    not recorded as another network."""
    from trackserve.paths import DEFAULT_BUNDLE

    copy = tmp_path / "default"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    before = load_bundle(copy).networks["gnn"].config
    written = {name: (copy / name).stat().st_mtime_ns for name in ("gnn.onnx", "gnn.pt")}
    assert main(["export", "--bundle", str(copy), "--network", "gnn", "--runs", "1"]) == 0
    assert "now another than the one" not in capsys.readouterr().err
    bundle = load_bundle(copy)
    assert bundle.networks["gnn"].config == before
    assert bundle.provenance["exported_again"][-1]["replaced"] is False
    # README: the command writes the shipped ONNX and weights files byte for byte again
    for name in ("gnn.onnx", "gnn.pt"):
        assert (copy / name).stat().st_mtime_ns != written[name], f"{name} was not written again"
        assert file_sha256(copy / name) == file_sha256(DEFAULT_BUNDLE / name), name
