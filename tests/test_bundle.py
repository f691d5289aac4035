"""The bundle: make, save and load round trip; every kind of damage refused with a message naming it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trackserve.bundle import (
    PIPELINE_FILE,
    SCHEMA_VERSION,
    Bundle,
    StageParameters,
    file_sha256,
    load_bundle,
    make_bundle,
    replace_network,
    save_bundle,
)
from trackserve.cli import main
from trackserve.errors import BundleError, ExportParityError, InputError
from trackserve.events.features import EXATRKX_SERVICE
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.resagnn import ResAGNN

STAGES = StageParameters(radius=1.6, max_neighbours=64, filter_cut=0.21, gnn_cut=0.75, edge_direction="i>j")


def _networks():
    torch.manual_seed(0)
    return {
        "embedding": EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=8),
        "filter": EdgeFilter(in_channels=3, hidden=16, nb_layer=2),
        "gnn": ResAGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2),
    }


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A bundle made once from small networks, and those networks."""
    networks = _networks()
    directory = tmp_path_factory.mktemp("made") / "bundle"
    bundle = make_bundle(directory, networks, features=EXATRKX_SERVICE, stages=STAGES,
                         provenance={"data": "random weights, no training"})
    return bundle, networks


@pytest.fixture
def bundle_dir(made, tmp_path):
    """A fresh copy of the made bundle that a test may damage."""
    target = tmp_path / "bundle"
    shutil.copytree(made[0].directory, target)
    return target


def _edit(directory: Path, change) -> None:
    path = directory / PIPELINE_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _refused(directory) -> str:
    with pytest.raises(BundleError) as caught:
        load_bundle(directory)
    return str(caught.value)


# ----------------------------------------------------------------------------- round trip


def test_made_bundle_records_everything(made):
    bundle, networks = made
    data = json.loads((bundle.directory / PIPELINE_FILE).read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["features"] == {"names": ["r", "phi", "z"], "scales": list(EXATRKX_SERVICE.scales)}
    assert data["stages"] == {"radius": 1.6, "max_neighbours": 64, "filter_cut": 0.21, "gnn_cut": 0.75, "edge_direction": "i>j",
                              "track_building": "components"}
    assert data["networks"]["embedding"]["outputs"] == [{"name": "embedding", "dtype": "float32", "dims": ["num_hits", 8]}]
    assert data["networks"]["gnn"]["inputs"][1] == {"name": "edge_index", "dtype": "int64", "dims": [2, "num_edges"]}
    for name, network in networks.items():
        entry = data["networks"][name]
        assert entry["sha256"] == file_sha256(bundle.directory / entry["file"])
        assert entry["config"] == network.config and entry["architecture"] == network.architecture
    assert data["provenance"]["data"] == "random weights, no training"
    assert data["provenance"]["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert data["provenance"]["created"].endswith("+00:00")


def test_bundle_networks_compute_what_the_torch_networks_compute(made):
    bundle, networks = made
    rng = np.random.default_rng(3)
    features = rng.uniform(-1, 1, (300, 3)).astype(np.float32)
    edges = np.concatenate([rng.integers(0, 300, (2, 2000)), np.stack([np.arange(300), np.full(300, 7)])], 1)
    for name, network in networks.items():
        session = ort.InferenceSession(str(bundle.network_path(name)), providers=["CPUExecutionProvider"])
        feeds = {"features": features} if name == "embedding" else {"features": features, "edge_index": edges}
        with torch.no_grad():
            expected = network(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(made, tmp_path):
    bundle = made[0]
    loaded = load_bundle(bundle.directory / PIPELINE_FILE)
    assert loaded == bundle
    copy = save_bundle(loaded, tmp_path / "copy")
    assert copy.directory == tmp_path / "copy"
    assert copy.to_dict() == bundle.to_dict()
    for name in bundle.networks:
        assert file_sha256(copy.network_path(name)) == bundle.networks[name].sha256
    assert copy.engine_directory("A100_sm80_trt10") == tmp_path / "copy" / "engines" / "A100_sm80_trt10"
    # Saving in place rewrites pipeline.json only.
    assert save_bundle(copy, copy.directory) == copy


def test_load_bundle_does_not_import_torch_or_onnx(made):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from trackserve.bundle import load_bundle\n"
        f"bundle = load_bundle({str(made[0].directory)!r})\n"
        "print(sorted(bundle.networks))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['embedding', 'filter', 'gnn']"


# ----------------------------------------------------------------------------- refusals


def test_missing_directory_and_pipeline_json(tmp_path):
    with pytest.raises(BundleError, match="does not exist or is not a directory"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="is not a bundle: it has no pipeline.json"):
        load_bundle(tmp_path)


def test_bad_json_names_line_and_column(bundle_dir):
    (bundle_dir / PIPELINE_FILE).write_text('{\n  "schema_version": 1,\n  "features": [}\n')
    assert "is not valid JSON: line 3, column" in _refused(bundle_dir)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(schema_version=2), "schema_version: 2 is not supported: this trackserve reads schema version 1"),
        (lambda d: d.pop("schema_version"), "missing key 'schema_version'"),
        (lambda d: d.pop("stages"), "missing key(s) 'stages'"),
        (lambda d: d["networks"]["gnn"].pop("sha256"), "networks.gnn: missing key(s) 'sha256'"),
        (lambda d: d["networks"].pop("filter"), "networks: missing network(s) 'filter'"),
        (lambda d: d["networks"].update(tracker=d["networks"]["gnn"]), "networks: unknown network(s) 'tracker'"),
        (lambda d: d["networks"]["gnn"].update(sha256="0" * 64),
         "networks.gnn.sha256: gnn.onnx has sha256 "),
        (lambda d: d["networks"]["gnn"].update(file="../gnn.onnx"),
         "networks.gnn.file: '../gnn.onnx' is not a relative path inside the bundle"),
        (lambda d: d["networks"]["filter"].update(kind="embedding"),
         "networks.filter.kind: 'embedding', the filter network must be of kind 'edge_classifier'"),
        (lambda d: d["networks"]["embedding"]["outputs"][0].update(dims=["num_hits", 9]),
         "output 'embedding' of embedding.onnx has dims ['num_hits', 8], pipeline.json declares ['num_hits', 9]"),
        (lambda d: d["networks"]["gnn"]["inputs"][1].update(dims=[2, 100]),
         "networks.gnn.inputs 'edge_index': dim 1 is 100, it must be the dynamic dim 'num_edges'"),
        (lambda d: d["networks"]["gnn"]["outputs"][0].update(name="logits"),
         "networks.gnn.outputs: names ['logits'] differ from the edge_classifier interface ['scores']"),
        (lambda d: d["features"].update(names=["r", "phi", "z", "eta"], scales=[1, 1, 1, 1]),
         "networks.embedding.inputs 'features': takes 3 features but the bundle declares 4"),
        (lambda d: d["features"].update(scales=[1.0, 0.0, 1.0]), "features.scales: [1.0, 0.0, 1.0] is not a list of finite positive numbers"),
        (lambda d: d["stages"].update(filter_cut=1.5), "stages.filter_cut: 1.5 is outside [0, 1]"),
        (lambda d: d["stages"].update(gnn_cut=-0.1), "stages.gnn_cut: -0.1 is outside [0, 1]"),
        (lambda d: d["stages"].update(radius=-1.0), "stages.radius: -1.0 is not a positive finite number"),
        (lambda d: d["stages"].update(max_neighbours=0), "stages.max_neighbours: 0 is not an integer >= 1"),
        (lambda d: d["stages"].update(edge_direction="up"), "stages.edge_direction: 'up' is not one of 'i<j', 'i>j', 'both'"),
        # QA, 2026-12-02: a list or an object as a name, and integers beyond any float, raised
        # TypeError / OverflowError from inside the checks
        (lambda d: d["stages"].update(edge_direction=["i<j"]), "stages.edge_direction: ['i<j'] is not one of 'i<j'"),
        (lambda d: d["stages"].update(track_building={"a": 1}), "stages.track_building: {'a': 1} is not one of"),
        (lambda d: d["stages"].update(radius=10**400),
         "stages.radius: 1" + "0" * 39 + "... (401 characters) is not a positive finite number"),
        (lambda d: d["stages"].update(gnn_cut=10**400), "stages.gnn_cut: 1" + "0" * 39 + "... (401 characters) is not a number"),
        (lambda d: d["stages"].update(filter_cut=-10**400), "stages.filter_cut: -1" + "0" * 38 + "... (402 characters) is not"),
        (lambda d: d["features"]["scales"].__setitem__(0, 10**400), "features.scales: [1000000000000000000000000000000"),
        (lambda d: d["stages"].update(vertex_shifts=[10**400]), "stages.vertex_shifts: vertex shift 100000000000000000000"),
        (lambda d: d.update(provenance="yesterday"), "provenance: expected an object, got str"),
        (lambda d: d.update(stage={}), "pipeline.json: unknown key(s) 'stage' (schema version 1 has schema_version,"),
        (lambda d: d["networks"]["gnn"].update(checksum="0" * 64),
         "networks.gnn: unknown key(s) 'checksum' (a network entry has kind, file, sha256,"),
        (lambda d: d["networks"]["gnn"]["outputs"][0].update(unit="logit"),
         "networks.gnn.outputs[0]: expected an object with the keys 'name', 'dtype', 'dims' and no other"),
        (lambda d: d["networks"]["gnn"]["weights"].update(size=10),
         "networks.gnn.weights: {'file': 'gnn.pt', 'sha256': "),
        (lambda d: d["networks"]["gnn"]["config"].update(in_channels="3"),
         "networks.gnn.config.in_channels: '3' is not an integer (the number of features the network reads: 3"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None,
)
def test_damaged_pipeline_json_is_refused_with_the_problem_named(bundle_dir, change, expected):
    _edit(bundle_dir, change)
    message = _refused(bundle_dir)
    assert expected in message
    assert str(bundle_dir) in message


def test_an_empty_path_is_no_bundle(tmp_path, monkeypatch):
    # QA, 2026-12-02: load_bundle("") read the current directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="the bundle's directory is empty: give its path"):
        load_bundle("")


def test_a_key_given_twice_is_refused(bundle_dir):
    # json keeps the last of two equal keys without a word: a hand edit would silently win or lose
    path = bundle_dir / PIPELINE_FILE
    text = path.read_text()
    assert '"radius": ' in text
    path.write_text(text.replace('"radius": ', '"radius": 50.0, "radius": ', 1))
    assert f"{path}: the key 'radius' appears twice in one object; keep one of them" in _refused(bundle_dir)


def test_a_number_beyond_float64_is_refused_where_it_is_read(bundle_dir):
    # QA, 2026-12-02: 1e400 read as inf: loading passed, bundle-info --json printed Infinity and
    # export / rescale failed only when writing pipeline.json back
    path = bundle_dir / PIPELINE_FILE
    text = path.read_text()
    assert '"radius": ' in text
    path.write_text(re.sub(r'"radius": [^,}]+', '"radius": -1e400', text, count=1))
    assert (f"{path}: the number '-1e400' is beyond the range of a float64 (about 1.8e308); write a finite number"
            in _refused(bundle_dir))


def test_missing_file_is_named(bundle_dir):
    (bundle_dir / "gnn.onnx").unlink()
    assert f"networks.gnn.file: gnn.onnx does not exist in {bundle_dir}" in _refused(bundle_dir)
    (bundle_dir / "gnn.onnx").symlink_to(bundle_dir / "gone.onnx")
    assert f"networks.gnn.file: gnn.onnx in {bundle_dir} is a symbolic link to nothing" in _refused(bundle_dir)
    (bundle_dir / "gnn.pt").unlink()
    assert ("networks.gnn.weights.file: gnn.pt does not exist in "
            f"{bundle_dir} (the torch weights, for re-export and fine-tuning: restore the file, or remove the "
            "entry's 'weights' to run the bundle without them)") in _refused(bundle_dir)


@pytest.mark.parametrize(("file", "key"), [("gnn.onnx", "networks.gnn.file"), ("gnn.pt", "networks.gnn.weights.file")])
def test_a_directory_in_place_of_a_file_is_named_as_such(bundle_dir, file, key):
    (bundle_dir / file).unlink()
    (bundle_dir / file).mkdir()
    message = _refused(bundle_dir)
    assert f"{key}: {file} in {bundle_dir} is a directory, not a file" in message
    assert "does not exist" not in message


def test_changed_file_is_caught_by_its_hash(bundle_dir):
    with open(bundle_dir / "filter.onnx", "ab") as stream:
        stream.write(b"\0")
    message = _refused(bundle_dir)
    assert "networks.filter.sha256: filter.onnx has sha256" in message and "changed after the bundle was written" in message


def _refused_with_file_in_place_of_the_gnn(bundle_dir, source: str) -> str:
    """The refusal of the bundle once ``source``'s file is copied over the GNN's, its sha256 updated."""
    shutil.copyfile(bundle_dir / source, bundle_dir / "gnn.onnx")
    _edit(bundle_dir, lambda d: d["networks"]["gnn"].update(sha256=file_sha256(bundle_dir / "gnn.onnx")))
    return _refused(bundle_dir)


def test_onnx_file_with_other_inputs_is_caught_without_running_it(bundle_dir):
    message = _refused_with_file_in_place_of_the_gnn(bundle_dir, "embedding.onnx")
    assert "networks.gnn.inputs: gnn.onnx has inputs ['features'], pipeline.json declares ['features', 'edge_index']" in message
    assert "networks.gnn.outputs: gnn.onnx has outputs ['embedding'], pipeline.json declares ['scores']" in message


def test_unloadable_onnx_file_is_named(bundle_dir):
    (bundle_dir / "gnn.onnx").write_bytes(b"not an onnx model")
    _edit(bundle_dir, lambda d: d["networks"]["gnn"].update(sha256=file_sha256(bundle_dir / "gnn.onnx")))
    assert "networks.gnn: gnn.onnx cannot be loaded by ONNX Runtime" in _refused(bundle_dir)


def test_every_problem_is_listed_at_once(bundle_dir):
    def change(data):
        data["stages"]["filter_cut"] = 2.0
        data["stages"]["max_neighbours"] = -3
        data["networks"]["embedding"]["sha256"] = "f" * 64

    _edit(bundle_dir, change)
    message = _refused(bundle_dir)
    assert "3 problem(s)" in message
    assert "stages.filter_cut" in message and "stages.max_neighbours" in message and "networks.embedding.sha256" in message


# ----------------------------------------------------------------------------- API checks


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"filter_cut": 1.01}, "stages.filter_cut: 1.01 is outside [0, 1]"),
        ({"gnn_cut": float("nan")}, "stages.gnn_cut: nan is not a number"),
        ({"gnn_cut": "0.95"}, "stages.gnn_cut: '0.95' is not a number (a probability in [0, 1]"),
        ({"radius": 0.0}, "stages.radius: 0.0 is not a positive finite number"),
        ({"radius": float("inf")}, "stages.radius: inf is not a positive finite number"),
        ({"max_neighbours": 2.5}, "stages.max_neighbours: 2.5 is not an integer >= 1"),
        ({"edge_direction": "i<=j"}, "stages.edge_direction: 'i<=j' is not one of"),
    ],
)
def test_stage_parameters_refuse_impossible_values(kwargs, expected):
    values = {**STAGES.to_dict(), **kwargs}
    with pytest.raises(BundleError, match=r"invalid stage parameters") as caught:
        StageParameters(**values)
    assert expected in str(caught.value)
    with pytest.raises(BundleError, match="stages: missing key.*'gnn_cut'"):
        StageParameters.from_dict({k: v for k, v in STAGES.to_dict().items() if k != "gnn_cut"})
    assert StageParameters.from_dict(STAGES.to_dict()) == STAGES


def test_save_refuses_an_inconsistent_bundle(made, tmp_path):
    bundle = made[0]
    broken = Bundle({"names": ["r", "phi"], "scales": [1.0, 1.0]}, bundle.networks, bundle.stages, {}, bundle.directory)
    with pytest.raises(BundleError, match="takes 3 features but the bundle declares 2"):
        save_bundle(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(BundleError, match="the bundle has no network 'tracker'"):
        bundle.network_path("tracker")
    with pytest.raises(BundleError, match="invalid device key"):
        bundle.engine_directory("../x")


def test_make_bundle_refuses_missing_networks_and_wrong_kinds(tmp_path):
    networks = _networks()
    with pytest.raises(BundleError, match="missing: filter"):
        make_bundle(tmp_path, {k: v for k, v in networks.items() if k != "filter"}, features=EXATRKX_SERVICE, stages=STAGES)
    with pytest.raises(BundleError, match="the gnn network must be of kind 'edge_classifier'"):
        make_bundle(tmp_path, {**networks, "gnn": (networks["gnn"], "embedding")}, features=EXATRKX_SERVICE, stages=STAGES)
    assert not list(tmp_path.iterdir())


def test_replace_network_repairs_a_damaged_bundle(bundle_dir):
    (bundle_dir / "gnn.onnx").write_bytes(b"damaged")
    assert "networks.gnn.sha256" in _refused(bundle_dir)
    torch.manual_seed(1)
    new_gnn = ResAGNN(in_channels=3, hidden=8, n_graph_iters=1, nb_node_layer=1, nb_edge_layer=1)
    bundle, report = replace_network(bundle_dir, "gnn", new_gnn)
    assert report.validation.passed
    assert bundle.networks["gnn"].sha256 == file_sha256(bundle_dir / "gnn.onnx") == report.sha256
    assert bundle.networks["gnn"].config["n_graph_iters"] == 1
    assert load_bundle(bundle_dir) == bundle


def test_replace_network_refuses_a_network_that_fails_parity(bundle_dir):
    class IndexAddGNN(torch.nn.Module):
        config = {"in_channels": 3}

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, features, edge_index):
            summed = torch.zeros_like(features).index_add(0, edge_index[1], self.linear(features)[edge_index[0]])
            return summed[edge_index[0]].sum(dim=1)

    before = (bundle_dir / PIPELINE_FILE).read_text(), file_sha256(bundle_dir / "gnn.onnx")
    with pytest.raises(ExportParityError, match="power-law destinations"):
        replace_network(bundle_dir, "gnn", IndexAddGNN())
    assert ((bundle_dir / PIPELINE_FILE).read_text(), file_sha256(bundle_dir / "gnn.onnx")) == before
    with pytest.raises(BundleError, match="takes 4 features but the bundle's features are"):
        replace_network(bundle_dir, "gnn", ResAGNN(in_channels=4, hidden=8, n_graph_iters=1, nb_node_layer=1, nb_edge_layer=1))


# ----------------------------------------------------------------------------- commands


def test_bundle_info_prints_a_valid_bundle(made, capsys):
    assert main(["bundle-info", str(made[0].directory)]) == 0
    out = capsys.readouterr().out
    assert f"bundle {made[0].directory} (schema version 1): valid" in out
    assert "features (3): r/3000, phi/3.14159, z/400" in out
    assert "gnn: gnn.onnx (edge_classifier, ResAGNN)" in out
    assert "outputs: embedding float32 [num_hits, 8]" in out
    assert "stages: radius 1.6, max_neighbours 64, filter_cut 0.21, gnn_cut 0.75, edge_direction i>j" in out
    assert main(["bundle-info", "--json", str(made[0].directory)]) == 0
    assert json.loads(capsys.readouterr().out) == made[0].to_dict()


def test_bundle_info_shortens_long_provenance_entries(bundle_dir, capsys):
    history = {"gnn": [{"epoch": epoch, "loss": 1.0 / epoch} for epoch in range(1, 400)]}
    _edit(bundle_dir, lambda d: d["provenance"].update(history=history, note="short"))
    assert main(["bundle-info", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("  history: "))
    assert line.startswith("  history: {gnn} ... (") and line.endswith(" characters)")
    assert "  note: short" in out and "--json prints everything" in out
    assert main(["bundle-info", "--json", str(bundle_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"]["history"] == history


def test_bundle_info_prints_a_provenance_string_with_line_breaks_on_one_line(bundle_dir, capsys):
    """QA, 2026-12-02: printed raw, its line breaks broke the summary's layout."""
    _edit(bundle_dir, lambda d: d["provenance"].update(note="first line\nsecond line\tand a tab"))
    assert main(["bundle-info", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert '  note: "first line\\nsecond line\\tand a tab"\n' in out and "\nsecond line" not in out


def test_bundle_info_reports_problems_with_status_2(bundle_dir, capsys):
    _edit(bundle_dir, lambda d: d["stages"].update(gnn_cut=7))
    assert main(["bundle-info", str(bundle_dir)]) == 2
    assert "stages.gnn_cut: 7 is outside [0, 1]" in capsys.readouterr().err


def test_a_bundle_given_by_something_else_than_a_path_is_named():
    with pytest.raises(BundleError, match="a bundle is given by its directory .* got NoneType"):
        load_bundle(None)


def test_non_standard_numbers_in_pipeline_json_are_refused(bundle_dir):
    # Python's json writes NaN / Infinity unless told not to; standard JSON has no such value.
    _edit(bundle_dir, lambda d: d["provenance"].update(figure=float("nan")))
    assert "NaN is not a JSON number" in _refused(bundle_dir)
    _edit(bundle_dir, lambda d: d["provenance"].update(figure=-float("inf")))
    assert "-Infinity is not a JSON number" in _refused(bundle_dir)


def test_replace_network_writes_the_weights_where_the_entry_names_them(bundle_dir):
    (bundle_dir / "nets").mkdir()
    for suffix in ("onnx", "pt"):
        (bundle_dir / f"gnn.{suffix}").rename(bundle_dir / "nets" / f"gnn.{suffix}")

    def move(data):
        data["networks"]["gnn"]["file"] = "nets/gnn.onnx"
        data["networks"]["gnn"]["weights"]["file"] = "nets/gnn.pt"

    _edit(bundle_dir, move)
    load_bundle(bundle_dir)
    torch.manual_seed(2)
    bundle, _ = replace_network(bundle_dir, "gnn", ResAGNN(in_channels=3, hidden=8, n_graph_iters=1, nb_node_layer=1,
                                                           nb_edge_layer=1))
    assert bundle.networks["gnn"].weights["file"] == "nets/gnn.pt"
    assert bundle.networks["gnn"].weights["sha256"] == file_sha256(bundle_dir / "nets" / "gnn.pt")
    assert not (bundle_dir / "gnn.pt").exists()
    assert sorted(p.name for p in (bundle_dir / "nets").iterdir()) == ["gnn.onnx", "gnn.pt"]


def test_replace_network_replaces_a_linked_weights_file_instead_of_writing_through_it(bundle_dir, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(bundle_dir, original)  # a variant bundle's files link into the original's
    for suffix in ("onnx", "pt"):
        (bundle_dir / f"gnn.{suffix}").unlink()
        (bundle_dir / f"gnn.{suffix}").symlink_to(original / f"gnn.{suffix}")
    before = {p.name: p.read_bytes() for p in original.iterdir()}
    torch.manual_seed(3)
    replace_network(bundle_dir, "gnn", ResAGNN(in_channels=3, hidden=8, n_graph_iters=1, nb_node_layer=1, nb_edge_layer=1))
    assert {p.name: p.read_bytes() for p in original.iterdir()} == before
    load_bundle(original)
    assert not (bundle_dir / "gnn.pt").is_symlink() and not (bundle_dir / "gnn.onnx").is_symlink()


def test_two_networks_naming_one_file_are_refused(bundle_dir):
    def point_gnn_at_the_filter(data):  # a hand edit that updated the hash too
        gnn, filter_entry = data["networks"]["gnn"], data["networks"]["filter"]
        gnn["file"], gnn["sha256"] = "./" + filter_entry["file"], filter_entry["sha256"]

    _edit(bundle_dir, point_gnn_at_the_filter)
    message = _refused(bundle_dir)
    assert "networks.gnn.file and networks.filter: both name ./filter.onnx; each network has its own" in message


def test_a_stage_direction_other_than_the_training_one_is_refused(bundle_dir):
    _edit(bundle_dir, lambda d: d["provenance"].update(settings={"edge_direction": "i>j"}))
    assert load_bundle(bundle_dir).stages.edge_direction == "i>j"
    _edit(bundle_dir, lambda d: d["stages"].update(edge_direction="i<j"))
    assert ("stages.edge_direction: 'i<j', but the networks were trained on edges 'i>j' "
            "(provenance.settings.edge_direction)") in _refused(bundle_dir)


def test_a_config_value_of_the_wrong_type_or_a_missing_config_is_named(bundle_dir):
    _edit(bundle_dir, lambda d: d["networks"]["gnn"]["config"].update(hidden="8"))
    assert "(config keys differ: hidden: the file's 8, the entry's '8')" in _refused(bundle_dir)
    _edit(bundle_dir, lambda d: d["networks"]["gnn"].pop("config"))
    assert "holds another network than pipeline.json declares (pipeline.json gives no config, the file records " \
           in _refused(bundle_dir)


def test_another_networks_file_in_place_of_one_is_refused(bundle_dir):
    # The filter's file copied over the GNN's, the hash updated: interface and hash agree, the network does not.
    message = _refused_with_file_in_place_of_the_gnn(bundle_dir, "filter.onnx")
    assert "networks.gnn: gnn.onnx holds another network than pipeline.json declares (config keys differ: " in message
    assert "; and 12 more keys; and the file holds the architecture VanillaFilter): either another network's file was put" in message


def test_a_config_edited_by_hand_is_refused(bundle_dir):
    _edit(bundle_dir, lambda d: d["networks"]["gnn"]["config"].update(hidden=64))
    assert ("networks.gnn: gnn.onnx holds another network than pipeline.json declares (config keys differ: hidden: "
            "the file's 8, the entry's 64): either another network's file was put in its place (restore the file; `trackserve "
            "export --bundle DIR --network gnn` rebuilds it from the bundle's weights) or the entry was edited by "
            "hand (restore the entry to what the file records)") in _refused(bundle_dir)
    _edit(bundle_dir, lambda d: d["networks"]["gnn"].update(config={}))  # every key removed
    assert "holds another network than pipeline.json declares (pipeline.json gives no config, the file records " \
           in _refused(bundle_dir)


def test_files_without_the_network_record_are_not_checked_against_the_entry(bundle_dir):
    import onnx

    from trackserve.bundle.schema import NETWORK_METADATA_KEY

    model = onnx.load(bundle_dir / "gnn.onnx")
    assert [p.key for p in model.metadata_props] == [NETWORK_METADATA_KEY]
    del model.metadata_props[:]  # as exported before the record existed, or by another tool
    onnx.save(model, bundle_dir / "gnn.onnx")

    def edit(data):
        data["networks"]["gnn"]["sha256"] = file_sha256(bundle_dir / "gnn.onnx")
        data["networks"]["gnn"]["config"]["hidden"] = 64

    _edit(bundle_dir, edit)
    assert load_bundle(bundle_dir).networks["gnn"].config["hidden"] == 64


def test_a_failed_make_bundle_leaves_the_bundle_already_there_as_it_was(made, bundle_dir, tmp_path):
    _, networks = made
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    broken = _networks()
    with torch.no_grad():
        next(broken["gnn"].parameters()).fill_(float("nan"))  # its export fails the parity check
    with pytest.raises(ExportParityError):
        make_bundle(bundle_dir, broken, features=EXATRKX_SERVICE, stages=STAGES)
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before
    load_bundle(bundle_dir)
    assert not [p for p in bundle_dir.parent.iterdir() if ".partial" in p.name]
    # A directory holding other files but no bundle is not written over.
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "event000000001-hits.csv").write_text("hit_id,x,y,z\n")
    with pytest.raises(InputError, match="holds files but no bundle"):
        make_bundle(tmp_path / "events", networks, features=EXATRKX_SERVICE, stages=STAGES)


def test_export_options_are_checked_before_any_file_is_written(bundle_dir, tmp_path):
    from trackserve.export.onnx_export import export_network

    gnn = _networks()["gnn"]
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    with pytest.raises(InputError, match="runs .* must be an integer >= 1, got 0"):
        replace_network(bundle_dir, "gnn", gnn, runs=0)
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="out is a directory: give the ONNX file to write"):
        export_network(gnn, "edge_classifier", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "out"]


def test_stage_parameters_take_numpy_numbers_as_python_ones():
    from trackserve.bundle import JoinSettings

    stages = StageParameters(radius=np.float32(0.75), max_neighbours=np.int64(32), filter_cut=np.float32(0.25),
                             gnn_cut=np.float64(0.5), edge_direction="i<j", prune_cut=np.float32(0.125))
    assert stages.to_dict()["radius"] == 0.75 and type(stages.max_neighbours) is int
    assert json.loads(json.dumps(stages.to_dict()))["filter_cut"] == 0.25
    join = JoinSettings(np.float32(0.5), 5.0, 30.0, 0.5, np.int64(2))
    assert type(join.rounds) is int and type(join.min_score) is float
    with pytest.raises(BundleError, match="stages.max_neighbours: True is not an integer >= 1"):
        StageParameters(radius=1.0, max_neighbours=np.bool_(True), filter_cut=0.1, gnn_cut=0.5, edge_direction="i<j")


# ------------------------------------------------- QA of the Python API, 2026-12-02


def test_a_save_in_place_that_fails_its_check_leaves_the_bundle_as_it_was(bundle_dir):
    """pipeline.json was written first and checked after: a Bundle whose entry no longer
    matched its file left a bundle on disk that no longer loaded."""
    import dataclasses

    bundle = load_bundle(bundle_dir)
    entry = bundle.networks["filter"]
    changed = dataclasses.replace(bundle, networks={**bundle.networks, "filter": dataclasses.replace(
        entry, config={**entry.config, "hidden": 32})})
    before = (bundle_dir / PIPELINE_FILE).read_bytes()
    with pytest.raises(BundleError, match="filter"):
        save_bundle(changed, bundle_dir)
    assert (bundle_dir / PIPELINE_FILE).read_bytes() == before
    assert load_bundle(bundle_dir) == bundle


def test_a_save_elsewhere_writes_through_no_link_and_fails_whole(made, tmp_path):
    """Network files were copied through symbolic links into another bundle's files, and a
    save over a bundle from a source missing a file left a mix of old and new files."""
    other = tmp_path / "other"
    shutil.copytree(made[0].directory, other)
    linked = tmp_path / "linked"
    linked.mkdir()
    for path in other.iterdir():
        (linked / path.name).symlink_to(path)
    sums = {path.name: file_sha256(path) for path in other.iterdir()}
    source = tmp_path / "source"
    shutil.copytree(made[0].directory, source)
    with torch.no_grad():
        changed = _networks()["filter"]
        next(changed.parameters()).add_(1.0)  # another filter of the same shape
    new = replace_network(source, "filter", changed)[0]
    save_bundle(new, linked)
    assert {path.name: file_sha256(path) for path in other.iterdir()} == sums  # the other bundle untouched
    load_bundle(other)
    assert not (linked / "filter.onnx").is_symlink() and load_bundle(linked).networks["filter"].sha256 == \
        new.networks["filter"].sha256
    (source / "gnn.pt").unlink()
    before = {path.name: file_sha256(path) for path in linked.iterdir() if path.is_file()}
    with pytest.raises(BundleError, match="cannot copy the network file gnn.pt"):
        save_bundle(new, linked)
    assert {path.name: file_sha256(path) for path in linked.iterdir() if path.is_file()} == before


@pytest.mark.parametrize("target", ["a file", "none"])
def test_save_names_a_target_it_cannot_use_and_a_bundle_without_files(made, tmp_path, target):
    import dataclasses

    if target == "a file":
        (tmp_path / "out").write_text("not a directory")
        with pytest.raises(BundleError, match="save_bundle: the bundle directory .*out: exists and is not a directory"):
            save_bundle(made[0], tmp_path / "out")
    else:
        with pytest.raises(BundleError, match="names no directory holding its network files"):
            save_bundle(dataclasses.replace(made[0], directory=None), tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_a_network_s_config_and_a_bundle_s_dict_are_copies(made, tmp_path):
    """A config list shared with the caller let the bundle record another network than the one
    it holds; Bundle.to_dict() handed out the bundle's own nested lists."""
    config = dict(in_channels=3, hidden=8, nb_layer=1, edge_differences=True, periodic_features=[1], period=2.0)
    network = EdgeFilter(**config)
    config["periodic_features"].clear()
    assert network.config["periodic_features"] == [1]
    network.config["periodic_features"].append(2)
    assert network.config["periodic_features"] == [1]
    bundle = made[0]
    data = bundle.to_dict()
    data["features"]["names"].append("eta")
    data["networks"]["filter"]["config"]["hidden"] = 99
    data["provenance"]["data"] = "changed"
    assert bundle.features["names"] == ["r", "phi", "z"] and bundle.networks["filter"].config["hidden"] == 16
    assert bundle.provenance["data"] == "random weights, no training"


@pytest.mark.parametrize("change, message", [
    (lambda n: {**n, "filter": n["filter"].state_dict()}, "networks.filter: expected a torch module"),
    (lambda n: {**n, "filter": None}, "networks.filter: expected a torch module"),
    (lambda n: {**n, "filter": (n["filter"],)}, r"networks.filter: a \(module, kind\) pair or a module, got a tuple of 1"),
    (lambda n: list(n.values()), "networks must map each network's name to its torch module, got list"),
])
def test_make_bundle_names_networks_of_the_wrong_form(tmp_path, change, message):
    with pytest.raises(BundleError, match=message):
        make_bundle(tmp_path / "b", change(_networks()), features=EXATRKX_SERVICE, stages=STAGES)
    assert not (tmp_path / "b").exists()


def test_make_bundle_names_stages_and_provenance_of_the_wrong_form(tmp_path):
    with pytest.raises(BundleError, match="stages: expected StageParameters or a mapping of their keys, got NoneType"):
        make_bundle(tmp_path / "b", _networks(), features=EXATRKX_SERVICE, stages=None)
    with pytest.raises(BundleError, match=r"provenance must be a mapping with string keys .* the key\(s\) 3"):
        make_bundle(tmp_path / "b", _networks(), features=EXATRKX_SERVICE, stages=STAGES, provenance={3: "x"})
    with pytest.raises(BundleError, match="replace_network: expected a torch module as the new filter network, got dict"):
        replace_network(tmp_path / "b", "filter", {"weight": 1})


def test_replace_network_keeps_the_files_permissions(bundle_dir):
    import os
    import stat

    for name in (PIPELINE_FILE, "filter.onnx"):
        os.chmod(bundle_dir / name, 0o600)
    replace_network(bundle_dir, "filter", _networks()["filter"])
    assert [stat.S_IMODE((bundle_dir / name).stat().st_mode) for name in (PIPELINE_FILE, "filter.onnx")] == [0o600] * 2


def test_make_bundle_checks_provenance_and_opset_before_exporting(tmp_path, monkeypatch):
    """Provenance that is no JSON was found after every network had been exported, and
    opset 0 exported at the default opset."""
    import trackserve.export.onnx_export as onnx_export

    exported = []
    original = onnx_export.export_network
    monkeypatch.setattr(onnx_export, "export_network", lambda *a, **k: exported.append(1) or original(*a, **k))
    with pytest.raises(BundleError, match="cannot write .*pipeline.json: .*must be JSON"):
        make_bundle(tmp_path / "b", _networks(), features=EXATRKX_SERVICE, stages=STAGES,
                    provenance={"note": {1, 2}})
    assert exported == []
    with pytest.raises(InputError, match="opset 0 is not supported"):
        make_bundle(tmp_path / "b", _networks(), features=EXATRKX_SERVICE, stages=STAGES, opset=0)
    assert not (tmp_path / "b").exists()
