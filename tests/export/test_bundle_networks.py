"""Rebuilding a bundle's torch networks from their saved weights."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trackserve.bundle import load_bundle  # noqa: E402
from trackserve.engines.onnx_runtime import OnnxNetwork  # noqa: E402
from trackserve.errors import BundleError  # noqa: E402
from trackserve.export.bundle_networks import load_torch_network  # noqa: E402


def test_rebuilt_networks_equal_the_originals_and_the_onnx_files(tiny_bundle, tiny_torch_networks):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(300, 3)).astype(np.float32)
    edges = rng.integers(0, 300, size=(2, 2000)).astype(np.int64)
    bundle = load_bundle(tiny_bundle)
    for name, original in zip(("embedding", "filter", "gnn"), tiny_torch_networks):
        rebuilt = load_torch_network(bundle, name)
        args = (torch.from_numpy(features),) if name == "embedding" else (torch.from_numpy(features), torch.from_numpy(edges))
        with torch.no_grad():
            assert torch.equal(rebuilt(*args), original(*args))
            want = rebuilt(*args).numpy()
        inputs = {"features": features} if name == "embedding" else {"features": features, "edge_index": edges}
        got = OnnxNetwork(bundle.network_path(name)).run(**inputs)
        assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.max(np.abs(want))))


def test_changed_weights_file_is_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "gnn.pt", "ab") as stream:
        stream.write(b"tampered")
    with pytest.raises(BundleError, match=r"networks\.gnn\.weights\.sha256"):
        load_bundle(copy)


def test_bundle_without_weights_says_it_cannot_rebuild(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data = json.loads((copy / "pipeline.json").read_text())
    del data["networks"]["filter"]["weights"]
    (copy / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="no torch weights"):
        load_torch_network(copy, "filter")


@pytest.mark.parametrize("replacement", ["another network's weights", "not a checkpoint"])
def test_weights_recorded_with_their_sha256_but_unusable_are_explained(tiny_bundle, tmp_path, replacement):
    """pipeline.json edited to the sha256 of a wrong file: still one clear error, not torch's."""
    from trackserve.bundle import file_sha256

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    if replacement == "not a checkpoint":
        (copy / "gnn.pt").write_text("not a checkpoint")
        problem = r"cannot be read by torch\.load \(\w+: "
    else:
        shutil.copy(copy / "filter.pt", copy / "gnn.pt")
        problem = r"do not fit its \w+ \(\d+ missing key\(s\): .*; \d+ unexpected key\(s\): "
    data = json.loads((copy / "pipeline.json").read_text())
    data["networks"]["gnn"]["weights"]["sha256"] = file_sha256(copy / "gnn.pt")
    (copy / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"network 'gnn' of bundle {re.escape(str(copy))}: its torch weights gnn\.pt {problem}") as raised:
        load_torch_network(copy, "gnn")
    assert "\n" not in str(raised.value)


def test_a_bundle_loaded_without_its_files_still_has_its_weights_checked(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "gnn.pt").write_bytes((copy / "gnn.pt").read_bytes()[:100])
    with pytest.raises(BundleError, match=r"its torch weights gnn\.pt have sha256 \w+, pipeline\.json records \w+ "
                                          r"\(changed or damaged\); restore the file"):
        load_torch_network(load_bundle(copy, check_files=False), "gnn")
    (copy / "gnn.pt").unlink()
    with pytest.raises(BundleError, match=r"its torch weights gnn\.pt do not exist"):
        load_torch_network(load_bundle(copy, check_files=False), "gnn")
