"""Tracking metrics: edge efficiency and purity, track efficiency, fake and duplicate rates, TrackML score.

The definitions follow the TrackML challenge and the ExaTrkX papers; every one is written
out here because the literature uses several variants.

Edges (:func:`edge_metrics`)
    Edges are undirected and counted once: ``(i, j)`` and ``(j, i)`` are the same edge, and
    repeated edges are merged. *Efficiency* is the fraction of truth edges found among the
    predicted edges. *Purity* is, by default (ExaTrkX), the fraction of predicted edges
    that join two hits of the same non-noise particle (``particle_id != 0``); without
    particle ids it falls back to the fraction of predicted edges that are truth edges
    (``truth_purity``, always reported). The two differ when the truth graph joins only
    consecutive hits of a particle: a predicted edge that skips a layer is pure but not in
    the truth graph.

Tracks (:func:`track_metrics`)
    A *track* is the set of hits sharing one label. Noise hits have ``particle_id == 0``;
    with ``exclude_noise=True`` (default) they are removed before anything is counted
    (they belong to no track); with ``exclude_noise=False`` they stay on their tracks,
    count towards a track's size and so lower its purity. Particle 0 is never a particle.

    * A particle's hits are counted from the event's truth (every hit given), not from the
      particles table's ``nhits``.
    * *Reconstructable* particles have at least ``min_hits`` hits and ``pT >= min_pt``.
    * *Candidate* tracks have at least ``min_track_hits`` hits (default: ``min_hits``).
    * A candidate track is *matched* to particle ``p`` (one-way, ExaTrkX) when more than
      half of the track's hits belong to ``p``; a track matches at most one particle.
    * A particle is *found* (double majority) when some candidate track has more than half
      of its hits from the particle AND holds more than half of the particle's hits.
      Exactly half is not enough on either side; at most one track can find a particle.
    * ``efficiency`` = found reconstructable particles / reconstructable particles.
    * ``fake_rate`` = candidate tracks matched to no particle (no particle holds more than
      half of their hits) / candidate tracks. A track matched to a particle that is not
      reconstructable is not a fake.
    * ``duplicate_rate`` = duplicate tracks / candidate tracks, where the duplicate tracks
      are, for every reconstructable particle, the matched candidate tracks beyond the
      first (ExaTrkX divides by the number of candidate tracks too; it subtracts the
      double-majority found particles rather than the particles with a matched track,
      which counts a lone matched track of an unfound particle as a duplicate: here it is
      not).

    :func:`found_particles` gives the same matching particle by particle, so that an
    efficiency can be split by any property of the particles.

TrackML score (:func:`trackml_score`)
    The official ``trackml.score.score_event``: for every track, its majority particle
    (the one with most hits on it); the track counts when more than half of its hits
    belong to that particle and more than half of that particle's hits (noise: all noise
    hits) are on the track; the score is the summed truth ``weight`` of the hits in those
    intersections, divided by the total weight of the event (so a perfect labelling scores
    1 whatever the weights sum to). Noise hits weigh 0 in TrackML truth; a track whose
    majority is particle 0 scores nothing here even when a truth file gives noise weight.

All functions are vectorised with numpy (sorting and counting, no loop per track).
A ratio whose denominator is 0 is ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pathlib import Path

import numpy as np

from ..errors import EventFormatError, InputError
from .event import Event, id_listing, table_length, truth_by_hit

#: Default minimum number of hits of a reconstructable particle and of a candidate track.
DEFAULT_MIN_HITS = 5
#: The transverse momentum (GeV) above which the command-line tools count particles by
#: default: the selection the ExaTrkX results and this project's targets are quoted for
#: (the functions here count every particle unless given ``min_pt``).
DEFAULT_MIN_PT = 1.0
#: The command-line tools' names for the selection (``min_pt``, ``min_hits``,
#: ``min_track_hits``), which :func:`check_selection`'s messages then use.
SELECTION_OPTIONS = ("--min-pt", "--min-hits", "--min-track-hits")


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` as a float, ``nan`` when the denominator is 0."""
    return float(numerator) / denominator if denominator else float("nan")


def _integer_array(values, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array, or an :class:`InputError` naming ``name``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- edges


@dataclass(frozen=True)
class EdgeMetrics:
    """Edge-level figures of a predicted graph against the truth graph (see the module docstring).

    ``purity`` is the same-particle purity when particle ids were given, else
    ``truth_purity``; ``particle_purity`` is ``None`` without particle ids.
    """

    efficiency: float
    purity: float
    truth_purity: float
    particle_purity: float | None
    num_pred_edges: int
    num_truth_edges: int
    num_true_pred_edges: int

    def as_dict(self) -> dict:
        """The figures as a plain ``dict``."""
        return asdict(self)


def _undirected_keys(edges, name: str) -> np.ndarray:
    """Sorted unique keys of the undirected edges of a ``[2, M]`` array (``lo * 2**32 + hi``)."""
    array = np.asarray(edges)
    if array.ndim != 2 or array.shape[0] != 2:
        raise InputError(f"{name} must have shape [2, M], got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must hold integer hit indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size:
        if array.min() < 0 or array.max() >= 2**31:
            raise InputError(f"{name} holds a hit index outside [0, 2**31): min {array.min()}, max {array.max()}")
        loops = np.flatnonzero(array[0] == array[1])
        if loops.size:
            raise InputError(
                f"{name} holds {loops.size} self-loop(s) (an edge from a hit to itself), "
                f"first at column {loops[0]}; remove them before evaluating"
            )
    lo = np.minimum(array[0], array[1])
    hi = np.maximum(array[0], array[1])
    return np.unique(lo * (1 << 32) + hi)


def edge_metrics(pred_edges, truth_edges, particle_ids=None) -> EdgeMetrics:
    """Edge efficiency and purity of ``pred_edges`` against ``truth_edges`` (both ``[2, M]`` hit indices).

    ``particle_ids`` (one per hit, 0 for noise) switches ``purity`` to the ExaTrkX
    definition: the fraction of predicted edges joining two hits of one non-noise particle.
    Edges are undirected and deduplicated; self-loops and negative indices are refused.
    """
    pred = _undirected_keys(pred_edges, "pred_edges")
    truth = _undirected_keys(truth_edges, "truth_edges")
    true_pred = int(np.count_nonzero(np.isin(pred, truth, assume_unique=True)))
    truth_purity = _ratio(true_pred, pred.size)
    particle_purity = None
    if particle_ids is not None:
        pids = _integer_array(particle_ids, "particle_ids")
        lo, hi = pred >> 32, pred & ((1 << 32) - 1)
        if pred.size and hi.max() >= pids.size:
            raise InputError(
                f"pred_edges refers to hit {int(hi.max())} but particle_ids has only {pids.size} entries"
            )
        same = (pids[lo] == pids[hi]) & (pids[lo] != 0)
        particle_purity = _ratio(int(np.count_nonzero(same)), pred.size)
    return EdgeMetrics(
        efficiency=_ratio(true_pred, truth.size),
        purity=truth_purity if particle_purity is None else particle_purity,
        truth_purity=truth_purity,
        particle_purity=particle_purity,
        num_pred_edges=int(pred.size),
        num_truth_edges=int(truth.size),
        num_true_pred_edges=true_pred,
    )


# --------------------------------------------------------------------------- tracks


@dataclass(frozen=True)
class TrackMetrics:
    """Track-level figures of a labelling against the truth (definitions in the module docstring).

    Counts: ``num_particles`` non-noise particles with a hit; ``num_reconstructable`` of them
    pass the pT and hit selection; ``num_matched`` of those are found (double majority);
    ``num_tracks`` distinct labels (after noise removal when noise is excluded);
    ``num_candidate_tracks`` of them have ``min_track_hits`` hits; ``num_matched_tracks``
    candidates are matched to a particle (one-way majority); ``num_fake_tracks`` are not;
    ``num_duplicate_tracks`` are matched tracks of a reconstructable particle beyond its first.
    """

    efficiency: float
    fake_rate: float
    duplicate_rate: float
    num_particles: int
    num_reconstructable: int
    num_matched: int
    num_tracks: int
    num_candidate_tracks: int
    num_matched_tracks: int
    num_fake_tracks: int
    num_duplicate_tracks: int
    min_pt: float
    min_hits: int
    min_track_hits: int
    exclude_noise: bool

    def as_dict(self) -> dict:
        """The figures and the selection they used as a plain ``dict``."""
        return asdict(self)


@dataclass(frozen=True)
class _Overlaps:
    """Every (track, particle) pair sharing hits, with the sizes the matching needs.

    ``particle_ids`` holds every particle id of the truth, 0 (noise) included when present,
    and ``particle_sizes`` their hit counts over the whole truth. ``track`` and ``particle``
    index ``track_labels`` and ``particle_ids``; ``common`` counts the pair's shared hits;
    ``hit_pair`` is the pair of every hit the tracks were built from.
    """

    track_labels: np.ndarray
    track_sizes: np.ndarray
    particle_ids: np.ndarray
    particle_sizes: np.ndarray
    track: np.ndarray
    particle: np.ndarray
    common: np.ndarray
    hit_pair: np.ndarray

    @property
    def majority(self) -> np.ndarray:
        """Pairs whose particle holds more than half of the track's hits (at most one per track)."""
        return 2 * self.common > self.track_sizes[self.track]

    @property
    def double_majority(self) -> np.ndarray:
        """Majority pairs whose track also holds more than half of the particle's hits."""
        return self.majority & (2 * self.common > self.particle_sizes[self.particle])


def _overlaps(hit_particle_ids: np.ndarray, labels: np.ndarray, keep: np.ndarray | None = None) -> _Overlaps:
    """Count the hits each (track, particle) pair shares.

    Tracks are built from the hits selected by the boolean mask ``keep`` (all when
    ``None``); particle sizes always count every hit, so they do not depend on ``keep``.
    """
    particle_ids, particle_index, particle_sizes = np.unique(
        hit_particle_ids, return_inverse=True, return_counts=True
    )
    if keep is not None:
        labels, particle_index = labels[keep], particle_index[keep]
    track_labels, track_index, track_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    width = max(particle_ids.size, 1)
    pair_keys, pair_index, common = np.unique(
        track_index.astype(np.int64) * width + particle_index, return_inverse=True, return_counts=True
    )
    return _Overlaps(
        track_labels=track_labels,
        track_sizes=track_sizes,
        particle_ids=particle_ids,
        particle_sizes=particle_sizes,
        track=pair_keys // width,
        particle=pair_keys % width,
        common=common,
        hit_pair=pair_index.reshape(-1),
    )


def _particle_pt_lookup(particle_ids: np.ndarray, particle_pt) -> np.ndarray:
    """The pT of each particle of ``particle_ids`` from a ``(ids, pt)`` pair; an InputError names any missing."""
    if isinstance(particle_pt, Mapping) or hasattr(particle_pt, "columns"):
        raise InputError(f"particle_pt must be a pair (particle ids, pT values) of 1-D arrays, not a "
                         f"{type(particle_pt).__name__}: pass (ids, pts), e.g. (table['particle_id'], "
                         "numpy.hypot(table['px'], table['py']))")
    try:
        table_ids, table_pt = particle_pt
    except (TypeError, ValueError):
        raise InputError("particle_pt must be a pair (particle ids, pT values) of 1-D arrays") from None
    table_ids = _integer_array(table_ids, "particle_pt ids")
    table_pt = np.asarray(table_pt, dtype=np.float64)
    if table_pt.shape != table_ids.shape:
        raise InputError(f"particle_pt: {table_ids.size} ids but {table_pt.size} pT values")
    bad = np.isnan(table_pt) | (table_pt < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"particle_pt: the pT of particle {int(table_ids[first])} is {table_pt[first]} "
                         f"({int(bad.sum())} NaN or negative in all); pT is a number >= 0 (GeV)")
    order = np.lexsort((table_pt, table_ids))
    ids, values = table_ids[order], table_pt[order]
    differ = (ids[1:] == ids[:-1]) & (values[1:] != values[:-1])
    if differ.any():  # which of its pT would count is arbitrary
        raise InputError(f"particle_pt: particle(s) {id_listing(np.unique(ids[1:][differ]))} are given different pT; "
                         "give each particle one pT")
    return particle_values(particle_ids, table_ids, table_pt, "particle_pt", "pT")


def particle_values(particle_ids: np.ndarray, table_ids: np.ndarray, values: np.ndarray, table: str,
                    quantity: str) -> np.ndarray:
    """The ``values`` entry of each particle of ``particle_ids`` in a table of ``table_ids``
    (any order); an InputError names the particles the table lacks, as "``table`` has no
    ``quantity`` for particle(s) ... of the truth"."""
    particle_ids = np.asarray(particle_ids, dtype=np.int64)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    where = np.searchsorted(sorted_ids, particle_ids)
    found = where < sorted_ids.size
    found[found] = sorted_ids[where[found]] == particle_ids[found]
    if not found.all():
        raise InputError(f"{table} has no {quantity} for particle(s) {id_listing(particle_ids[~found])} of the truth")
    return np.asarray(values)[order][where]


def _matching(pids: np.ndarray, labs: np.ndarray, min_track_hits: int, exclude_noise: bool):
    """The overlaps of a labelling, which particles are found (double majority, by a
    candidate track), which tracks are candidates and which pairs are matches."""
    ov = _overlaps(pids, labs, (pids != 0) if exclude_noise else None)
    real = ov.particle_ids != 0
    candidate = ov.track_sizes >= min_track_hits
    usable = real[ov.particle] & candidate[ov.track]
    matched_pairs = ov.majority & usable
    found = np.zeros(ov.particle_ids.size, dtype=bool)
    found[ov.particle[ov.double_majority & usable]] = True
    return ov, found, candidate, matched_pairs


def found_particles(hit_particle_ids, labels, *, min_track_hits: int = DEFAULT_MIN_HITS,
                    exclude_noise: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which particles a labelling finds, one by one: ``(particle_ids, num_hits, found)``.

    Every particle of the truth except noise (id 0), in increasing id order, with its
    number of hits and whether a candidate track (at least ``min_track_hits`` hits) finds
    it by double majority, exactly as :func:`track_metrics` counts it (so its efficiency
    is the share found among the reconstructable ones). Lets an efficiency be split by
    any property of the particles (where they were produced, their direction).
    """
    pids = _integer_array(hit_particle_ids, "hit_particle_ids")
    labs = _integer_array(labels, "labels")
    if pids.shape != labs.shape:
        raise InputError(f"hit_particle_ids has {pids.size} hits but labels has {labs.size}")
    check_selection(0.0, min_track_hits, names=("min_pt", "min_track_hits", "min_track_hits"))
    ov, found, _, _ = _matching(pids, labs, int(min_track_hits), exclude_noise)
    real = ov.particle_ids != 0
    return ov.particle_ids[real], ov.particle_sizes[real], found[real]


def check_selection(min_pt, min_hits, min_track_hits=None, *,
                    names: tuple[str, str, str] = ("min_pt", "min_hits", "min_track_hits")) -> None:
    """Raise an :class:`InputError` unless the selection is one the metrics can apply: a
    finite ``min_pt`` of at least 0 GeV and hit counts that are whole numbers of at least 0
    (``min_track_hits`` may be None). ``names`` are what the message calls the three (the
    command-line tools pass their option names)."""
    if (isinstance(min_pt, bool) or not isinstance(min_pt, (int, float, np.integer, np.floating))
            or not math.isfinite(min_pt) or min_pt < 0):
        raise InputError(f"{names[0]} must be a finite transverse momentum >= 0 GeV, got {min_pt!r}")
    counts = [(names[1], min_hits)] + ([] if min_track_hits is None else [(names[2], min_track_hits)])
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            as_int = (f": give it as the int {int(value)}" if isinstance(value, (float, np.floating))
                      and float(value).is_integer() and value >= 0 else "")
            raise InputError(f"{name} must be a whole number of hits >= 0 (an int), got {value!r}{as_int}")


def track_metrics(
    hit_particle_ids,
    labels,
    *,
    particle_pt=None,
    min_pt: float = 0.0,
    min_hits: int = DEFAULT_MIN_HITS,
    min_track_hits: int | None = None,
    exclude_noise: bool = True,
) -> TrackMetrics:
    """Track efficiency (double majority), fake rate and duplicate rate of a labelling.

    ``hit_particle_ids[i]`` is the true particle of hit ``i`` (0 for noise) and ``labels[i]``
    its track label; both cover every hit of the event. ``particle_pt`` is a pair
    ``(particle ids, pT)`` covering every non-noise particle of the truth; it is needed
    only when ``min_pt > 0``. ``min_track_hits`` defaults to ``min_hits``. Definitions are
    in the module docstring.
    """
    pids = _integer_array(hit_particle_ids, "hit_particle_ids")
    labs = _integer_array(labels, "labels")
    if pids.shape != labs.shape:
        raise InputError(f"hit_particle_ids has {pids.size} hits but labels has {labs.size}")
    check_selection(min_pt, min_hits, min_track_hits)
    if min_pt > 0 and particle_pt is None:
        raise InputError(f"min_pt={min_pt} needs particle_pt, the pT of every particle")
    min_track_hits = int(min_hits if min_track_hits is None else min_track_hits)

    ov, found, candidate, matched_pairs = _matching(pids, labs, min_track_hits, exclude_noise)
    real = ov.particle_ids != 0
    reconstructable = real & (ov.particle_sizes >= min_hits)
    if min_pt > 0:
        pt = np.full(ov.particle_ids.size, np.inf)
        pt[real] = _particle_pt_lookup(ov.particle_ids[real], particle_pt)
        reconstructable &= pt >= min_pt
    num_reconstructable = int(np.count_nonzero(reconstructable))
    num_found = int(np.count_nonzero(found & reconstructable))
    num_candidates = int(np.count_nonzero(candidate))
    num_matched_tracks = int(np.count_nonzero(matched_pairs))
    tracks_per_particle = np.bincount(
        ov.particle[matched_pairs & reconstructable[ov.particle]], minlength=ov.particle_ids.size
    )
    num_duplicates = int(np.sum(np.maximum(tracks_per_particle - 1, 0)))
    return TrackMetrics(
        efficiency=_ratio(num_found, num_reconstructable),
        fake_rate=_ratio(num_candidates - num_matched_tracks, num_candidates),
        duplicate_rate=_ratio(num_duplicates, num_candidates),
        num_particles=int(np.count_nonzero(real)),
        num_reconstructable=num_reconstructable,
        num_matched=num_found,
        num_tracks=int(ov.track_labels.size),
        num_candidate_tracks=num_candidates,
        num_matched_tracks=num_matched_tracks,
        num_fake_tracks=num_candidates - num_matched_tracks,
        num_duplicate_tracks=num_duplicates,
        min_pt=float(min_pt),
        min_hits=int(min_hits),
        min_track_hits=min_track_hits,
        exclude_noise=bool(exclude_noise),
    )


# --------------------------------------------------------------------------- TrackML score


def align_labels(event_hit_ids, hit_ids, track_ids, *, source=None) -> np.ndarray:
    """The track id of every event hit, in the order of ``event_hit_ids`` (unique ids).

    ``hit_ids`` and ``track_ids`` are a labelling (one row per hit, TrackML submission
    format, rows in any order). Every hit of the event must be labelled exactly once: hits
    labelled twice, hit ids that are not in the event and event hits left unlabelled are
    all reported in one :class:`EventFormatError` (``source`` names the labelling's file).
    """
    event_ids = _integer_array(event_hit_ids, "event hit ids")
    ids = _integer_array(hit_ids, "hit_id")
    tracks = _integer_array(track_ids, "track_id")
    if ids.shape != tracks.shape:
        raise EventFormatError(f"{ids.size} hit ids but {tracks.size} track ids", path=source)
    if np.array_equal(ids, event_ids):
        return tracks
    label_order = np.argsort(ids)
    event_order = np.argsort(event_ids)
    if ids.size == event_ids.size and np.array_equal(ids[label_order], event_ids[event_order]):
        aligned = np.empty_like(tracks)
        aligned[event_order] = tracks[label_order]
        return aligned
    raise _alignment_error(np.sort(event_ids), ids[label_order], source)


def _alignment_error(event_sorted: np.ndarray, labelled_sorted: np.ndarray, source) -> EventFormatError:
    """The error listing what keeps a labelling (sorted hit ids) from covering the event (sorted ids) once."""
    problems = []
    repeated = np.unique(labelled_sorted[1:][labelled_sorted[1:] == labelled_sorted[:-1]])
    if repeated.size:
        problems.append(f"{repeated.size} hit id(s) labelled more than once: {id_listing(repeated)}")
    unknown = np.setdiff1d(labelled_sorted, event_sorted)
    if unknown.size:
        problems.append(f"{unknown.size} hit id(s) not in the event: {id_listing(unknown)}")
    missing = np.setdiff1d(event_sorted, labelled_sorted)
    if missing.size:
        problems.append(f"{missing.size} hit(s) of the event not labelled: {id_listing(missing)}")
    if not problems:
        repeated = np.unique(event_sorted[1:][event_sorted[1:] == event_sorted[:-1]])
        problems.append(f"the event's hit ids repeat ({id_listing(repeated)}), so labels cannot be matched to hits")
    return EventFormatError(
        "; ".join(problems) + ". Every hit of the event must be labelled exactly once "
        "(give noise hits a track id too, e.g. their own singleton tracks)",
        path=source,
    )


def _truth_columns(truth, names: tuple[str, ...], path=None) -> list[np.ndarray]:
    """The named columns of a truth table, or an error naming what is wrong with it (not a
    table; a missing column)."""
    if isinstance(truth, Event):
        raise InputError("truth must be the event's truth table (event.truth), got the Event itself")
    if not hasattr(truth, "__contains__") or not hasattr(truth, "__getitem__") or isinstance(truth, (str, bytes)):
        raise InputError(f"truth must be a table of columns (a mapping such as event.truth, or a pandas DataFrame) "
                         f"with {', '.join(names)}; got {type(truth).__name__}")
    for name in names:
        if name not in truth:
            raise EventFormatError(f"the truth table has no '{name}' column", path=path, column=name)
    columns = [np.asarray(truth[name]) for name in names]
    for name, column in zip(names, columns):
        if column.ndim != 1 or column.shape != columns[0].shape:
            raise EventFormatError(f"the truth table's '{name}' column has shape {list(column.shape)}, its "
                                   f"'{names[0]}' column {list(columns[0].shape)}: a table's columns are 1-D and "
                                   "of one length", path=path, column=name)
    return columns


def trackml_score(hit_ids, track_ids, truth) -> float:
    """The official TrackML score of a labelling (``hit_ids`` -> ``track_ids``) against ``truth``.

    ``truth`` is a table with ``hit_id``, ``particle_id`` and ``weight`` columns; every one
    of its hits must be labelled exactly once. The score is normalised by the total truth
    weight, as ``trackml.score.score_event`` does; ``nan`` when every weight is 0. The
    definition is in the module docstring.
    """
    truth_hit_ids, pids, weights = _truth_columns(truth, ("hit_id", "particle_id", "weight"))
    labels = align_labels(truth_hit_ids, hit_ids, track_ids)
    return _aligned_trackml_score(_integer_array(pids, "particle_id"), labels, weights)


def _aligned_trackml_score(pids: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """The TrackML score of per-hit particle ids, track labels and weights (same hit order)."""
    weights = np.asarray(weights, dtype=np.float64)
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise EventFormatError(
            f"weights must be finite and >= 0; {int(bad.sum())} are not, first {weights[first]}",
            column="weight",
            row=first + 1,
        )
    ov = _overlaps(pids, labels)
    good = ov.double_majority & (ov.particle_ids[ov.particle] != 0)
    # Exactly rounded sums over the hits: a perfect labelling scores exactly 1.
    return _ratio(math.fsum(weights[good[ov.hit_pair]].tolist()), math.fsum(weights.tolist()))


# --------------------------------------------------------------------------- events


def event_particle_pt(event: Event) -> tuple[np.ndarray, np.ndarray]:
    """``(particle ids, pT)`` of every non-noise particle in the event's truth.

    pT is ``hypot(px, py)`` from the particles table. A particle the table lacks (or every
    particle, when the event has no particles table) takes ``hypot(tpx, tpy)`` of its first
    hit in the truth, the hit closest to the origin (smallest ``tx^2 + ty^2 + tz^2``): the
    momentum there is the nearest the truth has to the production momentum.
    """
    if event.truth is None:
        raise EventFormatError("the event has no truth table", path=event.source)
    pids, tx, ty, tz, tpx, tpy = _truth_columns(
        event.truth, ("particle_id", "tx", "ty", "tz", "tpx", "tpy"), path=event.source
    )
    signal = np.flatnonzero(pids != 0)
    distance = tx[signal] ** 2 + ty[signal] ** 2 + tz[signal] ** 2
    order = signal[np.lexsort((distance, pids[signal]))]
    ids, first = np.unique(pids[order], return_index=True)
    pt = np.hypot(tpx[order[first]], tpy[order[first]]).astype(np.float64)
    particles = event.particles
    if particles is not None and table_length(particles):
        for name in ("particle_id", "px", "py"):
            if name not in particles:
                raise EventFormatError(f"the particles table has no '{name}' column", path=event.source, column=name)
        table_ids = np.asarray(particles["particle_id"], dtype=np.int64)
        table_pt = np.hypot(np.asarray(particles["px"], float), np.asarray(particles["py"], float))
        order = np.argsort(table_ids, kind="stable")
        where = np.searchsorted(table_ids[order], ids)
        known = where < table_ids.size
        known[known] = table_ids[order][where[known]] == ids[known]
        pt[known] = table_pt[order][where[known]]
    return ids, pt


def evaluate_event(
    event: Event,
    hit_ids,
    track_ids,
    *,
    min_pt: float = 0.0,
    min_hits: int = DEFAULT_MIN_HITS,
    min_track_hits: int | None = None,
    exclude_noise: bool = True,
    source=None,
) -> dict:
    """Every figure of a labelling (``hit_ids`` -> ``track_ids``) against the event's truth.

    Every hit of the event must be labelled exactly once (an :class:`EventFormatError`
    names the hits labelled twice, unknown or missing; ``source`` names the labelling's
    file). Returns a ``dict``: ``event_id``, ``num_hits``, ``num_noise_hits``, the
    :class:`TrackMetrics` fields and ``trackml_score``. Particle pT comes from
    :func:`event_particle_pt`.
    """
    check_selection(min_pt, min_hits, min_track_hits)  # before min_pt is compared with anything
    if not isinstance(event, Event):
        raise InputError(f"event must be an Event (trackserve.events.trackml.read_event), got {type(event).__name__}")
    if event.truth is None:
        prefix = Path(event.source).name if event.source else event.name  # the files' own prefix (event1000, say)
        raise EventFormatError(
            f"evaluation needs the event's truth file ({prefix}-truth.csv or .csv.gz) "
            "to know which particle made each hit; read the event with its truth",
            path=event.source,
        )
    _truth_columns(event.truth, ("hit_id", "particle_id", "weight"), path=event.source)
    hit_order_ids = np.asarray(event.hits["hit_id"], dtype=np.int64)
    labels = align_labels(hit_order_ids, hit_ids, track_ids, source=source)
    truth = truth_by_hit(event)
    pids = truth["particle_id"].astype(np.int64)
    tracks = track_metrics(
        pids,
        labels,
        particle_pt=event_particle_pt(event) if min_pt > 0 else None,
        min_pt=min_pt,
        min_hits=min_hits,
        min_track_hits=min_track_hits,
        exclude_noise=exclude_noise,
    )
    result = {
        "event_id": int(event.event_id),
        "num_hits": int(hit_order_ids.size),
        "num_noise_hits": int(np.count_nonzero(pids == 0)),
    }
    result.update(tracks.as_dict())
    result["trackml_score"] = _aligned_trackml_score(pids, labels, truth["weight"])
    return result


def figure_text(value, spec: str = ".4f") -> str:
    """A figure for the commands' tables, formatted by ``spec``, or ``n/a`` where it is undefined
    (None, or a NaN rate: no particle or no candidate track to count)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)

