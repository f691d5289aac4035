"""Rescaling a bundle to the service's three features: the same function of each hit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trackserve.bundle import StageParameters, load_bundle, make_bundle
from trackserve.errors import InputError
from trackserve.events.features import EXATRKX_SERVICE, FeatureSpec, TRACKML_1000, hit_features
from trackserve.events.trackml import read_event
from trackserve.export.bundle_networks import load_torch_network
from trackserve.export.derived import geometry_spec_for
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.interaction_gnn import InteractionGNN
from trackserve.export.rescale import rescale_networks
from trackserve.paths import SAMPLE_EVENT

WITH_ETA = FeatureSpec(("r", "phi", "z", "eta"), (1000.0, float(np.pi), 1000.0, 1.0))


def _networks(seed=0, pair_geometry=False, intercept=False, direction=False):
    torch.manual_seed(seed)
    geometry = (geometry_spec_for(WITH_ETA.names, WITH_ETA.scales, intercept=intercept, direction=direction)
                if pair_geometry else None)
    common = {"edge_differences": True, "periodic_features": [1], "difference_scale": 20.0, "pair_geometry": geometry}
    return {
        "embedding": EmbeddingNetwork(in_channels=4, emb_hidden=16, nb_layer=2, emb_dim=8, layer_norm=True).eval(),
        "filter": EdgeFilter(in_channels=4, hidden=16, nb_layer=2, **common).eval(),
        "gnn": InteractionGNN(in_channels=4, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2,
                              bidirectional_messages=True, **common).eval(),
    }


@pytest.fixture(scope="module")
def hits():
    return read_event(SAMPLE_EVENT, parts=()).hits


@pytest.mark.parametrize("pair_geometry, intercept, direction",
                         [(False, False, False), (True, False, False), (True, True, False), (True, False, True)],
                         ids=["hit-features", "pair-geometry", "pair-intercept", "pair-direction"])
def test_rescaled_networks_compute_the_same_function_of_each_hit(hits, pair_geometry, intercept, direction):
    old = _networks(pair_geometry=pair_geometry, intercept=intercept, direction=direction)
    new = rescale_networks(old, WITH_ETA, EXATRKX_SERVICE)
    old_x = torch.from_numpy(hit_features(hits, WITH_ETA))
    new_x = torch.from_numpy(hit_features(hits, EXATRKX_SERVICE))
    edges = torch.from_numpy(np.random.default_rng(1).integers(0, len(old_x), (2, 5000)))
    edges[:, :100] = edges[:, 100:200]  # repeated edges and destinations
    with torch.no_grad():
        np.testing.assert_allclose(new["embedding"](new_x), old["embedding"](old_x), atol=1e-4)
        for name in ("filter", "gnn"):
            np.testing.assert_allclose(new[name](new_x, edges), old[name](old_x, edges), atol=2e-4)
    assert all(net.config["in_channels"] == 3 and net.config["derived_eta"]["r_scale"] == 3000.0 for net in new.values())
    for name in ("filter", "gnn"):
        geometry = new[name].config["pair_geometry"]
        assert geometry == (geometry_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales, intercept=intercept,
                                              direction=direction) if pair_geometry else None)
    # without the rescaling of the weights the outputs differ: the test can fail
    plain = type(old["embedding"]).from_config({**old["embedding"].config, "in_channels": 3,
                                                  "derived_eta": new["embedding"].config["derived_eta"]})
    plain.load_state_dict(old["embedding"].state_dict())
    with torch.no_grad():
        assert float((plain(new_x) - old["embedding"](old_x)).abs().max()) > 1e-2


def test_other_feature_specs_and_networks_are_refused():
    with pytest.raises(InputError, match="eta last"):
        rescale_networks(_networks(), FeatureSpec(("r", "z", "phi", "eta"), (1000.0, 1000.0, float(np.pi), 1.0)),
                         EXATRKX_SERVICE)
    with pytest.raises(InputError, match=r"the embedding network takes 4 features per hit, but the bundle's features "
                                         r"are \['r', 'phi', 'z'\]"):
        rescale_networks(_networks(), TRACKML_1000, EXATRKX_SERVICE)
    with pytest.raises(InputError, match="the new features must be"):
        rescale_networks(_networks(), WITH_ETA, WITH_ETA)
    networks = _networks()
    networks["gnn"] = networks["filter"]
    with pytest.raises(InputError, match=r"cannot rescale the gnn network \(architecture VanillaFilter\); supported: "
                                         "embedding LayerlessEmbedding, filter VanillaFilter, pruner InteractionGNN, "
                                         "gnn InteractionGNN"):  # the names the bundle records, not class names
        rescale_networks(networks, WITH_ETA, EXATRKX_SERVICE)


def test_rescaled_bundle_runs_on_service_features_and_records_the_check(tmp_path, hits):
    from trackserve.cli import main
    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline

    stages = StageParameters(radius=1.0, max_neighbours=16, filter_cut=0.3, gnn_cut=0.5, edge_direction="i<j")
    make_bundle(tmp_path / "old", _networks(3), features=WITH_ETA, stages=stages, provenance={"data": "test"})
    assert main(["rescale", str(tmp_path / "old"), "--output", str(tmp_path / "new"), "--track-building", "best_edges"]) == 0
    bundle = load_bundle(tmp_path / "new")
    assert bundle.feature_names == ("r", "phi", "z") and bundle.stages.track_building == "best_edges"
    assert bundle.stages.radius == 1.0
    record = json.loads((tmp_path / "new" / "pipeline.json").read_text())["provenance"]["rescaled"]
    assert max(record["max_output_difference_on_check_event"].values()) < 1e-3
    assert set(record["allowed_difference_on_check_event"]) == {"embedding", "filter", "gnn"}
    assert record["from"] == str((tmp_path / "old").resolve()) and record["date"].endswith("+00:00")
    config = RuntimeConfig(intra_op_threads=1, graph_threads=1)
    old_run = Pipeline(tmp_path / "old", config=config)
    new_run = Pipeline(bundle, config=config)
    old_embedding = old_run.embed(hit_features(hits, WITH_ETA))
    new_embedding = new_run.embed(hit_features(hits, EXATRKX_SERVICE))
    np.testing.assert_allclose(new_embedding, old_embedding, atol=1e-4)
    assert load_torch_network(bundle, "gnn").config["derived_eta"]["z_scale"] == 400.0
    # a bundle on r, phi, z rescales too: back to r/1000, phi/pi, z/1000, the original's function again
    assert main(["rescale", str(tmp_path / "new"), "--output", str(tmp_path / "again"), "--features",
                 "r:1000,phi:pi,z:1000"]) == 0
    back = Pipeline(tmp_path / "again", config=config)
    np.testing.assert_allclose(back.embed(hit_features(hits, TRACKML_1000)), old_embedding, atol=1e-4)
    again = json.loads((tmp_path / "again" / "pipeline.json").read_text())["provenance"]["rescaled"]
    assert again["from"] == str((tmp_path / "new").resolve()) and again["previous"] == record  # the first kept


def test_rescaling_keeps_the_gap_cut_and_joining_unless_the_method_changes(tmp_path):
    from trackserve.bundle import JoinSettings
    from trackserve.export.rescale import rescale_bundle

    stages = StageParameters(radius=1.0, max_neighbours=16, filter_cut=0.3, gnn_cut=0.5, edge_direction="i<j",
                             track_building="best_edges", gap_cut=0.2, join_pieces=JoinSettings(0.01, 5.0, 10.0, 0.25, 3))
    make_bundle(tmp_path / "old", _networks(3), features=WITH_ETA, stages=stages, provenance={"data": "test"})
    rescale_bundle(tmp_path / "old", tmp_path / "same", EXATRKX_SERVICE)
    assert load_bundle(tmp_path / "same").stages == stages
    rescale_bundle(tmp_path / "old", tmp_path / "plain", EXATRKX_SERVICE, track_building="components")
    plain = load_bundle(tmp_path / "plain").stages
    assert (plain.track_building, plain.gap_cut, plain.join_pieces, plain.gnn_cut) == ("components", None, None, 0.5)


def test_rescale_bundle_refuses_its_source_as_output_and_arguments_of_other_kinds(tmp_path):
    """QA, 2026-12-02: the Python function wrote over the bundle it read (the command refused
    it), and a mapping as the new features or an array as the check event raised AttributeError."""
    from trackserve.export.rescale import rescale_bundle

    stages = StageParameters(radius=1.0, max_neighbours=16, filter_cut=0.3, gnn_cut=0.5, edge_direction="i<j")
    make_bundle(tmp_path / "old", _networks(3), features=WITH_ETA, stages=stages, provenance={"data": "test"})
    before = (tmp_path / "old" / "pipeline.json").read_bytes()
    for output in (tmp_path / "old", tmp_path / "old" / "pipeline.json"):
        with pytest.raises(InputError, match="is the bundle given by source"):
            rescale_bundle(tmp_path / "old" / "pipeline.json", output.parent if output.name == "pipeline.json"
                           else output, EXATRKX_SERVICE)
    assert (tmp_path / "old" / "pipeline.json").read_bytes() == before
    with pytest.raises(InputError, match="new_spec must be a FeatureSpec"):
        rescale_bundle(tmp_path / "old", tmp_path / "new", {"names": ["r", "phi", "z"], "scales": [1, 1, 1]})
    with pytest.raises(InputError, match="check_features must be a TrackML Event"):
        rescale_bundle(tmp_path / "old", tmp_path / "new", EXATRKX_SERVICE, check_features=np.zeros((3, 3)))
    assert not (tmp_path / "new").exists()


def test_a_rescaling_that_changes_the_networks_output_is_refused_before_writing(tmp_path, monkeypatch):
    import trackserve.export.rescale as rescale
    from trackserve.cli import main

    stages = StageParameters(radius=1.0, max_neighbours=16, filter_cut=0.3, gnn_cut=0.5, edge_direction="i<j")
    make_bundle(tmp_path / "old", _networks(4, pair_geometry=True), features=WITH_ETA, stages=stages,
                provenance={"data": "test"})
    # without the weight scaling the networks read r and z at the wrong scale: the check must catch it
    monkeypatch.setattr(rescale, "_scale_columns", lambda linear, columns, factors: None)
    with pytest.raises(InputError, match=r"nothing was written: embedding: largest difference .*filter: .*gnn: "):
        rescale.rescale_bundle(tmp_path / "old", tmp_path / "new", EXATRKX_SERVICE,
                               check_features=read_event(SAMPLE_EVENT, parts=()))
    assert not (tmp_path / "new").exists()
    assert main(["rescale", str(tmp_path / "old"), "--output", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


def test_rescaling_keeps_a_pruner_and_its_cut(tmp_path, hits):
    from trackserve.export.rescale import rescale_bundle
    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline

    networks = _networks(3)
    networks["pruner"] = _networks(4)["gnn"]
    stages = StageParameters(radius=1.0, max_neighbours=16, filter_cut=0.3, gnn_cut=0.5, edge_direction="i<j",
                             prune_cut=0.2)
    make_bundle(tmp_path / "old", networks, features=WITH_ETA, stages=stages, provenance={"data": "test"})
    differences = rescale_bundle(tmp_path / "old", tmp_path / "new", EXATRKX_SERVICE, check_features=read_event(
        SAMPLE_EVENT, parts=()))
    assert set(differences) == {"embedding", "filter", "pruner", "gnn"}
    bundle = load_bundle(tmp_path / "new")
    assert bundle.stages.prune_cut == 0.2 and bundle.networks["pruner"].config["derived_eta"]["z_scale"] == 400.0
    config = RuntimeConfig(intra_op_threads=1, graph_threads=1)
    old_run, new_run = Pipeline(tmp_path / "old", config=config), Pipeline(bundle, config=config)
    old_x, new_x = hit_features(hits, WITH_ETA), hit_features(hits, EXATRKX_SERVICE)
    edges = np.unique(np.sort(np.random.default_rng(2).integers(0, len(old_x), (2, 3000)), axis=0), axis=1)
    edges = np.ascontiguousarray(edges[:, edges[0] < edges[1]])  # a graph of the bundle's convention
    np.testing.assert_allclose(new_run.gnn_logits(new_x, edges), old_run.gnn_logits(old_x, edges), atol=2e-3)


def test_rescale_replaces_a_bundle_only_with_overwrite_and_only_after_its_check(tmp_path, capsys, monkeypatch):
    import trackserve.export.rescale as rescale
    from trackserve.cli import main

    stages = StageParameters(radius=1.0, max_neighbours=16, filter_cut=0.3, gnn_cut=0.5, edge_direction="i<j")
    make_bundle(tmp_path / "old", _networks(3), features=WITH_ETA, stages=stages, provenance={"data": "test"})
    make_bundle(tmp_path / "there", _networks(3), features=WITH_ETA, stages=stages, provenance={"data": "other"})
    data = json.loads((tmp_path / "there" / "pipeline.json").read_text())
    data["networks"]["pruner"] = {"file": "pruner.onnx"}  # a file of the bundle that was there, not of the new one
    (tmp_path / "there" / "pipeline.json").write_text(json.dumps(data))
    (tmp_path / "there" / "pruner.onnx").write_text("a file of the bundle that was there")
    (tmp_path / "there" / "README.md").write_text("how it was made")
    before = (tmp_path / "there" / "pipeline.json").read_bytes()
    assert main(["rescale", str(tmp_path / "old"), "--output", str(tmp_path / "old"), "--overwrite"]) == 2
    assert "is the bundle given by DIR (the bundle to rescale), which this job reads" in capsys.readouterr().err
    # named by its pipeline.json (as load_bundle reads it), the bundle read is still that directory (QA,
    # 2026-12-02: it was replaced by the rescaled one)
    assert main(["rescale", str(tmp_path / "old" / "pipeline.json"), "--output", str(tmp_path / "old"),
                 "--overwrite"]) == 2
    assert "is the bundle given by DIR (the bundle to rescale), which this job reads" in capsys.readouterr().err
    assert main(["rescale", str(tmp_path / "old"), "--output", str(tmp_path / "there")]) == 2
    assert "already holds a bundle; give --overwrite" in capsys.readouterr().err
    with monkeypatch.context() as patched:  # a rescaling that fails its check leaves the bundle there as it was
        patched.setattr(rescale, "_scale_columns", lambda linear, columns, factors: None)
        assert main(["rescale", str(tmp_path / "old"), "--output", str(tmp_path / "there"), "--overwrite"]) == 2
    assert (tmp_path / "there" / "pipeline.json").read_bytes() == before
    assert main(["rescale", str(tmp_path / "old"), "--output", str(tmp_path / "there"), "--overwrite"]) == 0
    assert not (tmp_path / "there" / "pruner.onnx").exists()
    assert (tmp_path / "there" / "README.md").read_text() == "how it was made"
    assert load_bundle(tmp_path / "there").feature_names == ("r", "phi", "z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "there"]


def test_a_new_phi_scale_is_refused_with_the_reason(tmp_path, capsys):
    from trackserve.cli import main
    from trackserve.paths import DEFAULT_BUNDLE

    assert main(["rescale", str(DEFAULT_BUNDLE), "--features", "3000,1,400", "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "phi's scale must be exactly the bundle's, 3.141592653589793 (got 1.0)" in err
    assert "period 2" in err and "write it as phi:pi" in err
    assert main(["rescale", str(DEFAULT_BUNDLE), "--features", "1000,3.14159,1000", "--output", str(tmp_path / "b")]) == 2
    assert "(got 3.14159)" in capsys.readouterr().err  # close to pi is not pi
    assert not (tmp_path / "b").exists()


def _three_feature_networks(derive_eta: bool, seed=2):
    from trackserve.export.derived import eta_spec_for

    torch.manual_seed(seed)
    spec = TRACKML_1000
    eta = eta_spec_for(spec.names, spec.scales) if derive_eta else None
    geometry = geometry_spec_for(spec.names, spec.scales)
    common = {"edge_differences": True, "periodic_features": [1], "difference_scale": 20.0, "derived_eta": eta}
    return {
        "embedding": EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=8, layer_norm=True,
                                      derived_eta=eta).eval(),
        "filter": EdgeFilter(in_channels=3, hidden=16, nb_layer=2, pair_geometry=geometry, **common).eval(),
        "gnn": InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2,
                              bidirectional_messages=True, **common).eval(),
    }


@pytest.mark.parametrize("derive_eta", [False, True], ids=["no-eta", "eta-derived"])
def test_bundles_on_r_phi_z_alone_are_rescaled_too(hits, derive_eta):
    """What `trackserve train` makes by default (r/1000, phi/pi, z/1000), with eta derived
    inside the networks or not used: the same function of each hit at the service's scales."""
    assert tuple(TRACKML_1000.names) == ("r", "phi", "z")
    old = _three_feature_networks(derive_eta)
    new = rescale_networks(old, TRACKML_1000, EXATRKX_SERVICE)
    old_x = torch.from_numpy(hit_features(hits, TRACKML_1000))
    new_x = torch.from_numpy(hit_features(hits, EXATRKX_SERVICE))
    edges = torch.from_numpy(np.random.default_rng(3).integers(0, len(old_x), (2, 5000)))
    with torch.no_grad():
        np.testing.assert_allclose(new["embedding"](new_x), old["embedding"](old_x), atol=1e-4)
        for name in ("filter", "gnn"):
            np.testing.assert_allclose(new[name](new_x, edges), old[name](old_x, edges), atol=2e-4)
    for network in new.values():
        assert network.config["in_channels"] == 3
        assert (network.config["derived_eta"] is not None) == derive_eta


def test_a_change_of_track_building_says_what_it_dropped(tmp_path, capsys):
    from trackserve.cli import main
    from trackserve.paths import DEFAULT_BUNDLE

    source = load_bundle(DEFAULT_BUNDLE).stages
    assert source.gap_cut is not None and source.join_pieces is not None  # what the note is about
    assert main(["rescale", str(DEFAULT_BUNDLE), "--output", str(tmp_path / "b"), "--track-building", "components"]) == 0
    err = capsys.readouterr().err
    assert (f"note: track building is now 'components', not 'best_edges': the bundle's gap cut {source.gap_cut:g} and "
            "piece joining (") in err and "were dropped" in err
    assert main(["rescale", str(DEFAULT_BUNDLE), "--output", str(tmp_path / "c")]) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("scales, named", [
    ("1e20,pi,400", "do not export with parity, so nothing was written"),  # named a temporary file's export before
    ("1e-300,pi,400", "make the check event's features unusable"),  # named a hit's feature alone before
])
def test_scales_far_from_the_bundles_are_named_as_the_cause(tmp_path, capsys, scales, named):
    from trackserve.cli import main
    from trackserve.paths import DEFAULT_BUNDLE

    assert main(["rescale", str(DEFAULT_BUNDLE), "--output", str(tmp_path / "b"), "--features", scales]) == 2
    err = capsys.readouterr().err
    assert f"the feature scales r {float(scales.split(',')[0]):g}, phi 3.14159, z 400" in err and named in err
    assert "give scales nearer the bundle's" in err and ".partial" not in err
    assert list(tmp_path.iterdir()) == []
