"""Edges seen from their hits: which end is inner along the track, and each hit's best edge.

Shared by track building (best edges, gap filling: :mod:`trackserve.runtime.track_building`)
and piece joining (:mod:`trackserve.runtime.piece_joining`).
"""

from __future__ import annotations

import numpy as np

from .components import group_order


def oriented_ends(edge_index: np.ndarray, hit_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inner, outer)`` hit of each edge ``[2, M]``: inner has the smaller ``(hit_order, index)``."""
    first, second = edge_index
    swap = (hit_order[first] > hit_order[second]) | ((hit_order[first] == hit_order[second]) & (first > second))
    return np.where(swap, second, first), np.where(swap, first, second)


class HitGroups:
    """Edges grouped by one of their hits (``hits [M]``), each group in edge order, to pick
    each hit's best edge, among all edges or a subset."""

    def __init__(self, hits: np.ndarray, num_hits: int):
        self.hits = hits
        self.num_hits = num_hits
        self.order = group_order(hits, num_hits)
        sorted_hits = hits[self.order]
        starts = np.ones(hits.size, dtype=bool)
        np.not_equal(sorted_hits[1:], sorted_hits[:-1], out=starts[1:])
        self.group = np.cumsum(starts) - 1
        self.starts = np.flatnonzero(starts)

    def best(self, scores: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
        """Bool ``[M]``: whether an edge has the highest score of its hit's edges (of those in
        ``among``: the others count as ``-inf`` and are never chosen), the earliest such edge on ties."""
        best = np.zeros(self.hits.size, dtype=bool)
        if self.hits.size == 0:
            return best
        sorted_scores = scores[self.order]
        if among is not None:
            sorted_among = among[self.order]
            sorted_scores = np.where(sorted_among, sorted_scores, -np.inf)
        maxima = np.maximum.reduceat(sorted_scores, self.starts)
        at_maximum = sorted_scores == maxima[self.group]
        if among is not None:
            at_maximum &= sorted_among
        at_maximum = np.flatnonzero(at_maximum)
        first_at_maximum = np.ones(at_maximum.size, dtype=bool)
        np.not_equal(self.group[at_maximum[1:]], self.group[at_maximum[:-1]], out=first_at_maximum[1:])
        best[self.order[at_maximum[first_at_maximum]]] = True
        return best
