"""η derived inside the networks from the r and z features (``derived_eta``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from trackserve.errors import CheckpointImportError, InputError
from trackserve.events.features import EXATRKX_SERVICE, hit_features, FeatureSpec
from trackserve.export.derived import DerivedEta, check_derived_eta, eta_spec_for
from trackserve.export.embedding import EmbeddingNetwork
from trackserve.export.filter import EdgeFilter
from trackserve.export.interaction_gnn import InteractionGNN
from trackserve.export.onnx_export import export_network

SERVICE_ETA = {"r": 0, "z": 2, "r_scale": 3000.0, "z_scale": 400.0}


def test_derived_eta_is_the_pseudorapidity_of_the_hit():
    rng = np.random.default_rng(4)
    hits = {"x": rng.uniform(-900, 900, 200), "y": rng.uniform(-900, 900, 200), "z": rng.uniform(-2900, 2900, 200)}
    features = hit_features(hits, EXATRKX_SERVICE)
    with_eta = DerivedEta(eta_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales))(torch.from_numpy(features)).numpy()
    expected = hit_features(hits, FeatureSpec(("eta",), (1.0,)))[:, 0]
    assert with_eta.shape == (200, 4)
    np.testing.assert_array_equal(with_eta[:, :3], features)
    np.testing.assert_allclose(with_eta[:, 3], expected, rtol=1e-5, atol=1e-5)


def test_off_passes_the_features_through_and_a_zero_radius_stays_finite():
    features = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [0.1, -0.3, -2.0]])
    assert DerivedEta(None)(features) is features
    assert DerivedEta(None).width(3) == 3 and DerivedEta(SERVICE_ETA).width(3) == 4
    out = DerivedEta(SERVICE_ETA)(features)
    assert torch.isfinite(out).all()
    assert out[1, 3] == 0.0 and out[0, 3] > 10 and out[2, 3] < 0


@pytest.mark.parametrize("value, message", [
    ({"r": 0, "z": 2}, "exactly the keys"),
    ([0, 2, 1.0, 1.0], "exactly the keys"),
    ({"r": 0, "z": 3, "r_scale": 1.0, "z_scale": 1.0}, "derived_eta.z must be a feature column in \\[0, 3\\)"),
    ({"r": True, "z": 2, "r_scale": 1.0, "z_scale": 1.0}, "derived_eta.r must be a feature column"),
    ({"r": 2, "z": 2, "r_scale": 1.0, "z_scale": 1.0}, "are the same column 2"),
    ({"r": 0, "z": 2, "r_scale": 0.0, "z_scale": 1.0}, "derived_eta.r_scale must be a number > 0"),
    ({"r": 0, "z": 2, "r_scale": 1.0, "z_scale": "400"}, "derived_eta.z_scale must be a number > 0"),
])
def test_bad_configs_are_refused_by_name(value, message):
    with pytest.raises(CheckpointImportError, match=message):
        check_derived_eta(value, 3, "Net")
    with pytest.raises(CheckpointImportError, match=message):
        EdgeFilter(in_channels=3, hidden=8, nb_layer=2, derived_eta=value)


def test_spec_without_r_and_z_or_with_eta_already_is_refused():
    with pytest.raises(InputError, match="missing z"):
        eta_spec_for(("r", "phi"), (1.0, 1.0))
    with pytest.raises(InputError, match="already has eta"):
        eta_spec_for(("r", "phi", "z", "eta"), (1.0, 1.0, 1.0, 1.0))
    assert eta_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales) == SERVICE_ETA


def _networks():
    return [
        EmbeddingNetwork(in_channels=3, emb_hidden=16, nb_layer=2, emb_dim=8, layer_norm=True, derived_eta=SERVICE_ETA),
        EdgeFilter(in_channels=3, hidden=16, nb_layer=2, edge_differences=True, periodic_features=[1],
                   difference_scale=20.0, derived_eta=SERVICE_ETA),
        InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2,
                       edge_differences=True, periodic_features=[1], derived_eta=SERVICE_ETA),
    ]


@pytest.mark.parametrize("index", range(3), ids=["embedding", "filter", "interaction_gnn"])
def test_networks_deriving_eta_read_three_features_and_export_with_parity(tmp_path, index):
    torch.manual_seed(index)
    network = _networks()[index].eval()
    first = next(module for module in network.modules() if isinstance(module, torch.nn.Linear))
    report = export_network(network, None, tmp_path / "network.onnx")
    assert report.validation.passed and not report.validation.hazards
    assert report.inputs[0].dims == ("num_hits", 3)
    assert network.config["derived_eta"] == SERVICE_ETA
    rebuilt = type(network).from_config(network.config)
    rebuilt_first = next(module for module in rebuilt.modules() if isinstance(module, torch.nn.Linear))
    assert rebuilt_first.in_features == first.in_features
    # the layers read the three features plus η (the filter: both hits and their differences)
    assert first.in_features == (4, 3 * 4, 4)[index]


# ----------------------------------------------------------------------------- pair geometry

from trackserve.export.derived import PairGeometry, check_pair_geometry, geometry_spec_for  # noqa: E402

SERVICE_GEOMETRY = {"r": 0, "phi": 1, "z": 2, "r_scale": 3000.0, "phi_scale": float(np.pi), "z_scale": 400.0}


def test_curvature_of_true_edges_follows_the_particle_pt():
    from trackserve.events.geometry import load_geometry
    from trackserve.events.simulate import SimulationConfig, simulate_event
    from trackserve.events.truth_graph import truth_graph

    config = dataclasses.replace(SimulationConfig(), num_particles=3000, noise_fraction=0.0, vertex_sigma_z=0.0,
                                 vertex_sigma_xy=0.0)
    event = simulate_event(load_geometry(), config, seed=3, event_id=0)
    features = hit_features(event.hits, EXATRKX_SERVICE)
    edges = truth_graph(event)
    geometry = PairGeometry(geometry_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales))(
        torch.from_numpy(features), torch.from_numpy(edges)).numpy()
    pids = np.asarray(event.truth["particle_id"])[edges[0]]
    particles = {int(p): i for i, p in enumerate(np.asarray(event.particles["particle_id"]))}
    pt = np.hypot(event.particles["px"], event.particles["py"])[[particles[int(p)] for p in pids]]
    expected = 0.3 * 2.0 / pt  # 1/m in 2 T
    clean = pt > 1.5  # away from multiple-scattering kinks
    assert clean.sum() > 100
    # two-hit estimates carry the hits' smearing (tens of microns over centimetres): compare robustly
    ratio = np.abs(geometry[clean, 0]) / expected[clean]
    assert abs(np.median(ratio) - 1.0) < 0.1
    close = np.abs(np.abs(geometry[clean, 0]) - expected[clean]) < 0.1 + 0.2 * expected[clean]
    assert close.mean() > 0.8
    # true prompt edges point back at the origin; random pairs do not
    assert np.median(np.abs(geometry[clean, 1])) < 0.05
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(0, len(features), (2, 2000))
    noise = PairGeometry(SERVICE_GEOMETRY)(torch.from_numpy(features), torch.from_numpy(random_pairs)).numpy()
    assert np.median(np.abs(noise[:, 1])) > 1.0


@pytest.fixture(scope="module")
def displaced_event():
    """An event whose collisions spread 10 cm along the beam: hit features, its truth
    edges and, per edge, the particle's pT, production point (vz, transverse) and eta."""
    from trackserve.events.geometry import load_geometry
    from trackserve.events.simulate import SimulationConfig, simulate_event
    from trackserve.events.truth_graph import truth_graph

    config = dataclasses.replace(SimulationConfig(), num_particles=2000, noise_fraction=0.0, vertex_sigma_z=100.0)
    event = simulate_event(load_geometry(), config, seed=4, event_id=0)
    edges = truth_graph(event)
    pids = np.asarray(event.truth["particle_id"])[edges[0]]
    row = {int(p): i for i, p in enumerate(np.asarray(event.particles["particle_id"]))}
    rows = np.array([row[int(p)] for p in pids])
    px, py, pz = (np.asarray(event.particles[name])[rows] for name in ("px", "py", "pz"))
    pt = np.hypot(px, py)
    return {"features": hit_features(event.hits, EXATRKX_SERVICE), "edges": edges, "pt": pt,
            "vz": np.asarray(event.particles["vz"])[rows], "eta": np.arcsinh(pz / pt),
            "vr": np.hypot(event.particles["vx"], event.particles["vy"])[rows]}


def test_intercept_of_true_edges_is_the_collision_point_wherever_it_lies(displaced_event):
    from trackserve.export.derived import INTERCEPT_UNIT_MM

    # collisions spread 10 cm along the beam: the intercept finds each one, pointing does not
    features, edges, vz = displaced_event["features"], displaced_event["edges"], displaced_event["vz"]
    spec = geometry_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales, intercept=True)
    assert spec["intercept"] is True and "intercept" not in geometry_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales)
    out = PairGeometry(spec)(torch.from_numpy(features), torch.from_numpy(edges)).numpy()
    assert out.shape == (edges.shape[1], 3)
    clean = (displaced_event["pt"] > 1.5) & (displaced_event["vr"] < 1.0)
    assert clean.sum() > 100 and np.percentile(np.abs(vz[clean]), 90) > 100  # displaced collisions present
    error_mm = np.abs(out[clean, 2] * INTERCEPT_UNIT_MM - vz[clean])
    assert np.median(error_mm) < 5.0  # mm, against collisions spread over ±20 cm
    # pointing changes with the collision point, the intercept follows it
    far = clean & (np.abs(vz) > 100)
    assert np.median(np.abs(out[far, 1])) > 3 * np.median(np.abs(out[clean & (np.abs(vz) < 10), 1]))
    # one-layer pairs (no radial step) stay finite and clamped
    same = torch.tensor([[0.1, 0.2, 0.1], [0.1, 0.2001, 0.3]])
    flat = PairGeometry(spec)(same, torch.tensor([[0], [1]]))
    assert torch.isfinite(flat).all() and flat[0, 2].abs() <= 5.0


def test_direction_of_true_edges_is_the_particle_eta_wherever_the_collision_lies(displaced_event):
    from trackserve.export.derived import DIRECTION_SLOPE_CLAMP

    # collisions spread 10 cm along the beam: each hit's own eta (seen from the origin) moves
    # along a displaced track, the segment's direction stays the particle's
    features, edges, vz, eta = (displaced_event[key] for key in ("features", "edges", "vz", "eta"))
    spec = geometry_spec_for(EXATRKX_SERVICE.names, EXATRKX_SERVICE.scales, direction=True)
    assert spec["direction"] is True and "intercept" not in spec
    geometry = PairGeometry(spec)
    out = geometry(torch.from_numpy(features), torch.from_numpy(edges)).numpy()
    assert geometry.width() == 3 and out.shape == (edges.shape[1], 3)
    # the same value whichever hit comes first
    flipped = geometry(torch.from_numpy(features), torch.from_numpy(edges[::-1].copy())).numpy()
    np.testing.assert_allclose(flipped[:, 2], out[:, 2], atol=1e-5)
    clean = (displaced_event["pt"] > 1.0) & (displaced_event["vr"] < 1.0) & (np.abs(eta) < 1.5)
    far = clean & (np.abs(vz) > 60)
    assert far.sum() > 30
    assert np.median(np.abs(out[far, 2] - eta[far])) < 0.01
    # each hit's own eta does not follow a displaced particle: the test can fail
    hit_eta = DerivedEta(SERVICE_ETA)(torch.from_numpy(features)).numpy()[:, 3]
    assert np.median(np.abs(hit_eta[edges[0, far]] - eta[far])) > 0.1
    # hits on one layer and coincident hits stay finite and within the clamp
    same = torch.tensor([[0.1, 0.2, 0.1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.1]])
    flat = geometry(same, torch.tensor([[0, 0], [1, 2]]))
    limit = float(np.arcsinh(DIRECTION_SLOPE_CLAMP))
    assert torch.isfinite(flat).all() and (flat[:, 2].abs() <= limit + 1e-5).all() and flat[1, 2] == 0.0


def test_pair_geometry_is_finite_for_coincident_and_zero_hits():
    features = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.5, 1.0], [0.1, 0.5, 1.0]])
    edges = torch.tensor([[0, 0, 2], [1, 2, 3]])
    out = PairGeometry(SERVICE_GEOMETRY)(features, edges)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert (out[:, 0].abs() <= 20).all()


def test_pair_geometry_of_close_hits_far_from_the_beam_has_float32_precision():
    # Pairs a fraction of a millimetre to a few mm apart, up to a metre from the beam (overlapping
    # modules, split clusters): the law-of-cosines distance lost every digit here in float32
    # (curvature 20 instead of 1.66 for the pair of the published benchmark event 29 below).
    rng = np.random.default_rng(5)
    n = 4000
    first = np.stack([rng.uniform(0.01, 0.34, n), rng.uniform(-1, 1, n), rng.uniform(-2.5, 2.5, n)], axis=1)
    step = np.stack([rng.normal(0, 1e-4, n), rng.normal(0, 2e-4, n), rng.normal(0, 5e-3, n)], axis=1)
    features = np.concatenate([first, first + step, [[0.39951742, -0.7885811, -2.5515], [0.39950275, -0.78845876, -2.5545]]])
    features = features.astype(np.float32)
    edges = torch.from_numpy(np.stack([np.r_[np.arange(n), 2 * n], np.r_[np.arange(n) + n, 2 * n + 1]]))
    geometry = PairGeometry(SERVICE_GEOMETRY)
    single = geometry(torch.from_numpy(features), edges).numpy()
    double = geometry(torch.from_numpy(features).double(), edges).numpy()
    np.testing.assert_allclose(single, double, rtol=1e-3, atol=1e-3)
    assert abs(double[-1, 0] - 1.661) < 1e-3


@pytest.mark.parametrize("value, message", [
    ({"r": 0, "phi": 1}, "exactly the keys"),
    ({**SERVICE_GEOMETRY, "phi": 0}, "columns r, phi, z must differ"),
    ({**SERVICE_GEOMETRY, "z": 5}, r"pair_geometry.z must be a feature column in \[0, 3\)"),
    ({**SERVICE_GEOMETRY, "phi_scale": -1.0}, "pair_geometry.phi_scale must be a number > 0"),
    ({**SERVICE_GEOMETRY, "intercept": 1}, "pair_geometry.intercept must be true or false, got 1"),
    ({**SERVICE_GEOMETRY, "intercept": True, "extra": 0}, "exactly the keys"),
    ({**SERVICE_GEOMETRY, "direction": "yes"}, "pair_geometry.direction must be true or false, got 'yes'"),
])
def test_bad_pair_geometry_configs_are_refused(value, message):
    with pytest.raises(CheckpointImportError, match=message):
        check_pair_geometry(value, 3, "Net")
    with pytest.raises(InputError, match="missing z"):
        geometry_spec_for(("r", "phi"), (1.0, 1.0))


@pytest.mark.parametrize("flags", [(), ("intercept",), ("intercept", "direction")],
                         ids=["two-columns", "with-intercept", "with-intercept-and-direction"])
@pytest.mark.parametrize("kind", ["filter", "gnn"])
def test_networks_with_pair_geometry_export_with_parity(tmp_path, kind, flags):
    torch.manual_seed(5)
    geometry = {**SERVICE_GEOMETRY, **{flag: True for flag in flags}}
    common = {"edge_differences": True, "periodic_features": [1], "derived_eta": SERVICE_ETA,
              "pair_geometry": geometry}
    extra = 2 + len(flags)
    if kind == "filter":
        network = EdgeFilter(in_channels=3, hidden=16, nb_layer=2, **common)
        assert network.input_layer.in_features == 3 * 4 + extra
    else:
        network = InteractionGNN(in_channels=3, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2, **common)
        assert network.edge_encoder[0].in_features == 2 * 8 + 4 + extra
    report = export_network(network.eval(), None, tmp_path / "network.onnx")
    assert report.validation.passed and report.inputs[0].dims == ("num_hits", 3)
    assert type(network).from_config(network.config).config["pair_geometry"] == geometry
