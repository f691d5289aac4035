"""Choosing a bundle's GNN cut for its track building on a validation event.

``trackserve train`` picks the GNN cut for the track building it was asked for. A bundle
whose track building changed afterwards (``trackserve rescale --track-building``) keeps a
cut chosen for the old method; :func:`tune_gnn_cut` chooses it again, by the trainer's
rule (the candidate cut with the highest track efficiency minus fake rate, double
majority, for particles above ``min_pt`` with at least ``min_hits`` hits; optionally only
among the cuts whose fake rate stays under a bound), running the
bundle's own networks once and only the track building per cut. With ``gap_cuts``
(track building ``best_edges`` only) every cut is also tried with each lower gap cut
(:func:`~trackserve.runtime.track_building.gap_edges`), and the best pair wins. Numpy,
scipy and ONNX Runtime only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..events.event import Event
from ..events.metrics import evaluate_event
from .track_building import build_tracks, hit_distances

#: The cuts tried, the trainer's (0.10, 0.15, ..., 0.95).
CANDIDATE_CUTS = tuple(round(0.05 * i, 2) for i in range(2, 20))
#: The gap cuts tried below each cut when gaps are filled (0.05, 0.10, ..., 0.90).
CANDIDATE_GAP_CUTS = tuple(round(0.05 * i, 2) for i in range(1, 19))


@dataclass(frozen=True)
class CutFigures:
    """Track figures of the validation event at one GNN cut (and gap cut; None: no gap filling)."""

    cut: float
    efficiency: float
    fake_rate: float
    duplicate_rate: float
    gap_cut: float | None = None

    @property
    def score(self) -> float:
        """The trainer's criterion: efficiency minus fake rate (NaN counts as 0)."""
        return float(np.nan_to_num(self.efficiency) - np.nan_to_num(self.fake_rate))


def tune_gnn_cut(pipeline, event: Event, *, method: str | None = None, min_pt: float = 1.0, min_hits: int = 5,
                 cuts=CANDIDATE_CUTS, gap_cuts=None, max_fake_rate: float | None = None
                 ) -> tuple[CutFigures, list[CutFigures]]:
    """The best of ``cuts`` for ``pipeline``'s bundle on ``event`` and the figures of every candidate.

    ``method``: the track building to tune for (default: the bundle's). ``event`` needs
    truth and particles. Each cut is tried without gap filling and, with ``gap_cuts``
    (``best_edges`` only), with each gap cut below it. With ``max_fake_rate`` only the
    candidates whose fake rate is at most that compete (an :class:`InputError` says when
    none is). Ties keep the smaller cut, then the higher gap cut (no gap filling first).
    Returns the chosen candidate's figures and all of them, in the order tried.
    """
    if max_fake_rate is not None and not 0.0 <= max_fake_rate <= 1.0:
        raise InputError(f"max_fake_rate must lie in [0, 1]; got {max_fake_rate}")
    if event.truth is None or event.particles is None:
        raise InputError(f"event {event.name}: tuning the GNN cut needs its truth and particles files")
    if not cuts:
        raise InputError("no candidate cuts given")
    bad = [cut for cut in (*cuts, *(gap_cuts or ())) if not 0.0 <= float(cut) <= 1.0]
    if bad:
        raise InputError(f"candidate cuts must lie in [0, 1]; got {bad}")
    method = method or pipeline.stages.track_building
    if gap_cuts and method != "best_edges":
        raise InputError(f"gap cuts fill gaps between best edges: tune them with track building 'best_edges', not {method!r}")
    features = pipeline.event_features(event)
    filtered, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
    logits = pipeline.classify_edges("gnn", features, filtered, chunked=False)
    bundle = pipeline.bundle
    order = hit_distances(features, bundle.feature_names, bundle.feature_scales) if method == "best_edges" else None
    hit_ids = event.hits["hit_id"]
    rows = []
    for cut in cuts:
        for gap_cut in (None, *sorted(float(g) for g in (gap_cuts or ()) if float(g) < float(cut))):
            labels = build_tracks(event.num_hits, filtered, logits, float(cut), method=method, hit_order=order,
                                  gap_cut=gap_cut)
            figures = evaluate_event(event, hit_ids, labels, min_pt=min_pt, min_hits=min_hits)
            rows.append(CutFigures(float(cut), figures["efficiency"], figures["fake_rate"], figures["duplicate_rate"],
                                   gap_cut))
    allowed = [row for row in rows if max_fake_rate is None or np.nan_to_num(row.fake_rate) <= max_fake_rate]
    if not allowed:
        lowest = min(rows, key=lambda row: np.nan_to_num(row.fake_rate))
        raise InputError(f"no candidate cut keeps the fake rate at or below {max_fake_rate:g} on {event.name} "
                         f"(lowest: {lowest.fake_rate:.4f} at cut {lowest.cut:g}"
                         + ("" if lowest.gap_cut is None else f", gap cut {lowest.gap_cut:g}") + ")")
    best = max(allowed, key=lambda row: (row.score, -row.cut, row.cut if row.gap_cut is None else row.gap_cut))
    return best, rows
