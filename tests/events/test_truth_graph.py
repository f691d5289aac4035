"""Truth graph and truth edge labels, against straightforward per-particle references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from trackserve.errors import EventFormatError, InputError
from trackserve.events.event import HITS_COLUMNS, PARTICLES_COLUMNS, TRUTH_COLUMNS, Event, empty_table
from trackserve.events.trackml import read_event
from trackserve.events.truth_graph import truth_edge_labels, truth_graph

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_event() -> Event:
    return read_event(REPO / "data")


def reference_truth_graph(event: Event, from_vertex: bool = True, min_pt: float = 0.0) -> np.ndarray:
    """One particle at a time: sort its hits by distance (ties by row), join neighbours."""
    particle_ids = event.truth["particle_id"]
    x, y, z = event.hits["x"], event.hits["y"], event.hits["z"]
    vertices = {}
    momenta = {}
    if event.particles is not None:
        for i, pid in enumerate(event.particles["particle_id"].tolist()):
            vertices[pid] = (event.particles["vx"][i], event.particles["vy"][i], event.particles["vz"][i])
            momenta[pid] = np.hypot(event.particles["px"][i], event.particles["py"][i])
    sources, targets = [], []
    for pid in sorted(set(particle_ids.tolist()) - {0}):
        if min_pt > 0 and momenta[pid] < min_pt:
            continue
        vx, vy, vz = vertices[pid] if (from_vertex and vertices) else (0.0, 0.0, 0.0)
        rows = [int(row) for row in np.flatnonzero(particle_ids == pid)]
        rows.sort(key=lambda row: ((x[row] - vx) ** 2 + (y[row] - vy) ** 2 + (z[row] - vz) ** 2, row))
        sources.extend(rows[:-1])
        targets.extend(rows[1:])
    return np.array([sources, targets], dtype=np.int64).reshape(2, -1)


def make_event(points, particle_ids, vertices=None, momenta=None) -> Event:
    """An event from hit positions, their particle ids, and optional per-particle vertices/momenta."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = len(points)
    hits = empty_table(HITS_COLUMNS)
    hits.update(hit_id=np.arange(1, n + 1), x=points[:, 0], y=points[:, 1], z=points[:, 2])
    for name in ("volume_id", "layer_id", "module_id"):
        hits[name] = np.ones(n, dtype=np.int64)
    truth = {name: np.zeros(n) for name in TRUTH_COLUMNS}
    truth.update(hit_id=hits["hit_id"].copy(), particle_id=np.asarray(particle_ids, dtype=np.int64))
    particles = None
    if vertices is not None:
        ids = sorted(vertices)
        particles = {name: np.zeros(len(ids)) for name in PARTICLES_COLUMNS}
        particles["particle_id"] = np.array(ids, dtype=np.int64)
        for column, name in enumerate(("vx", "vy", "vz")):
            particles[name] = np.array([vertices[pid][column] for pid in ids], dtype=np.float64)
        momenta = momenta or {}
        particles["px"] = np.array([momenta.get(pid, 1.0) for pid in ids], dtype=np.float64)
    return Event(1, hits, truth, particles)


@pytest.mark.parametrize("from_vertex", [True, False])
def test_real_event_matches_the_per_particle_reference(real_event, from_vertex):
    edges = truth_graph(real_event, from_vertex=from_vertex)
    assert edges.dtype == np.int64
    np.testing.assert_array_equal(edges, reference_truth_graph(real_event, from_vertex=from_vertex))
    particle_ids = real_event.truth["particle_id"]
    signal = particle_ids[particle_ids != 0]
    assert edges.shape == (2, len(signal) - len(np.unique(signal))) == (2, 4230)


def test_real_event_without_particles_uses_the_origin(real_event):
    no_particles = dataclasses.replace(real_event, particles=None)
    np.testing.assert_array_equal(truth_graph(no_particles), truth_graph(real_event, from_vertex=False))
    with pytest.raises(EventFormatError, match="min_pt=1.0 needs the particles table"):
        truth_graph(no_particles, min_pt=1.0)


def test_real_event_min_pt(real_event):
    edges = truth_graph(real_event, min_pt=1.0)
    np.testing.assert_array_equal(edges, reference_truth_graph(real_event, min_pt=1.0))
    assert 0 < edges.shape[1] < truth_graph(real_event).shape[1]


def test_real_event_edges_are_chains_going_outwards(real_event):
    edges = truth_graph(real_event)
    assert truth_edge_labels(edges, real_event).all()
    # Each hit starts at most one edge and ends at most one: the edges form chains.
    assert len(np.unique(edges[0])) == edges.shape[1] and len(np.unique(edges[1])) == edges.shape[1]
    # Most particles come from the collision: their edges go to a larger cylindrical radius.
    radius = np.hypot(real_event.hits["x"], real_event.hits["y"])
    assert np.mean(radius[edges[1]] >= radius[edges[0]]) > 0.9


def test_displaced_vertex_orders_from_the_vertex():
    # A particle made at x = 300 mm flying towards the beam line, and one from the origin.
    points = [[100, 0, 0], [250, 0, 0], [200, 0, 0], [30, 1, 0], [70, 2, 0], [0, 0, 900]]
    event = make_event(points, [5, 5, 5, 9, 9, 0], vertices={5: (300, 0, 0), 9: (0, 0, 0)})
    np.testing.assert_array_equal(truth_graph(event), [[1, 2, 3], [2, 0, 4]])
    np.testing.assert_array_equal(truth_graph(event, from_vertex=False), [[0, 2, 3], [2, 1, 4]])


def test_ties_keep_row_order_and_ids_are_grouped():
    points = [[0, 10, 0], [10, 0, 0], [0, 20, 0], [5, 0, 0], [-10, 0, 0]]
    event = make_event(points, [8, 8, 8, 3, 8])
    # Particle 3 has one hit (no edge); particle 8: rows 0, 1, 4 at the same distance, then 2.
    np.testing.assert_array_equal(truth_graph(event), [[0, 1, 4], [1, 4, 2]])


def test_min_pt_on_a_small_event():
    points = [[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0]]
    event = make_event(points, [1, 1, 2, 2], vertices={1: (0, 0, 0), 2: (0, 0, 0)}, momenta={1: 0.5, 2: 2.0})
    np.testing.assert_array_equal(truth_graph(event, min_pt=1.0), [[2], [3]])
    np.testing.assert_array_equal(truth_graph(event, min_pt=0.5), [[0, 2], [1, 3]])


@pytest.mark.parametrize(
    "points,particle_ids",
    [(np.zeros((0, 3)), []), ([[1, 2, 3]], [4]), ([[1, 2, 3]], [0]), ([[1, 0, 0], [2, 0, 0]], [0, 0])],
)
def test_empty_graphs(points, particle_ids):
    for vertices in (None, {4: (0, 0, 0)}):
        edges = truth_graph(make_event(points, particle_ids, vertices=vertices))
        assert edges.shape == (2, 0) and edges.dtype == np.int64


def test_unknown_particle_and_missing_truth():
    event = make_event([[1, 0, 0], [2, 0, 0], [3, 0, 0]], [0, 7, 7], vertices={6: (0, 0, 0)})
    with pytest.raises(EventFormatError) as error:
        truth_graph(event)
    assert error.value.row == 2 and "particle_id 7 of hit row 2" in str(error.value)
    event = make_event([[1, 0, 0], [2, 0, 0]], [7, 7], vertices={})
    with pytest.raises(EventFormatError, match="particle_id 7 of hit row 1"):
        truth_graph(event)
    with pytest.raises(EventFormatError, match="no truth table"):
        truth_graph(dataclasses.replace(event, truth=None))


def test_truth_rows_are_matched_to_the_hits_by_hit_id(real_event):
    # An event built in memory with its truth rows in another order than its hits: the truth
    # graph and the edge labels follow each hit's own truth row (before, truth row k was taken
    # as hit row k: 54 of 4,230 edges joined two hits of one particle).
    order = np.random.default_rng(3).permutation(real_event.num_hits)
    shuffled = dataclasses.replace(real_event, truth={name: np.asarray(column)[order]
                                                      for name, column in real_event.truth.items()})
    expected = truth_graph(real_event)
    np.testing.assert_array_equal(truth_graph(shuffled), expected)
    np.testing.assert_array_equal(truth_graph(shuffled, min_pt=1.0), truth_graph(real_event, min_pt=1.0))
    assert truth_edge_labels(expected, shuffled).all()
    missing = dataclasses.replace(real_event, truth={name: np.asarray(column)[order[1:]]
                                                     for name, column in real_event.truth.items()})
    with pytest.raises(EventFormatError, match="exactly one row per hit: 1 hit.s. without truth"):
        truth_graph(missing)


def test_repeated_hit_ids_with_truth_in_another_order_are_refused(real_event):
    # Which truth row is whose could not be told: argsort paired the repeated ids' rows at random.
    hits = {name: np.asarray(column).copy() for name, column in real_event.hits.items()}
    hits["hit_id"][1] = hits["hit_id"][0]
    truth = {name: np.asarray(column).copy() for name, column in real_event.truth.items()}
    truth["hit_id"][1] = truth["hit_id"][0]
    truth = {name: column[::-1] for name, column in truth.items()}
    event = dataclasses.replace(real_event, hits=hits, truth=truth)
    with pytest.raises(EventFormatError, match="the hits' ids repeat .*its rows cannot be matched to the hits"):
        truth_graph(event)


@pytest.mark.parametrize("event", ["data/event000000001", None])
def test_something_else_than_an_event_is_named(event):
    with pytest.raises(InputError, match="truth_graph takes an Event"):
        truth_graph(event)


@pytest.mark.parametrize("min_pt", [float("nan"), -1.0, float("inf"), True, "1"])
def test_an_impossible_min_pt_is_refused(real_event, min_pt):
    with pytest.raises(InputError, match="min_pt must be a number of GeV >= 0"):
        truth_graph(real_event, min_pt=min_pt)


def test_large_event_structure():
    rng = np.random.default_rng(1)
    n = 100_000
    particle_ids = np.where(rng.random(n) < 0.15, 0, rng.integers(1, 12_000, n))
    vertices = {int(pid): tuple(rng.normal(0, 5, 3)) for pid in np.unique(particle_ids[particle_ids != 0])}
    points = rng.normal(0, 500, (n, 3))
    event = make_event(points, particle_ids, vertices=vertices)
    edges = truth_graph(event)
    signal = particle_ids[particle_ids != 0]
    assert edges.shape == (2, len(signal) - len(np.unique(signal)))
    assert truth_edge_labels(edges, particle_ids).all()
    assert len(np.unique(edges[0])) == edges.shape[1] and len(np.unique(edges[1])) == edges.shape[1]
    vertex = np.array([vertices.get(int(pid), (0, 0, 0)) for pid in particle_ids])
    distance = np.sum((points - vertex) ** 2, axis=1)
    assert np.all(distance[edges[0]] <= distance[edges[1]])
    # Spot-check a few particles against the reference ordering.
    for pid in np.unique(signal)[:: len(vertices) // 20]:
        rows = np.flatnonzero(particle_ids == pid)
        path = rows[np.lexsort((rows, distance[rows]))]
        mine = edges[:, particle_ids[edges[0]] == pid]
        np.testing.assert_array_equal(mine, [path[:-1], path[1:]])


def test_edge_labels_against_a_loop():
    rng = np.random.default_rng(2)
    particle_ids = rng.choice([0, 0, 11, 12, 13], 50)
    edges = rng.integers(0, 50, (2, 400))
    labels = truth_edge_labels(edges, particle_ids)
    expected = [particle_ids[a] == particle_ids[b] != 0 for a, b in edges.T]
    assert labels.dtype == np.bool_
    np.testing.assert_array_equal(labels, expected)
    assert labels.any() and not labels.all()


def test_edge_labels_edge_cases(real_event):
    particle_ids = np.array([0, 0, 5])
    np.testing.assert_array_equal(truth_edge_labels(np.array([[0, 2, 2], [1, 2, 0]]), particle_ids), [False, True, False])
    assert truth_edge_labels(np.zeros((2, 0), dtype=np.int64), particle_ids).shape == (0,)
    assert truth_edge_labels(np.zeros((2, 0)), np.zeros(0, dtype=np.int64)).shape == (0,)
    with pytest.raises(InputError, match=r"edge 1 \(0 -> 3\) names a hit outside 0..2"):
        truth_edge_labels(np.array([[0, 0], [1, 3]]), particle_ids)
    with pytest.raises(InputError, match="outside"):
        truth_edge_labels(np.array([[-1], [1]]), particle_ids)
    with pytest.raises(InputError, match=r"shape \[2, M\]"):
        truth_edge_labels(np.array([0, 1]), particle_ids)
    with pytest.raises(InputError, match="integers"):
        truth_edge_labels(np.array([[0.0], [1.0]]), particle_ids)
    with pytest.raises(InputError, match="1-D"):
        truth_edge_labels(np.array([[0], [1]]), particle_ids.reshape(1, 3))
    with pytest.raises(EventFormatError, match="no truth table"):
        truth_edge_labels(np.array([[0], [1]]), dataclasses.replace(real_event, truth=None))
    # Every truth edge is true, and reversed edges too; noise-to-noise edges are false.
    edges = truth_graph(real_event)
    assert truth_edge_labels(edges[::-1], real_event).all()
    noise = np.flatnonzero(real_event.truth["particle_id"] == 0)
    assert not truth_edge_labels(np.stack([noise[:-1], noise[1:]]), real_event).any()
