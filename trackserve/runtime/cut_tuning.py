"""Choosing a bundle's GNN cut for its track building on a validation event.

``trackserve train`` picks the GNN cut for the track building it was asked for. A bundle
whose track building changed afterwards (``trackserve rescale --track-building``) keeps a
cut chosen for the old method; :func:`tune_gnn_cut` chooses it again, by the trainer's
rule (the candidate cut with the highest track efficiency minus fake rate, double
majority, for particles above ``min_pt`` with at least ``min_hits`` hits; optionally only
among the cuts whose fake rate stays under a bound; refused by
:func:`check_counted_particles` when no validation event has such a particle), running the
bundle's own networks once per validation event and only the track building per cut. With
several validation events the criterion is the mean over the events, and a fake-rate
bound must hold on each of them. With ``gap_cuts``
(track building ``best_edges`` only) every cut is also tried with each lower gap cut
(:func:`~trackserve.runtime.track_building.gap_edges`), and the best pair wins.
:func:`tune_piece_joining` then chooses, at a cut and gap cut, the piece-joining settings
(:mod:`~trackserve.runtime.piece_joining`) by the same rule among
:data:`CANDIDATE_JOINS` and no joining at all, and :func:`tune_cuts_and_joining` does
that at several of the best cut and gap-cut pairs and keeps the best of all. A
:class:`ValidationSet` runs the networks on the events once for all of them. Numpy,
scipy and ONNX Runtime only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..bundle import JoinSettings
from ..errors import InputError
from ..events.event import Event
from ..events.metrics import evaluate_event, event_particle_pt
from .cuts import not_below_prune_cut
from .piece_joining import POSITION_COLUMNS, hit_positions
from .track_building import build_tracks, hit_distances

#: The cuts tried, the trainer's (0.10, 0.15, ..., 0.95).
CANDIDATE_CUTS = tuple(round(0.05 * i, 2) for i in range(2, 20))
#: The gap cuts tried below each cut when gaps are filled (0.05, 0.10, ..., 0.90).
CANDIDATE_GAP_CUTS = tuple(round(0.05 * i, 2) for i in range(1, 19))
#: The values of each piece-joining setting tried: candidate edges above 0.01 or 0.1,
#: tolerances of 2, 5 or 10 mm across and 10 or 30 mm along the beam, lone hits never
#: attached or within a quarter or a half of the tolerances, 1 or 3 rounds.
CANDIDATE_JOIN_GRID = {"min_score": (0.01, 0.1), "transverse_mm": (2.0, 5.0, 10.0), "z_mm": (10.0, 30.0),
                       "single_hit_scale": (0.0, 0.25, 0.5), "rounds": (1, 3)}
#: Every combination of :data:`CANDIDATE_JOIN_GRID` (72 settings), the last setting varying fastest.
CANDIDATE_JOINS = tuple(JoinSettings(**dict(zip(CANDIDATE_JOIN_GRID, values)))
                        for values in itertools.product(*CANDIDATE_JOIN_GRID.values()))


@dataclass(frozen=True)
class CutFigures:
    """Track figures at one GNN cut (and gap cut; None: no gap filling), averaged over the
    validation events (NaN where no event could count them); ``fake_rates`` per event."""

    cut: float
    efficiency: float
    fake_rate: float
    duplicate_rate: float
    gap_cut: float | None = None
    fake_rates: tuple[float, ...] = ()
    join: JoinSettings | None = None

    @property
    def score(self) -> float:
        """The trainer's criterion: efficiency minus fake rate (NaN counts as 0)."""
        return float(np.nan_to_num(self.efficiency) - np.nan_to_num(self.fake_rate))

    @property
    def builds_tracks(self) -> bool:
        """Whether these settings build a candidate track on some validation event (where they
        build none, the fake rate is undefined: NaN; the mean is over the others)."""
        rates = self.fake_rates or (self.fake_rate,)
        return any(rate == rate for rate in rates)

    @property
    def preference(self) -> tuple:
        """The order candidates are chosen in: those that build tracks first (settings that
        build none on any event would otherwise win with a score of 0 wherever every other
        one has more fakes than efficiency), then the higher score, the smaller cut,
        the higher gap cut (no gap filling counts as a gap cut equal to the cut), no joining."""
        return (self.builds_tracks, self.score, -self.cut, self.cut if self.gap_cut is None else self.gap_cut,
                self.join is None)

    @property
    def worst_fake_rate(self) -> float:
        """The highest fake rate of the validation events where one is defined (NaN when these
        settings build no track on any event: no fake-rate bound can then be said to hold)."""
        finite = [rate for rate in (self.fake_rates or (self.fake_rate,)) if rate == rate]
        return float(max(finite)) if finite else float("nan")


def _mean(values: list[float]) -> float:
    finite = [value for value in values if value == value]
    return float(np.mean(finite)) if finite else float("nan")


class ValidationSet:
    """Validation events with the bundle's networks run on them once: for each event its
    filtered edges, GNN logits, hit order (``best_edges``) and hit positions (when the
    features have r, phi and z), ready for trying track-building settings.

    Every event needs truth and particles (:class:`InputError` otherwise, or when there
    is no event).
    """

    def __init__(self, pipeline, events: Event | Sequence[Event], method: str | None = None):
        events = [events] if isinstance(events, Event) else list(events)
        if not events:
            raise InputError("no validation event given")
        # In hit_id order, as the networks were trained (an event built in memory may not be).
        events = [event.in_hit_id_order() if isinstance(event, Event) else event for event in events]
        check_truth(events)
        self.events = events
        self.method = method or pipeline.stages.track_building
        self.scored = [_scored_event(pipeline, event, self.method) for event in events]

    def figures(self, cut: float, gap_cut: float | None = None, join: JoinSettings | None = None, *,
                min_pt: float = 1.0, min_hits: int = 5) -> CutFigures:
        """The track figures of these settings, averaged over the events (fake rates per event kept)."""
        figures = []
        for event, (filtered, logits, order, positions) in zip(self.events, self.scored):
            if join is not None and positions is None:
                raise InputError(f"joining track pieces needs the features {', '.join(POSITION_COLUMNS)}")
            labels = build_tracks(event.num_hits, filtered, logits, float(cut), method=self.method, hit_order=order,
                                  gap_cut=gap_cut, join=join, positions=positions)
            figures.append(evaluate_event(event, event.hits["hit_id"], labels, min_pt=min_pt, min_hits=min_hits))
        return CutFigures(
            float(cut), *(_mean([f[key] for f in figures]) for key in ("efficiency", "fake_rate", "duplicate_rate")),
            gap_cut, tuple(float(f["fake_rate"]) for f in figures), join)


def tune_gnn_cut(pipeline, events: Event | Sequence[Event] | ValidationSet, *, method: str | None = None,
                 min_pt: float = 1.0, min_hits: int = 5, cuts=CANDIDATE_CUTS, gap_cuts=None,
                 max_fake_rate: float | None = None) -> tuple[CutFigures, list[CutFigures]]:
    """The best of ``cuts`` for ``pipeline``'s bundle on the validation ``events`` (one or
    several, or a :class:`ValidationSet` of them) and the figures of every candidate.

    ``method``: the track building to tune for (default: the bundle's, or the validation
    set's). Every event needs truth and particles. Each cut is tried without gap filling
    and, with ``gap_cuts`` (``best_edges`` only), with each gap cut below it; no candidate
    joins pieces. The criterion is the mean over the events of efficiency minus fake rate;
    with ``max_fake_rate`` only the candidates whose fake rate is at most that on every
    event compete (an :class:`InputError` says when none is). Ties keep the smaller cut,
    then the higher gap cut (no gap filling first). Candidates below a bundle's
    ``prune_cut`` are left out. Validation events with no particle the selection counts
    are refused (:func:`check_counted_particles`). Returns the chosen candidate's figures
    and all of them, in the order tried.
    """
    _check_bound(max_fake_rate)
    if not cuts:
        raise InputError("no candidate cuts given")
    bad = [cut for cut in (*cuts, *(gap_cuts or ())) if not 0.0 <= float(cut) <= 1.0]
    if bad:
        raise InputError(f"candidate cuts must lie in [0, 1]; got {bad}")
    prune_cut = pipeline.stages.prune_cut
    if prune_cut is not None:
        cuts = not_below_prune_cut(cuts, prune_cut)
        gap_cuts = None if gap_cuts is None else not_below_prune_cut(gap_cuts, prune_cut)
        if not cuts:
            raise InputError(f"every candidate cut lies below the bundle's pruning cut {prune_cut:g}")
    validation = _validation_set(pipeline, events, method)
    check_counted_particles(validation.events, min_pt=min_pt, min_hits=min_hits)
    if gap_cuts and validation.method != "best_edges":
        raise InputError(f"gap cuts fill gaps between best edges: tune them with track building 'best_edges', "
                         f"not {validation.method!r}")
    rows = [validation.figures(cut, gap_cut, min_pt=min_pt, min_hits=min_hits)
            for cut in cuts
            for gap_cut in (None, *sorted(float(g) for g in (gap_cuts or ()) if float(g) < float(cut)))]
    return _best(rows, max_fake_rate, validation, "cut"), rows


def tune_piece_joining(pipeline, events: Event | Sequence[Event] | ValidationSet, *, cut: float,
                       gap_cut: float | None = None, candidates=CANDIDATE_JOINS, min_pt: float = 1.0,
                       min_hits: int = 5, max_fake_rate: float | None = None) -> tuple[CutFigures, list[CutFigures]]:
    """The best piece-joining settings (or none) at ``cut`` and ``gap_cut`` on the validation
    ``events``, by :func:`tune_gnn_cut`'s rule, and the figures of every candidate (no
    joining first, then ``candidates`` in order). Track building ``best_edges`` only; the
    features need r, phi and z. Ties keep no joining, then the earlier candidate. Settings
    whose ``min_score`` lies below a bundle's ``prune_cut`` are left out."""
    _check_bound(max_fake_rate)
    validation = events if isinstance(events, ValidationSet) else ValidationSet(pipeline, events, "best_edges")
    if validation.method != "best_edges":
        raise InputError(f"joining track pieces needs track building 'best_edges', not {validation.method!r}")
    names = list(pipeline.bundle.feature_names)
    if not set(POSITION_COLUMNS) <= set(names):
        raise InputError(f"joining track pieces needs the features {', '.join(POSITION_COLUMNS)}; "
                         f"this bundle's features are {names}")
    if not candidates:
        raise InputError("no candidate piece-joining settings given")
    candidates = joins_at_or_above_prune_cut(candidates, pipeline.stages.prune_cut)
    check_counted_particles(validation.events, min_pt=min_pt, min_hits=min_hits)
    rows = [validation.figures(cut, gap_cut, join, min_pt=min_pt, min_hits=min_hits) for join in (None, *candidates)]
    return _best(rows, max_fake_rate, validation, "setting"), rows


def joins_at_or_above_prune_cut(candidates, prune_cut: float | None) -> list[JoinSettings]:
    """The piece-joining ``candidates`` whose ``min_score`` is at or above a bundle's
    ``prune_cut`` (a pruned edge keeps a score at most that cut, so no joining may count
    on it); an InputError when none is, so that joining is never said to be tuned with
    no setting tried."""
    kept = not_below_prune_cut(candidates, prune_cut, key=lambda join: join.min_score)
    if candidates and not kept:
        scores = sorted({join.min_score for join in candidates})
        raise InputError(f"every candidate piece-joining setting takes edges above {', '.join(f'{v:g}' for v in scores)}, "
                         f"below the bundle's pruning cut {prune_cut:g} (a pruned edge keeps its pruner score, at most "
                         "that cut): no joining setting can be tried on this bundle")
    return kept


def best_rows(rows: list[CutFigures], count: int, max_fake_rate: float | None = None) -> list[CutFigures]:
    """The ``count`` best of ``rows`` by the tuning rule (highest :attr:`CutFigures.preference`
    first), only those whose fake rate is at most ``max_fake_rate`` on every event when given:
    the cut and gap-cut pairs :func:`tune_cuts_and_joining` tries the joining settings at."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"the number of cut pairs to try joining at must be an integer >= 1; got {count!r}")
    _check_bound(max_fake_rate)
    allowed = [row for row in rows if max_fake_rate is None or row.worst_fake_rate <= max_fake_rate]
    return sorted(allowed, key=lambda row: row.preference, reverse=True)[:count]


def tune_cuts_and_joining(pipeline, validation: ValidationSet, cut_rows: list[CutFigures], *, pairs: int = 1,
                          candidates=CANDIDATE_JOINS, min_pt: float = 1.0, min_hits: int = 5,
                          max_fake_rate: float | None = None) -> tuple[CutFigures, list[tuple[CutFigures, list[CutFigures]]]]:
    """Piece joining tried at the ``pairs`` best cut and gap-cut pairs of ``cut_rows`` (the
    rows of :func:`tune_gnn_cut` on ``validation``), and the best of all: joining raises the
    fake rate, so the best pair without joining is not always the best with it (a pair
    with more room under ``max_fake_rate`` can take a joining setting that adds more).
    Returns the chosen figures and, for each pair tried (best first), what
    :func:`tune_piece_joining` returns there: the pair's best and its rows (no joining
    first). Ties keep the earlier pair."""
    if not cut_rows:
        raise InputError("no cut and gap-cut rows given to try piece joining at")
    tried = best_rows(cut_rows, pairs, max_fake_rate)
    if not tried:
        _best(cut_rows, max_fake_rate, validation, "cut")  # raises tune_gnn_cut's error: no row keeps the bound
    tables = [tune_piece_joining(pipeline, validation, cut=row.cut, gap_cut=row.gap_cut, candidates=candidates,
                                 min_pt=min_pt, min_hits=min_hits, max_fake_rate=max_fake_rate) for row in tried]
    top = max((best.builds_tracks, best.score) for best, _ in tables)
    return next(best for best, _ in tables if (best.builds_tracks, best.score) == top), tables


def check_truth(events: Sequence[Event], needed_for: str = "tuning the GNN cut") -> None:
    """Raise an :class:`InputError` naming the first event of ``events`` without its truth or
    particles table: counting particles (``needed_for`` says for what) needs both."""
    for event in events:
        missing = [part for part, table in (("truth", event.truth), ("particles", event.particles)) if table is None]
        if missing:
            source = f" ({event.source})" if event.source else ""
            raise InputError(f"event {event.name}{source}: {needed_for} needs its truth and particles files, and it has "
                             f"no {' and no '.join(missing)} file")


def check_counted_particles(events: Sequence[Event], *, min_pt: float, min_hits: int,
                            names: tuple[str, str] | None = ("min_pt", "min_hits"), advice: str | None = None,
                            needed_for: str = "tuning the GNN cut") -> None:
    """Raise an :class:`InputError` when an event of ``events`` lacks its truth or particles
    (:func:`check_truth`), or when no event holds a particle
    the selection counts (pT >= ``min_pt``, >= ``min_hits`` hits): the efficiency is then
    NaN at every cut and the choice meaningless. The message says why (no hits, only noise,
    or which bound no particle reaches, with the most the particles have) and which bound
    to lower; ``names`` are what it calls ``min_pt`` and ``min_hits`` (the command's
    options). Where no option sets the bounds, ``names`` None leaves them unnamed and
    ``advice`` replaces the advice; ``needed_for`` says what needs the truth (for the message
    when an event lacks it). The check reads the truth only: it can run before the
    networks do."""
    if not events:
        raise InputError("no validation event given")
    check_truth(events, needed_for)
    summaries = [_particle_hits_and_pt(event, min_pt) for event in events]
    hits = np.concatenate([np.zeros(0, np.int64), *(hits for hits, _ in summaries)])
    pt = np.concatenate([np.zeros(0), *(pt for _, pt in summaries)])
    if np.any((hits >= min_hits) & (pt >= min_pt)):
        return
    several = len(events) > 1
    where = f"the {len(events)} validation events" if several else f"the validation event {events[0].name}"
    selection = (f"pT >= {min_pt:g} GeV and >= {min_hits} hits" if names is None else
                 f"pT >= {min_pt:g} GeV ({names[0]}) and >= {min_hits} hits ({names[1]})")
    if sum(int(event.num_hits) for event in events) == 0:
        reason, advised = "no hits", "give validation events with hits"
    elif hits.size == 0:
        reason, advised = "only noise hits (particle_id 0 in the truth)", "give validation events with particles"
    else:
        reason, advised = _unreached_bounds(hits, pt, min_pt=min_pt, min_hits=min_hits,
                                            names=names or ("min_pt", "min_hits"))
    advice = advice or advised
    raise InputError(f"{where} {'have' if several else 'has'} no particle with {selection} to count: "
                     f"{'they have' if several else 'it has'} {reason}; {advice}, so that the efficiency can be "
                     "measured")


def _particle_hits_and_pt(event: Event, min_pt: float) -> tuple[np.ndarray, np.ndarray]:
    """The number of hits and the pT of each particle (non-zero id) of the event's truth, as
    :func:`~trackserve.events.metrics.track_metrics` counts them (pT infinite when
    ``min_pt`` is 0: no bound on it)."""
    pids = np.asarray(event.truth["particle_id"], dtype=np.int64)
    ids, hits = np.unique(pids[pids != 0], return_counts=True)
    pt = event_particle_pt(event)[1] if min_pt > 0 else np.full(ids.size, np.inf)
    return hits, pt


def _unreached_bounds(hits: np.ndarray, pt: np.ndarray, *, min_pt: float, min_hits: int,
                      names: tuple[str, str]) -> tuple[str, str]:
    """Why none of these particles (``hits`` and ``pt`` of each, at least one) is counted,
    and which of the bounds (``names``) to lower."""
    many, fast = int(np.count_nonzero(hits >= min_hits)), int(np.count_nonzero(pt >= min_pt))
    parts = [f"{many} with >= {min_hits} hits" if many else f"none with >= {min_hits} hits (the most: {hits.max()})"]
    if min_pt > 0:
        parts.append(f"{fast} with pT >= {min_pt:g} GeV" if fast
                     else f"none with pT >= {min_pt:g} GeV (the highest: {pt.max():.3g} GeV)")
    reason = f"{hits.size} particle{'s' if hits.size != 1 else ''}, " + " and ".join(parts)
    if many and fast:
        return reason + ", but none with both", f"lower {names[0]} or {names[1]}"
    unreached = [name for name, count in ((names[0], fast), (names[1], many)) if not count]
    return reason, f"lower {' and '.join(unreached)}"


def _check_bound(max_fake_rate: float | None) -> None:
    if max_fake_rate is not None and not 0.0 <= max_fake_rate <= 1.0:
        raise InputError(f"max_fake_rate must lie in [0, 1]; got {max_fake_rate}")


def _validation_set(pipeline, events, method: str | None) -> ValidationSet:
    if isinstance(events, ValidationSet):
        if method is not None and method != events.method:
            raise InputError(f"this validation set was scored for track building {events.method!r}, not {method!r}")
        return events
    return ValidationSet(pipeline, events, method)


def _best(rows: list[CutFigures], max_fake_rate: float | None, validation: ValidationSet, what: str) -> CutFigures:
    allowed = [row for row in rows if max_fake_rate is None or row.worst_fake_rate <= max_fake_rate]
    if not allowed and not any(row.builds_tracks for row in rows):
        events = validation.events
        where = events[0].name if len(events) == 1 else f"any of {len(events)} validation events"
        raise InputError(f"no candidate {what} builds a single track that counts (of at least the hits --min-hits "
                         f"asks for) on {where}, so no fake rate can be held to {max_fake_rate:g}: the bundle's GNN "
                         "passes too few of their edges at every cut, or the hit bound is above their tracks' length; "
                         "check the bundle (trackserve run on these events) and the selection")
    if not allowed:
        lowest = min(rows, key=lambda row: row.worst_fake_rate if row.worst_fake_rate == row.worst_fake_rate
                      else float("inf"))
        events = validation.events
        where = events[0].name if len(events) == 1 else f"every one of {len(events)} validation events"
        raise InputError(f"no candidate {what} keeps the fake rate at or below {max_fake_rate:g} on {where} "
                         f"(lowest: {lowest.worst_fake_rate:.4f} at cut {lowest.cut:g}"
                         + ("" if lowest.gap_cut is None else f", gap cut {lowest.gap_cut:g}")
                         + ("" if lowest.join is None else f", {lowest.join.describe()}") + ")")
    return max(allowed, key=lambda row: row.preference)


def _scored_event(pipeline, event: Event, method: str):
    """``(filtered edges, GNN logits, hit order or None, positions or None)`` of one validation event."""
    features = pipeline.event_features(event)
    filtered, logits = pipeline.scored_edges(features)  # with the pipeline's vertex shifts, if it has some
    bundle = pipeline.bundle
    names = list(bundle.feature_names)
    order = hit_distances(features, names, bundle.feature_scales) if method == "best_edges" else None
    positions = (hit_positions(features, names, bundle.feature_scales)
                 if method == "best_edges" and set(POSITION_COLUMNS) <= set(names) else None)
    return filtered, logits, order, positions
