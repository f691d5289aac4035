"""Tests of the detector simulation: geometry, helix physics, options, determinism, output."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from trackserve.cli import main
from trackserve.errors import EventFormatError, InputError
from trackserve.events.event import PARTICLES_COLUMNS, TRUTH_COLUMNS, HITS_COLUMNS
from trackserve.events.geometry import load_geometry
from trackserve.events.simulate import (
    SIMULATE_STREAM,
    GEV_PER_TESLA_MM,
    SimulationConfig,
    generate_particles,
    hit_weights,
    read_simulation_particles,
    simulate_event,
)
from trackserve.events.trackml import read_event, read_particles

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"
#: No smearing, no scattering, no noise: hits lie exactly on the helices.
EXACT = SimulationConfig(smearing=False, x_over_x0=0.0, noise_fraction=0.0)


@pytest.fixture(scope="module")
def geometry():
    return load_geometry()


def particles(pt, eta, phi, q, vertex=(0.0, 0.0, 0.0), particle_type=None) -> dict:
    """A particle table with one particle per entry of the (broadcast) arguments."""
    pt, eta, phi, q = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (pt, eta, phi, q)))
    n = len(pt)
    vertex = np.broadcast_to(np.asarray(vertex, dtype=np.float64), (n, 3))
    table = {
        "particle_id": np.arange(1, n + 1, dtype=np.int64) * 7,
        "vx": vertex[:, 0].copy(), "vy": vertex[:, 1].copy(), "vz": vertex[:, 2].copy(),
        "px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pt * np.sinh(eta),
        "q": q.astype(np.int64), "nhits": np.zeros(n, dtype=np.int64),
    }
    if particle_type is not None:
        table["particle_type"] = np.broadcast_to(np.asarray(particle_type, dtype=np.int64), (n,)).copy()
    return table


def hits_of(event, particle_id):
    """Measured and true hit positions of one particle, in production (truth) order sorted by path."""
    rows = np.flatnonzero(event.truth["particle_id"] == particle_id)
    measured = np.stack([event.hits[c][rows] for c in ("x", "y", "z")], axis=1)
    true = np.stack([event.truth[c][rows] for c in ("tx", "ty", "tz")], axis=1)
    momentum = np.stack([event.truth[c][rows] for c in ("tpx", "tpy", "tpz")], axis=1)
    return rows, measured, true, momentum


def fit_circle(x, y):
    """Algebraic least-squares circle: centre and radius."""
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    solution, *_ = np.linalg.lstsq(design, x * x + y * y, rcond=None)
    cx, cy = solution[0] / 2, solution[1] / 2
    return cx, cy, np.sqrt(solution[2] + cx * cx + cy * cy)


# ----------------------------------------------------------------------------- geometry of hits
def test_every_hit_lies_on_a_module(geometry):
    config = SimulationConfig(num_particles=800, noise_fraction=0.2, inefficiency=0.1)
    event = simulate_event(geometry, config, seed=11)
    hits, truth = event.hits, event.truth
    modules = geometry.module_indices(hits["volume_id"], hits["layer_id"], hits["module_id"])
    measured = np.stack([hits["x"], hits["y"], hits["z"]], axis=1)
    true = np.stack([truth["tx"], truth["ty"], truth["tz"]], axis=1)
    for points in (measured, true):
        local = geometry.to_local(modules, points)
        assert np.all(geometry.contains(modules, local, tolerance=1e-6))
        assert np.abs(local[:, 2]).max() < 1e-6  # on the mid-plane, well within the thickness
    assert event.num_hits > 5000
    assert len(np.unique(hits["volume_id"])) == 9  # random particles reach every volume


def test_hits_are_sorted_and_numbered_like_trackml(geometry):
    event = simulate_event(geometry, SimulationConfig(num_particles=300), seed=2)
    hits = event.hits
    assert list(hits) == list(HITS_COLUMNS) and list(event.truth) == list(TRUTH_COLUMNS)
    np.testing.assert_array_equal(hits["hit_id"], np.arange(1, event.num_hits + 1))
    np.testing.assert_array_equal(event.truth["hit_id"], hits["hit_id"])
    key = np.stack([hits["volume_id"], hits["layer_id"], hits["module_id"]], axis=1)
    assert np.all(np.diff(key[:, 0] * 10**10 + key[:, 1] * 10**5 + key[:, 2]) >= 0)
    for name, dtype in HITS_COLUMNS.items():
        assert hits[name].dtype == dtype, name
    for name, dtype in PARTICLES_COLUMNS.items():
        assert event.particles[name].dtype == dtype, name


def test_overlaps_give_two_hits_and_gaps_none_like_the_real_event(geometry):
    """Particles of the real TrackML event cross the same layers and overlaps as in the real data."""
    real = read_event(REPO / "data" / "event000000001")
    event = simulate_event(geometry, real.particles, seed=5, config=replace(SimulationConfig(), noise_fraction=0.0))

    def layer_counts(e):
        pid = e.truth["particle_id"]
        keep = pid != 0
        return Counter(zip(pid[keep].tolist(), e.hits["volume_id"][keep].tolist(), e.hits["layer_id"][keep].tolist()))

    real_layers, simulated_layers = layer_counts(real), layer_counts(event)
    shared = set(real_layers) & set(simulated_layers)
    assert len(shared) / len(real_layers) > 0.95  # the same (particle, layer) crossings
    real_double = np.mean([real_layers[k] > 1 for k in shared])
    simulated_double = np.mean([simulated_layers[k] > 1 for k in shared])
    assert 0.2 < real_double < 0.35
    assert simulated_double == pytest.approx(real_double, abs=0.05)  # overlaps as often as in real data
    np.testing.assert_array_equal(event.particles["particle_id"], real.particles["particle_id"])
    np.testing.assert_array_equal(event.particles["particle_type"], real.particles["particle_type"])


# ----------------------------------------------------------------------------- helix physics
@pytest.mark.parametrize("field", [2.0, 0.7])
@pytest.mark.parametrize("pt", [0.6, 1.5, 10.0])
def test_helix_radius_is_pt_over_0_3_b(geometry, field, pt):
    config = replace(EXACT, magnetic_field=field)
    table = particles(pt, eta=0.4, phi=1.1, q=[1, -1])
    event = simulate_event(geometry, table, seed=0, config=config)
    expected = pt / (0.299792458 * field) * 1000.0  # R [m] = pT [GeV] / (0.3 B [T])
    for pid in table["particle_id"]:
        _, measured, true, _ = hits_of(event, pid)
        assert len(measured) >= 8
        np.testing.assert_allclose(measured, true, atol=1e-9)  # no smearing: measured = true
        cx, cy, radius = fit_circle(measured[:, 0], measured[:, 1])
        assert radius == pytest.approx(expected, rel=1e-6 if radius < 1e5 else 1e-3)
        assert np.hypot(cx, cy) == pytest.approx(radius, rel=1e-6)  # the circle passes through the origin vertex
        # z advances by pz/pT per unit transverse path: the helix pitch.
        s = 2 * radius * np.arcsin(np.hypot(measured[:, 0], measured[:, 1]) / (2 * radius))
        np.testing.assert_allclose(measured[:, 2], s * np.sinh(0.4), rtol=1e-7, atol=1e-6)
    assert pt / (GEV_PER_TESLA_MM * field) == pytest.approx(expected)


def test_positive_charge_turns_clockwise(geometry):
    """F = q v x B with B along +z pushes a positive particle to the right: phi decreases with r."""
    table = particles(0.8, eta=0.2, phi=np.linspace(-3, 3, 7), q=[1, -1, 1, -1, 1, -1, 1])
    event = simulate_event(geometry, table, seed=0, config=EXACT)
    for pid, q, phi0 in zip(table["particle_id"], table["q"], np.linspace(-3, 3, 7)):
        _, measured, _, momentum = hits_of(event, pid)
        r = np.hypot(measured[:, 0], measured[:, 1])
        order = np.argsort(r)
        azimuth = np.unwrap(np.arctan2(measured[order, 1], measured[order, 0]))
        slope = np.diff(azimuth) / np.diff(r[order])
        assert np.all(np.sign(slope[np.diff(r[order]) > 1]) == -q)
        # Momentum direction turns the same way, twice as fast as the azimuth of the points.
        direction = np.unwrap(np.arctan2(momentum[order, 1], momentum[order, 0]))
        np.testing.assert_allclose(direction - phi0, 2 * (azimuth - phi0), atol=1e-9)


def test_hits_match_an_integrated_lorentz_force(geometry):
    """Reference: integrate dp/ds = k q p_hat x B numerically up to each module plane."""
    field = 2.0
    table = particles([0.7, 3.0], eta=[-0.8, 1.7], phi=[0.3, -2.0], q=[1, -1], vertex=[(0.01, -0.02, 15.0), (-0.01, 0.0, -30.0)])
    event = simulate_event(geometry, table, seed=0, config=replace(EXACT, magnetic_field=field))
    for i, pid in enumerate(table["particle_id"]):
        rows, _, true, momentum = hits_of(event, pid)
        modules = geometry.module_indices(event.hits["volume_id"][rows], event.hits["layer_id"][rows], event.hits["module_id"][rows])
        start = np.array([table[c][i] for c in ("vx", "vy", "vz", "px", "py", "pz")])
        q = table["q"][i]

        def motion(_s, state):
            p = state[3:]
            direction = p / np.linalg.norm(p)
            return np.r_[direction, GEV_PER_TESLA_MM * q * np.cross(direction, [0.0, 0.0, field])]

        assert len(modules) == len(true) == len(momentum) > 0
        for module, point, p_true in zip(modules, true, momentum):
            normal, centre = geometry.normal[module], geometry.center[module]

            def plane(_s, state, normal=normal, centre=centre):
                return float(normal @ (state[:3] - centre))

            plane.terminal = True
            reach = np.linalg.norm(point - start[:3]) * 1.5
            # Stop at the crossing of this plane closest to the simulated hit.
            solution = solve_ivp(motion, (0.0, reach), start, events=plane, rtol=1e-10, atol=1e-9, dense_output=True)
            crossings = solution.t_events[0]
            assert len(crossings) > 0
            state = solution.sol(crossings[-1])
            np.testing.assert_allclose(state[:3], point, atol=2e-3)
            np.testing.assert_allclose(state[3:], p_true, atol=1e-5)


def test_loopers_stop_after_the_outgoing_half_turn(geometry):
    # 0.25 GeV in 2 T: R = 417 mm, so the particle reaches r = 834 mm and would come back.
    table = particles([0.25, 0.1], eta=[0.1, 2.8], phi=0.5, q=[1, -1])
    event = simulate_event(geometry, table, seed=0, config=EXACT)
    rows, _, true, _ = hits_of(event, table["particle_id"][0])
    r = np.hypot(true[:, 0], true[:, 1])
    layers = Counter(zip(event.hits["volume_id"][rows].tolist(), event.hits["layer_id"][rows].tolist()))
    assert set(layers) == {(8, 2), (8, 4), (8, 6), (8, 8), (13, 2), (13, 4), (13, 6), (13, 8), (17, 2)} - (
        {(17, 2)} if r.max() < 818 else set()
    )
    assert all(count <= 2 for count in layers.values())  # each layer once (twice in an overlap), never on the way back
    assert r.max() <= 2 * 0.25 / (GEV_PER_TESLA_MM * 2.0)
    # A 0.1 GeV particle at eta 2.8 spirals along z through the discs: half a turn at most.
    rows, _, true, _ = hits_of(event, table["particle_id"][1])
    radius = 0.1 / (GEV_PER_TESLA_MM * 2.0)
    cx, cy = radius * np.sin(0.5), -radius * np.cos(0.5)  # centre of a clockwise circle through the origin
    turned = np.mod(-(np.arctan2(true[:, 1] - cy, true[:, 0] - cx) - np.arctan2(-cy, -cx)), 2 * np.pi)
    assert 0 < len(rows) < 30
    assert turned.max() <= np.pi + 1e-9


def test_neutral_and_empty_inputs(geometry):
    table = particles([2.0, 2.0], eta=0.0, phi=0.0, q=[0, 1])
    event = simulate_event(geometry, table, seed=0, config=EXACT)
    np.testing.assert_array_equal(event.particles["nhits"] == 0, [True, False])
    empty = particles(np.zeros(0), eta=0.0, phi=0.0, q=1)
    event = simulate_event(geometry, empty, seed=0)
    assert event.num_hits == 0 and len(event.particles["particle_id"]) == 0
    assert set(event.hits) == set(HITS_COLUMNS) and set(event.truth) == set(TRUTH_COLUMNS)
    event = simulate_event(geometry, replace(SimulationConfig(), num_particles=0), seed=0)
    assert event.num_hits == 0


# ----------------------------------------------------------------------------- options
def test_determinism_for_a_seed(geometry):
    config = SimulationConfig(num_particles=200, inefficiency=0.1)
    first = simulate_event(geometry, config, seed=42)
    again = simulate_event(geometry, config, seed=42)
    other = simulate_event(geometry, config, seed=43)
    for kind in ("hits", "truth", "particles"):
        for name, column in getattr(first, kind).items():
            np.testing.assert_array_equal(column, getattr(again, kind)[name], err_msg=f"{kind}.{name}")
    assert first.num_hits != other.num_hits or not np.array_equal(first.hits["x"], other.hits["x"])
    # A given table with a sequence seed, as the command line uses it.
    table = particles(1.0, eta=np.linspace(-2, 2, 20), phi=0.2, q=1)
    np.testing.assert_array_equal(
        simulate_event(geometry, table, seed=[7, 1000]).hits["x"], simulate_event(geometry, table, seed=[7, 1000]).hits["x"]
    )


def test_inefficiency_removes_that_fraction(geometry):
    config = SimulationConfig(num_particles=500, noise_fraction=0.0)
    full = simulate_event(geometry, config, seed=3)
    lossy = simulate_event(geometry, replace(config, inefficiency=0.3), seed=3)
    assert lossy.num_hits / full.num_hits == pytest.approx(0.7, abs=0.03)
    # The same propagation: the surviving true positions are a subset of the full ones.
    keys = lambda e: set(zip(e.truth["particle_id"].tolist(), np.round(e.truth["tx"], 6).tolist()))  # noqa: E731
    assert keys(lossy) <= keys(full)
    np.testing.assert_array_equal(np.bincount(np.searchsorted(lossy.particles["particle_id"], lossy.truth["particle_id"]),
                                              minlength=500), lossy.particles["nhits"])
    none = simulate_event(geometry, replace(config, inefficiency=1.0), seed=3)
    assert none.num_hits == 0


def test_noise_fraction_sets_the_noise_count(geometry):
    config = SimulationConfig(num_particles=300, noise_fraction=0.2)
    event = simulate_event(geometry, config, seed=4)
    noise = event.truth["particle_id"] == 0
    signal = int((~noise).sum())
    assert noise.sum() == round(0.2 / 0.8 * signal)
    assert np.all(event.truth["weight"][noise] == 0)
    np.testing.assert_array_equal(event.truth["tpx"][noise], 0.0)
    # Noise is spread over the detector: every volume gets some.
    assert len(np.unique(event.hits["volume_id"][noise])) == 9
    assert not np.any(simulate_event(geometry, replace(config, noise_fraction=0.0), seed=4).truth["particle_id"] == 0)


def test_smearing_follows_the_resolution(geometry):
    config = SimulationConfig(num_particles=600, noise_fraction=0.0)
    for resolution in (None, 0.02):
        event = simulate_event(geometry, replace(config, resolution_u=resolution, resolution_v=resolution), seed=6)
        hits, truth = event.hits, event.truth
        modules = geometry.module_indices(hits["volume_id"], hits["layer_id"], hits["module_id"])
        measured = geometry.to_local(modules, np.stack([hits["x"], hits["y"], hits["z"]], axis=1))
        true = geometry.to_local(modules, np.stack([truth["tx"], truth["ty"], truth["tz"]], axis=1))
        pixel = np.isin(hits["volume_id"], [7, 8, 9])
        sigma_u = 0.05 / np.sqrt(12) if resolution is None else resolution
        sigma_v = 0.05625 / np.sqrt(12) if resolution is None else resolution
        residual = measured[pixel] - true[pixel]
        assert np.std(residual[:, 0]) == pytest.approx(sigma_u, rel=0.05)
        assert np.std(residual[:, 1]) == pytest.approx(sigma_v, rel=0.05)
        assert np.abs(np.mean(residual[:, 0])) < 3 * sigma_u / np.sqrt(pixel.sum()) + 1e-4
    exact = simulate_event(geometry, replace(config, smearing=False), seed=6)
    for measured, true in (("x", "tx"), ("y", "ty"), ("z", "tz")):
        np.testing.assert_allclose(exact.hits[measured], exact.truth[true], atol=1e-9)


def test_multiple_scattering_follows_highland(geometry):
    """The polar angle is constant on a helix in a solenoid: its change between layers is the scattering."""
    x0 = 0.02
    p = 1.0
    n = 2000
    table = particles(p, eta=0.0, phi=np.linspace(-np.pi, np.pi, n, endpoint=False), q=1)
    event = simulate_event(geometry, table, seed=8, config=replace(EXACT, x_over_x0=x0))
    truth, hits = event.truth, event.hits
    theta = np.arctan2(np.hypot(truth["tpx"], truth["tpy"]), truth["tpz"])
    first_hit = {}  # (particle, layer) -> polar angle at its first hit on that layer
    for pid, volume, layer, angle in zip(truth["particle_id"].tolist(), hits["volume_id"].tolist(),
                                         hits["layer_id"].tolist(), theta.tolist()):
        first_hit.setdefault((pid, volume, layer), angle)
    kicks = [first_hit[(pid, 8, 4)] - first_hit[(pid, 8, 2)] for pid in table["particle_id"].tolist()
             if (pid, 8, 2) in first_hit and (pid, 8, 4) in first_hit]
    beta = p / np.hypot(p, 0.13957)
    highland = 0.0136 / (beta * p) * np.sqrt(x0) * (1 + 0.038 * np.log(x0 / beta**2))
    assert len(kicks) > 0.95 * n
    assert np.std(kicks) == pytest.approx(highland, rel=0.05)  # 2000 samples: 1.6 % statistical precision
    # Without material there is no kick at all.
    event = simulate_event(geometry, table, seed=8, config=EXACT)
    pt = np.hypot(event.truth["tpx"], event.truth["tpy"])
    np.testing.assert_allclose(pt, p, rtol=1e-12)
    np.testing.assert_allclose(event.truth["tpz"], 0.0, atol=1e-12)


def test_weights_are_trackml_like(geometry):
    event = simulate_event(geometry, SimulationConfig(num_particles=400, noise_fraction=0.1), seed=9)
    truth = event.truth
    assert truth["weight"].sum() == pytest.approx(1.0)
    assert np.all(truth["weight"][truth["particle_id"] == 0] == 0)
    nhits = dict(zip(event.particles["particle_id"].tolist(), event.particles["nhits"].tolist()))
    short = np.array([nhits.get(pid, 0) < 4 for pid in truth["particle_id"].tolist()])
    assert np.all(truth["weight"][short] == 0)
    # Against a brute-force computation on a small example: particle 0 with 5 hits at pT 3 GeV,
    # particle 1 with 3 hits (weight 0), particle 2 with 6 hits at pT 0.5 GeV, one noise hit.
    owner = np.array([0, 0, 2, 0, 0, 1, 1, 1, 0, -1, 2, 2, 2, 2, 2])
    order = np.array([1, 2, 1, 3, 4, 1, 2, 3, 5, 0, 2, 3, 4, 5, 6], dtype=float)
    weights = hit_weights(owner, order, pt=np.array([3.0, 1.0, 0.5]))
    raw = np.array([10, 8, 10, 6, 8, 0, 0, 0, 10, 0, 8, 6, 6, 8, 10], dtype=float)
    raw[owner == 2] *= 0.2
    np.testing.assert_allclose(weights, raw / raw.sum())
    np.testing.assert_array_equal(hit_weights(np.array([-1, -1]), np.zeros(2), np.zeros(0)), [0.0, 0.0])


def test_random_particles_follow_the_options():
    config = SimulationConfig(num_particles=20000, pt_min=0.5, pt_max=20.0, pt_power=3.0, eta_max=2.0,
                              vertex_sigma_xy=0.1, vertex_sigma_z=40.0)
    table = generate_particles(config, np.random.default_rng(0))
    pt = np.hypot(table["px"], table["py"])
    eta = np.arcsinh(table["pz"] / pt)
    assert pt.min() >= 0.5 and pt.max() <= 20.0
    # Median of dN/dpT ~ pT^-3 on [0.5, 20]: solve (pmin^-2 - m^-2) = (pmin^-2 - pmax^-2) / 2.
    median = (0.5**-2 - 0.5 * (0.5**-2 - 20.0**-2)) ** -0.5
    assert np.median(pt) == pytest.approx(median, rel=0.02)
    assert np.abs(eta).max() <= 2.0 and np.mean(np.abs(eta) < 1.0) == pytest.approx(0.5, abs=0.02)
    assert set(np.unique(table["q"]).tolist()) == {-1, 1} and np.mean(table["q"]) == pytest.approx(0, abs=0.03)
    np.testing.assert_array_equal(table["particle_type"], 211 * table["q"])
    assert np.std(table["vx"]) == pytest.approx(0.1, rel=0.03) and np.std(table["vz"]) == pytest.approx(40.0, rel=0.03)
    np.testing.assert_array_equal(table["particle_id"], np.arange(1, 20001))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("pz"), "lacks column.*pz"),
        (lambda t: t["px"].__setitem__(1, np.nan), "column 'px', row 2: particle table: value is not finite"),
        (lambda t: t["particle_id"].__setitem__(2, t["particle_id"][0]), "column 'particle_id', row 3: particle table: particle id 7 appears more than once"),
        (lambda t: t["particle_id"].__setitem__(0, 0), "column 'particle_id', row 1: particle table: particle id 0 is reserved"),
        (lambda t: t.__setitem__("q", np.array([1.0, 0.5, 1.0])), "column 'q', row 2: particle table: value must be an integer"),
        (lambda t: t["pz"].__setitem__(1, 2e6), "column 'pz', row 2: particle table: a momentum of 2e\\+06 GeV is beyond what the "
         "simulation's helix arithmetic resolves \\(below 1e\\+06 GeV\\)"),
    ],
)
def test_bad_particle_tables_are_refused(geometry, change, message):
    table = particles(1.0, eta=[0.0, 1.0, 2.0], phi=0.0, q=1)
    change(table)
    with pytest.raises(EventFormatError, match=message):
        simulate_event(geometry, table, seed=0)


@pytest.mark.parametrize(
    "option, value",
    [("pt_min", 0.0), ("pt_max", 0.1), ("eta_max", -1.0), ("magnetic_field", 0.0), ("inefficiency", 1.5),
     ("noise_fraction", 1.0), ("x_over_x0", -0.1), ("resolution_u", -1.0), ("num_particles", -3), ("vertex_sigma_z", float("nan")),
     ("vertex_offset_z", float("inf")), ("vertex_offset_z", -501.0), ("vertex_offset_z", np.float32("nan")),
     # not numbers: a TypeError from abs() or a comparison before, or (True, 1j) taken as 1 mm
     ("vertex_offset_z", "50"), ("vertex_offset_z", True), ("vertex_offset_z", 1j), ("pt_min", None), ("eta_max", "3"),
     # integers beyond any float: OverflowError / TypeError from math.isfinite and np.isfinite before
     ("vertex_sigma_z", 10**400), ("pt_power", 10**400)],
)
def test_bad_options_are_named(geometry, option, value):
    with pytest.raises(InputError, match=f"simulation option {option} = "):
        simulate_event(geometry, replace(SimulationConfig(num_particles=5), **{option: value}), seed=0)


@pytest.mark.parametrize("random", [True, False])
def test_a_vertex_offset_moves_the_collision_region_and_nothing_else(geometry, random):
    """The particles leave from points moved along the beam and cross the detector there: the
    same particles and momenta, production points moved by the offset, and the hits where the
    event simulated from the particles moved by hand has them (the detector stays put)."""
    exact = replace(EXACT, num_particles=200)
    table = particles([1.0, 2.0, 5.0], eta=[0.2, -0.5, 1.1], phi=[0.1, 2.0, -2.5], q=[1, -1, 1], vertex=(0.0, 0.0, 30.0))
    if random:
        plain = simulate_event(geometry, exact, seed=4)
        moved = simulate_event(geometry, replace(exact, vertex_offset_z=-80.0), seed=4)
    else:
        plain = simulate_event(geometry, table, seed=4, config=exact)
        moved = simulate_event(geometry, table, seed=4, config=replace(exact, vertex_offset_z=-80.0))
    np.testing.assert_array_equal(moved.particles["particle_id"], plain.particles["particle_id"])
    np.testing.assert_array_equal(moved.particles["px"], plain.particles["px"])
    np.testing.assert_allclose(moved.particles["vz"], plain.particles["vz"] - 80.0)
    by_hand = dict(plain.particles)
    by_hand["vz"] = by_hand["vz"] - 80.0
    expected = simulate_event(geometry, by_hand, seed=4, config=exact)
    for column in ("x", "y", "z", "module_id"):
        np.testing.assert_array_equal(moved.hits[column], expected.hits[column])
    assert not np.array_equal(moved.hits["z"], plain.hits["z"])


def test_two_different_configs_are_refused(geometry):
    with pytest.raises(InputError, match="not two different configs"):
        simulate_event(geometry, SimulationConfig(num_particles=5), seed=0, config=SimulationConfig(num_particles=6))


# ----------------------------------------------------------------------------- real tables, command line
def test_real_full_event_table(geometry):
    path = SHARED_DATA / "trackml" / "event000021139-particles.csv"
    if not path.is_file():
        pytest.skip(f"the real particle table {path} is absent")
    table = read_particles(path)
    subset = {name: column[:1500] for name, column in table.items()}
    event = simulate_event(geometry, subset, seed=1, config=replace(SimulationConfig(), noise_fraction=0.0))
    simulated, real = event.particles["nhits"], subset["nhits"]
    # Same kinematics, same detector: hit counts follow the real ones (the real simulation also
    # has interactions and energy loss, so it loses some particles earlier).
    assert np.corrcoef(simulated, real)[0, 1] > 0.5
    assert 0.8 < simulated.sum() / real.sum() < 1.5
    per_particle = Counter(event.truth["particle_id"].tolist())
    assert [per_particle.get(pid, 0) for pid in subset["particle_id"].tolist()] == simulated.tolist()


def test_command_line_writes_the_same_events(geometry, tmp_path, capsys):
    status = main(["simulate", "--output", str(tmp_path), "--events", "2", "--first-event-id", "1000",
                   "--num-particles", "50", "--seed", "3", "--noise-fraction", "0.05", "--gzip"])
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("event000001000: ") and "hits" in lines[0]
    config = SimulationConfig(num_particles=50, noise_fraction=0.05)
    for event_id in (1000, 1001):
        written = read_event(tmp_path / f"event{event_id:09d}")
        expected = simulate_event(geometry, config, seed=[3, SIMULATE_STREAM, event_id], event_id=event_id)
        np.testing.assert_array_equal(written.hits["module_id"], expected.hits["module_id"])
        np.testing.assert_allclose(written.hits["x"], expected.hits["x"], rtol=1e-8)
        np.testing.assert_array_equal(written.truth["particle_id"], expected.truth["particle_id"])
        np.testing.assert_array_equal(written.particles["nhits"], expected.particles["nhits"])


def test_command_line_moves_the_collision_region_of_a_particle_table(geometry, tmp_path, capsys):
    table = tmp_path / "particles.csv"
    table.write_text("particle_id,vx,vy,vz,px,py,pz,q\n1,0,0,10,1,1,0.5,1\n2,0,0,-20,-1,2,-1,-1\n")
    assert main(["simulate", "--output", str(tmp_path / "out"), "--particles", str(table), "--seed", "2",
                 "--vertex-offset-z", "-75"]) == 0
    written = read_event(tmp_path / "out" / "event000000000")
    np.testing.assert_allclose(written.particles["vz"], [-65.0, -95.0])
    expected = simulate_event(geometry, read_simulation_particles(table), seed=[2, SIMULATE_STREAM, 0],
                              config=SimulationConfig(vertex_offset_z=-75.0))
    np.testing.assert_allclose(written.hits["z"], expected.hits["z"], rtol=1e-8)


@pytest.mark.parametrize("row, message", [
    ("2,0,0,0,1e30,1,1,1", "column 'px', row 2: particle table: a momentum of 1e\\+30 GeV"),
    ("0,0,0,0,1,1,1,1", "column 'particle_id', row 2: particle table: particle id 0 is reserved for noise hits"),
])
def test_an_unusable_particle_table_is_named_with_its_file_column_and_row(tmp_path, capsys, row, message):
    from trackserve.events.features import EXATRKX_SERVICE
    from trackserve.train.data import SimulatedSource, simulated_events

    table = tmp_path / "particles.csv"
    table.write_text(f"particle_id,vx,vy,vz,px,py,pz,q\n1,0,0,0,1,1,1,1\n{row}\n")
    assert main(["simulate", "--output", str(tmp_path / "out"), "--particles", str(table)]) == 2
    assert re.search(f"error: file {re.escape(str(table))}, {message}", capsys.readouterr().err)
    with pytest.raises(EventFormatError, match=f"file {re.escape(str(table))}, {message}"):  # train's and tune-cut's
        simulated_events([SimulatedSource(particles=table)], 1, EXATRKX_SERVICE, seed=1, stream=0)


def test_a_simulated_source_takes_its_table_s_path_as_text(tmp_path):
    """It raised AttributeError ('str' object has no attribute 'stem') when naming the event."""
    from trackserve.events.features import EXATRKX_SERVICE
    from trackserve.train.data import SimulatedSource, simulated_events

    table = tmp_path / "event000000005-particles.csv"
    table.write_text("particle_id,vx,vy,vz,px,py,pz,q\n1,0,0,0,1,1,1,1\n2,0,0,0,-1,2,0.5,-1\n")
    source = SimulatedSource(particles=str(table))
    assert source.particles == table and source.describe() == "particles of event000000005-particles.csv"
    (event,) = simulated_events([source], 1, EXATRKX_SERVICE, seed=1, stream=0, show_progress=False)
    assert event.name == "sim-event000000005-0-0"


def test_command_line_refuses_bad_options(tmp_path, capsys):
    table = tmp_path / "particles.csv"
    assert main(["simulate", "--output", str(tmp_path), "--particles", str(table), "--pt-min", "1"]) == 2
    assert "--pt-min: options of random particles, which --particles replaces" in capsys.readouterr().err
    assert main(["simulate", "--output", str(tmp_path), "--geometry", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["simulate", "--output", str(tmp_path), "--inefficiency", "2"]) == 2
    assert "inefficiency" in capsys.readouterr().err
    for count in ("0", "-1"):
        assert main(["simulate", "--output", str(tmp_path / "none"), "--events", count]) == 2
        assert "nothing would be simulated" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("options, message", [
    (["--seed", "-1"], "--seed -1 must be in 0..9223372036854775807"),
    (["--eta-max", "inf"], "eta_max = inf must be a finite number"),
    (["--pt-max", "inf"], "pt_max = inf must be a finite number"),
    (["--vertex-sigma-z", "nan"], "vertex_sigma_z = nan must be a finite number"),
    (["--vertex-offset-z", "600"], "vertex_offset_z = 600.0 must be within 500 mm of the centre"),
    (["--magnetic-field", "inf"], "magnetic_field = inf must be a finite number"),
    (["--pt-max", "1e300", "--pt-power", "0.5"], "keep pt_max * cosh(eta_max) below"),
    (["--pt-min", "1e-300", "--pt-power", "5"], "give a spectrum float64 cannot sample"),
    (["--num-particles", "100000000000"], "simulate fewer particles per event"),
    # the noise hits were not counted: a MemoryError traceback (or the machine's memory used up)
    (["--noise-fraction", "0.999999999999"], "simulate fewer particles per event or a lower --noise-fraction"),
    (["--first-event-id", str(2**63 - 1), "--events", "2"], "gives event ids above 9223372036854775807"),
    (["--no-smearing", "--resolution-u", "0.5"], "--resolution-u set the smearing, which --no-smearing turns off"),
])
def test_command_line_refuses_options_before_writing(tmp_path, capsys, options, message):
    assert main(["simulate", "--output", str(tmp_path / "out"), "--num-particles", "10", *options]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compression", [[], ["--gzip"]], ids=["same", "other"])
def test_an_overwrite_stopped_before_the_new_event_is_written_keeps_the_old_one(geometry, tmp_path, capsys,
                                                                                monkeypatch, compression):
    # QA, 2026-12-02: --overwrite removed the old event's files before writing the new ones,
    # so Ctrl-C in between left neither
    import trackserve.events.trackml as trackml

    first = ["simulate", "--output", str(tmp_path), "--num-particles", "20", "--seed", "1"]
    assert main(first) == 0
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def interrupted(contents, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trackml, "write_files_atomically", interrupted)
    assert main([*first[:-1], "2", "--overwrite", *compression]) == 130  # (as Ctrl-C)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_an_event_none_of_whose_particles_reach_the_detector_gets_a_note(tmp_path, capsys):
    # QA, 2026-12-02: collisions spread 100 m across the beam wrote events of no hits without a word
    assert main(["simulate", "--output", str(tmp_path), "--num-particles", "10", "--vertex-sigma-xy", "1e5"]) == 0
    out, err = capsys.readouterr()
    assert "0 hits (0 noise), 10 particles (0 with hits)" in out
    assert "note: none of the particles of event000000000 reached a detector module" in err
    assert main(["simulate", "--output", str(tmp_path / "usual"), "--num-particles", "10"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_command_line_output_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    assert main(["simulate", "--output", str(target), "--num-particles", "10"]) == 2
    assert f"--output {target}: exists and is not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_command_line_refuses_to_write_over_events_unless_asked(geometry, tmp_path, capsys):
    first = ["simulate", "--output", str(tmp_path), "--num-particles", "20", "--seed", "1"]
    assert main(first) == 0
    hits = tmp_path / "event000000000-hits.csv"
    before = hits.read_bytes()
    assert main([*first[:-1], "2"]) == 2
    assert "already holds event000000000-hits.csv" in capsys.readouterr().err
    assert hits.read_bytes() == before
    # --overwrite replaces every file of the event, in the other compression too
    assert main([*first, "--gzip", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "event000000000-hits.csv.gz", "event000000000-particles.csv.gz", "event000000000-truth.csv.gz"]
    assert read_event(tmp_path / "event000000000").num_hits > 0


@pytest.mark.parametrize("options, spelling", [
    (["--overwrite"], "as written"), ([], "as written"), (["--overwrite", "--events", "2", "--gzip"], "as written"),
    (["--overwrite", "--gzip"], "another spelling"), (["--overwrite", "--events", "3"], "a link elsewhere"),
])
def test_command_line_refuses_to_write_over_its_particles_input(tmp_path, capsys, options, spelling):
    assert main(["simulate", "--output", str(tmp_path), "--num-particles", "20", "--seed", "1"]) == 0
    table = tmp_path / "event000000000-particles.csv"
    given = {"as written": table, "another spelling": tmp_path / ".." / tmp_path.name / table.name,
             "a link elsewhere": tmp_path / "elsewhere" / "particles.csv"}[spelling]
    if spelling == "a link elsewhere":
        given.parent.mkdir()
        given.symlink_to(table)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    capsys.readouterr()
    assert main(["simulate", "--output", str(tmp_path), "--particles", str(given), "--seed", "5", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" not in err
    assert f"--output {tmp_path} would write over the --particles input {given}; write the events elsewhere" in err
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


def test_command_line_simulates_particles_of_another_event_in_the_output(tmp_path, capsys):
    assert main(["simulate", "--output", str(tmp_path), "--num-particles", "20", "--seed", "1"]) == 0
    table = tmp_path / "event000000000-particles.csv"
    before = table.read_bytes()
    assert main(["simulate", "--output", str(tmp_path), "--particles", str(table), "--seed", "5",
                 "--first-event-id", "1", "--events", "2", "--gzip"]) == 0
    assert table.read_bytes() == before
    assert read_event(tmp_path / "event000000002").particles["particle_id"].tolist() == \
        read_particles(table)["particle_id"].tolist()


@pytest.mark.parametrize("seed, message", [(-1, "seed -1 must be in 0.."), (1.5, "seed must be an integer or a sequence"),
                                           ((1, -2), "seed -2 must be in 0.."), (True, "seed must be an integer")])
def test_simulate_event_refuses_seeds_numpy_would_reject(geometry, seed, message):
    from trackserve.errors import InputError

    with pytest.raises(InputError, match=message):
        simulate_event(geometry, SimulationConfig(num_particles=5), seed=seed)


@pytest.mark.parametrize("event_id", [-1, 2.7, True])
def test_simulate_event_refuses_an_event_id_that_is_no_trackml_id(geometry, event_id):
    from trackserve.errors import InputError

    with pytest.raises(InputError, match="event_id must be an integer in 0.."):
        simulate_event(geometry, SimulationConfig(num_particles=5), seed=1, event_id=event_id)


def test_command_line_events_are_never_the_training_events_of_the_same_seed(tmp_path):
    """numpy's SeedSequence ignores trailing zeros: (S, i) would be the training's (S, i, 0, 0)."""
    from trackserve.events.features import FeatureSpec
    from trackserve.train.data import SimulatedSource, simulated_events, simulated_validation_event

    assert main(["simulate", "--output", str(tmp_path), "--events", "3", "--num-particles", "40", "--seed", "7"]) == 0
    spec = FeatureSpec(("r", "phi", "z"), (1000.0, np.pi, 1000.0))
    source = SimulatedSource(num_particles=40)
    trained = [event.features for stream in (0, 1)
               for event in simulated_events([source], 3, spec, seed=7, stream=stream, show_progress=False)]
    trained.append(simulated_validation_event(source, spec, seed=7)[0].features)
    from trackserve.events.features import hit_features
    for event_id in range(3):
        written = hit_features(read_event(tmp_path / f"event{event_id:09d}").hits, spec)
        assert not any(f.shape == written.shape and np.allclose(f, written) for f in trained)


def test_a_particles_table_without_nhits_is_simulated(tmp_path, capsys):
    # nhits is what the simulation computes: a table to simulate from need not have it
    table = tmp_path / "particles.csv"
    table.write_text("particle_id,vx,vy,vz,px,py,pz,q\n1,0,0,0,1,1,0.5,1\n2,0,0,0,-2,1,0.1,-1\n")
    assert main(["simulate", "--output", str(tmp_path / "out"), "--particles", str(table), "--seed", "1"]) == 0
    written = read_event(tmp_path / "out" / "event000000000")
    assert written.particles["particle_id"].tolist() == [1, 2] and (written.particles["nhits"] > 5).all()


def test_a_geometry_given_by_its_path_is_named_as_such():
    with pytest.raises(InputError, match="simulate_event takes the detector geometry loaded, not str"):
        simulate_event("data/detectors.csv", SimulationConfig(num_particles=3), seed=1)
