"""The truth graph of an event: each particle's hits joined in trajectory order.

For every particle (``particle_id != 0``; noise hits have 0) its hits are ordered by
their distance to the particle's production vertex ``(vx, vy, vz)`` when the event has
its particles table, else to the origin, and each hit is joined to the next one. Edges
point from the hit earlier on the trajectory to the later one (inner to outer for a
track coming from the collision).

Why the distance to the vertex: along a helix leaving its vertex the distance grows
monotonically for the first half turn, which covers every hit of all but the curling
low-momentum particles; measuring from the origin instead misorders the hits of
particles produced away from the beam line (decays, conversions, the displaced tracks
of LRT studies). The measured hit positions (hits ``x, y, z``) are used, not the truth
positions: they are always present and differ by far less than the spacing of
detector layers. Ties keep the hits' row order, so the result is deterministic.

Edges are rows of the hits table; each hit's truth row is found by its ``hit_id``
(:func:`~trackserve.events.event.truth_by_hit`), so a truth table in another row order
than the hits gives the same graph.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import EventFormatError, InputError
from .event import Event, truth_by_hit


def _truth_particle_ids(event: Event) -> np.ndarray:
    """The particle id of each hit row (truth matched to the hits by ``hit_id`` when both
    tables have it, else row by row); an error if the event has no truth or it does not
    hold one row per hit."""
    if event.truth is None:
        raise EventFormatError(
            "the event has no truth table: read it with the 'truth' part and its -truth.csv file",
            path=event.source,
        )
    if "particle_id" not in event.truth:
        raise EventFormatError("the truth table has no 'particle_id' column", path=event.source, column="particle_id")
    if "hit_id" in event.truth and "hit_id" in event.hits:
        return truth_by_hit(event)["particle_id"]
    particle_ids = np.asarray(event.truth["particle_id"])
    if len(particle_ids) != event.num_hits:
        raise EventFormatError(
            f"the truth has {len(particle_ids)} rows but the event has {event.num_hits} hits",
            path=event.source,
        )
    return particle_ids


def _particle_rows(event: Event, particle_ids: np.ndarray, hit_rows: np.ndarray) -> np.ndarray:
    """Row in the particles table of each particle id (of the hits ``hit_rows``); an error naming any unknown one."""
    table_ids = np.asarray(event.particles["particle_id"])
    if len(table_ids) == 0:
        rows = np.zeros(len(particle_ids), dtype=np.int64)
        found = np.zeros(len(particle_ids), dtype=bool)
    else:
        order = np.argsort(table_ids, kind="stable")
        positions = np.minimum(np.searchsorted(table_ids, particle_ids, sorter=order), len(table_ids) - 1)
        rows = order[positions]
        found = table_ids[rows] == particle_ids
    unknown = ~found
    if unknown.any():
        hit = int(hit_rows[np.argmax(unknown)])
        raise EventFormatError(
            f"particle_id {particle_ids[np.argmax(unknown)]} of hit row {hit + 1} is not in the particles table",
            path=event.source,
            column="particle_id",
            row=hit + 1,
        )
    return rows


def truth_graph(event: Event, *, from_vertex: bool = True, min_pt: float = 0.0) -> np.ndarray:
    """The truth edges of ``event`` as int64 ``[2, M]`` hit row indices (source, target).

    Each particle with ``k`` hits gives ``k - 1`` edges joining consecutive hits along its
    trajectory (see the module docstring for the order), source before target. Noise
    hits have no edge. Edges come grouped by particle id (ascending), in trajectory
    order within a particle.

    ``from_vertex`` orders by the distance to the production vertex when the particles
    table is present (else, or when False, to the origin). ``min_pt`` (GeV) keeps only
    particles with transverse momentum ``hypot(px, py) >= min_pt``; it needs the
    particles table. The event needs its truth table.
    """
    if not isinstance(event, Event):
        raise InputError(f"truth_graph takes an Event (trackserve.events.read_event(prefix)), not "
                         f"{type(event).__name__} {event!r:.80}")
    if isinstance(min_pt, bool) or not isinstance(min_pt, numbers.Real) or not min_pt >= 0 or math.isinf(min_pt):
        raise InputError(f"min_pt must be a number of GeV >= 0, got {min_pt!r}")
    particle_ids = _truth_particle_ids(event)
    signal = particle_ids != 0
    x, y, z = (np.asarray(event.hits[name], dtype=np.float64) for name in ("x", "y", "z"))

    use_particles = event.particles is not None and (from_vertex or min_pt > 0)
    if min_pt > 0 and event.particles is None:
        raise EventFormatError(
            f"min_pt={min_pt} needs the particles table (px, py), which this event lacks",
            path=event.source,
        )
    if use_particles:
        signal_rows = np.flatnonzero(signal)
        rows_of_signal = _particle_rows(event, particle_ids[signal_rows], signal_rows)
        particles = event.particles
        if min_pt > 0:
            keep = np.hypot(particles["px"], particles["py"])[rows_of_signal] >= min_pt
            signal_rows, rows_of_signal = signal_rows[keep], rows_of_signal[keep]
        if from_vertex:
            vx, vy, vz = (np.asarray(particles[name], dtype=np.float64)[rows_of_signal] for name in ("vx", "vy", "vz"))
        else:
            vx = vy = vz = 0.0
    else:
        signal_rows = np.flatnonzero(signal)
        vx = vy = vz = 0.0

    distance2 = (x[signal_rows] - vx) ** 2 + (y[signal_rows] - vy) ** 2 + (z[signal_rows] - vz) ** 2
    order = np.lexsort((signal_rows, distance2, particle_ids[signal_rows]))
    path = signal_rows[order]
    same_particle = particle_ids[path[1:]] == particle_ids[path[:-1]]
    return np.stack([path[:-1][same_particle], path[1:][same_particle]]).astype(np.int64, copy=False)


def truth_edge_labels(edge_index: np.ndarray, event_or_particle_ids: Event | np.ndarray) -> np.ndarray:
    """Whether each edge joins two hits of the same particle (noise never counts): bool ``[M]``.

    ``edge_index`` is ``[2, M]`` hit row indices; the second argument is an event with
    truth, or the particle id of each hit row. Indices out of range raise
    :class:`InputError`.
    """
    if isinstance(event_or_particle_ids, Event):
        particle_ids = _truth_particle_ids(event_or_particle_ids)
    else:
        particle_ids = np.asarray(event_or_particle_ids)
        if particle_ids.ndim != 1:
            raise InputError(f"particle ids must be 1-D (one per hit), got shape {particle_ids.shape}")
    edges = np.asarray(edge_index)
    if edges.ndim != 2 or edges.shape[0] != 2:
        raise InputError(f"edge_index must have shape [2, M], got {edges.shape}")
    if edges.size and not np.issubdtype(edges.dtype, np.integer):
        raise InputError(f"edge_index must hold integers, got dtype {edges.dtype}")
    num_hits = len(particle_ids)
    if edges.size and (edges.min() < 0 or edges.max() >= num_hits):
        bad = int(np.argmax(((edges < 0) | (edges >= num_hits)).any(axis=0)))
        raise InputError(
            f"edge {bad} ({edges[0, bad]} -> {edges[1, bad]}) names a hit outside 0..{num_hits - 1}"
        )
    if edges.shape[1] == 0:
        return np.zeros(0, dtype=bool)
    source, target = particle_ids[edges[0]], particle_ids[edges[1]]
    return (source == target) & (source != 0)

