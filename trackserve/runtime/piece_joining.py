"""Joining track pieces that fit one trajectory: the last step of ``best_edges`` track building.

Where the GNN scores one true edge of a track below the cuts, best edges and gap filling
leave the track in pieces, and a double-majority track is lost when no piece holds more
than half of its hits. Most of those weak edges still join the outer end of one piece to
the inner end of the next; what tells the true ones from the many wrong ones is whether
the two pieces lie on one trajectory. :func:`join_pieces` checks exactly that, in the
cylindrical coordinates of the hits (``r`` and ``z`` in mm, ``phi`` in rad):

1. Every piece (a track of the labels given) is ordered by ``hit_order`` (the hit's
   distance from the origin; ties by hit index): its *inner end* is its first hit, its
   *outer end* its last. A piece of at least two hits at more than one radius gets
   least-squares lines ``phi(r)`` (unwrapped around its inner end's azimuth) and
   ``z(r)``: over the short span of a piece a helix from the beam line is close to both.
2. A *candidate* is an edge of the graph whose score passes ``min_score`` and whose
   inner hit is the outer end of one piece and whose outer hit the inner end of another.
3. Its *residual*: a fitted piece predicts the other piece's end hit at that hit's
   radius; the miss is ``|dphi| * r`` across and ``|dz|`` along the beam, each divided
   by its tolerance (``transverse_mm``, ``z_mm``), the larger of the two counting. With
   both pieces fitted, the larger of their two residuals; with one piece a single hit
   and the other at least :data:`MIN_HITS_TO_ATTACH` hits, the fitted piece's residual
   divided by ``single_hit_scale`` (tighter tolerances: a lone hit says nothing about
   its direction; 0 never attaches one); otherwise the candidate is dropped.
4. A candidate with residual below 1 joins its two pieces when it has the lowest
   residual of the candidates at both of its ends (ties: the earlier edge), so each end
   joins at most one other piece and a track never branches.

This repeats ``rounds`` times (pieces joined in one round are fitted as one in the
next) or until a round joins nothing. The settings are a bundle's optional
``stages.join_pieces`` (:class:`JoinSettings`), chosen on validation events by
``trackserve tune-cut --join-pieces``.
"""

from __future__ import annotations

import numpy as np

from trackserve.bundle import JOIN_FIELDS, JoinSettings
from trackserve.errors import InputError

from .components import compact_in_order
from .cuts import logit_threshold
from .hit_edges import oriented_ends
from .inputs import scaled_columns, unmasked, validate_edges, validate_per_hit, validate_scores

__all__ = ["JOIN_FIELDS", "JoinSettings", "MIN_HITS_TO_ATTACH", "POSITION_COLUMNS", "hit_positions", "join_pieces"]

#: The fewest hits a piece needs to have a lone hit attached to one of its ends.
MIN_HITS_TO_ATTACH = 3
#: The names of the position columns :func:`join_pieces` reads, in order.
POSITION_COLUMNS = ("r", "phi", "z")


def hit_positions(features: np.ndarray, names, scales) -> np.ndarray:
    """``[N, 3]`` float64 ``(r mm, phi rad, z mm)`` of each hit from its ``r``, ``phi`` and ``z``
    features (a column's value times its scale is the quantity). Raises InputError when
    the features lack one of them."""
    return np.stack(scaled_columns(features, names, scales, POSITION_COLUMNS, "joining track pieces"), axis=1)


def join_pieces(labels: np.ndarray, edge_index: np.ndarray, scores: np.ndarray, positions: np.ndarray,
                hit_order: np.ndarray, settings: JoinSettings, *, scores_are_logits: bool = True) -> np.ndarray:
    """Labels ``[N]`` after joining the pieces of ``labels`` that fit one trajectory.

    ``labels``: int ``[N]`` in ``0 .. T-1`` (every value used); ``edge_index`` int64 ``[2, M]``
    valid hit indices; ``scores [M]`` without NaN (logits, or probabilities with
    ``scores_are_logits=False``); ``positions [N, 3]`` finite ``(r, phi, z)``
    (:func:`hit_positions`); ``hit_order [N]`` finite. Returns int64 labels, compact and
    numbered in order of each track's smallest hit index. See the module docstring.
    """
    if not isinstance(settings, JoinSettings):
        raise InputError(f"settings must be JoinSettings (trackserve.bundle.JoinSettings; from a mapping: "
                         f"JoinSettings.from_mapping(...)); got {type(settings).__name__}")
    labels = np.asarray(unmasked(labels, "labels"))
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise InputError(f"labels must be a 1-D array of integers >= 0; got {labels.dtype} {labels.shape}")
    num_hits = labels.shape[0]
    if num_hits and labels.max() >= num_hits:
        raise InputError(f"labels must number the tracks 0..T-1 with T at most the {num_hits} hits; got label "
                         f"{int(labels.max())} (compact them first: trackserve.runtime.components.compact_in_order)")
    labels = labels.astype(np.int64)  # a copy: what is returned is never the caller's array
    edge_index = validate_edges(edge_index, num_hits)
    values = validate_scores(scores, edge_index.shape[1], scores_are_logits).astype(np.float64, copy=False)
    hit_order = validate_per_hit(hit_order, "hit_order", (num_hits,))
    positions = validate_per_hit(positions, "positions", (num_hits, 3), " (r, phi, z per hit)")
    candidates = np.flatnonzero(values > logit_threshold(settings.min_score, scores_are_logits))
    if num_hits == 0 or candidates.size == 0:
        return compact_in_order(labels)
    inner, outer = oriented_ends(edge_index[:, candidates], hit_order)
    pieces = _Pieces(labels, hit_order, positions)
    for _ in range(settings.rounds):
        # A candidate that does not join two ends now never will: joined pieces stay
        # joined, and an end that joins another piece is an end no more.
        inner, outer = pieces.end_to_end(inner, outer)
        if inner.size == 0:
            break
        low, high = pieces.joins(inner, outer, settings)
        if low.size == 0:
            break
        pieces.join(low, high)
    return compact_in_order(pieces.labels)


def _chain_heads(count: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """For ``count`` pieces joined ``low[i] -> high[i]``, the first piece of each one's chain.

    Each piece is ``high`` of at most one join (one candidate per inner end) and ``low`` of
    at most one (one per outer end), and a join goes outward (the inner end of ``high``
    lies beyond the outer end of ``low`` along the tracks), so the joins form chains
    without cycles: pointer jumping finds every chain's head in log(length) steps.
    """
    head = np.arange(count, dtype=np.int64)
    head[high] = low
    while True:
        further = head[head]
        if np.array_equal(further, head):
            return head
        head = further


class _Pieces:
    """The pieces of one labelling: their ends, sizes and fitted lines, updated as pieces join.

    A piece is numbered by a label of the first labelling; after joins, every hit carries
    the number of the first (innermost) piece of its chain.
    """

    def __init__(self, labels: np.ndarray, hit_order: np.ndarray, positions: np.ndarray):
        num_hits = labels.shape[0]
        self.labels = labels
        self.count = int(labels.max()) + 1
        # the hits grouped by piece, each piece's hits in order along the track (ties by hit index)
        by_order = np.argsort(hit_order, kind="stable")
        by_piece = by_order[np.argsort(labels[by_order], kind="stable")]
        sorted_labels = labels[by_piece]
        starts = np.ones(num_hits, dtype=bool)
        np.not_equal(sorted_labels[1:], sorted_labels[:-1], out=starts[1:])
        ends = np.ones(num_hits, dtype=bool)
        ends[:-1] = starts[1:]
        self.inner_end = np.full(self.count, -1, dtype=np.int64)
        self.outer_end = np.full(self.count, -1, dtype=np.int64)
        self.inner_end[sorted_labels[starts]] = by_piece[starts]
        self.outer_end[sorted_labels[ends]] = by_piece[ends]
        self.r, self.phi, self.z = positions.T
        self._fit()

    def _fit(self) -> None:
        """Each piece's size and least-squares lines phi(r) (around its inner end's azimuth) and z(r)."""
        labels, r, phi, z = self.labels, self.r, self.phi, self.z
        self.size = np.bincount(labels, minlength=self.count)
        self.reference = phi[self.inner_end]
        turned = _wrapped(phi - self.reference[labels])
        sums = [np.bincount(labels, weights=v, minlength=self.count) for v in (r, r * r, turned, r * turned, z, r * z)]
        sum_r, sum_rr, sum_phi, sum_r_phi, sum_z, sum_r_z = sums
        denominator = self.size * sum_rr - sum_r * sum_r
        self.fitted = (self.size >= 2) & (denominator > 1e-9 * np.maximum(self.size * sum_rr, 1.0))
        safe = np.where(self.fitted, denominator, 1.0)
        size = np.maximum(self.size, 1)
        self.phi_slope = (self.size * sum_r_phi - sum_r * sum_phi) / safe
        self.phi_at_zero = (sum_phi - self.phi_slope * sum_r) / size
        self.z_slope = (self.size * sum_r_z - sum_r * sum_z) / safe
        self.z_at_zero = (sum_z - self.z_slope * sum_r) / size

    def end_to_end(self, inner: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates ``inner -> outer`` (in their order) whose inner hit is the outer end of
        one piece and whose outer hit the inner end of another."""
        low, high = self.labels[inner], self.labels[outer]
        usable = (self.outer_end[low] == inner) & (self.inner_end[high] == outer) & (low != high)
        return inner[usable], outer[usable]

    def residual(self, piece: np.ndarray, hit: np.ndarray, settings: JoinSettings) -> np.ndarray:
        """How far ``hit`` lies from the lines of ``piece``, in tolerances (inf where unfitted)."""
        r = self.r[hit]
        across = np.abs(_wrapped(self.phi[hit] - self.reference[piece] - self.phi_at_zero[piece]
                                 - self.phi_slope[piece] * r)) * r
        along = np.abs(self.z[hit] - self.z_at_zero[piece] - self.z_slope[piece] * r)
        miss = np.maximum(across / settings.transverse_mm, along / settings.z_mm)
        return np.where(self.fitted[piece], miss, np.inf)

    def joins(self, inner: np.ndarray, outer: np.ndarray, settings: JoinSettings) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)``: the pieces to join this round, ``low[i]``'s outer end to ``high[i]``'s
        inner end, from the end-to-end candidate edges ``inner -> outer`` (:meth:`end_to_end`)."""
        labels = self.labels
        low, high = labels[inner], labels[outer]
        from_low = self.residual(low, outer, settings)
        from_high = self.residual(high, inner, settings)
        both = self.fitted[low] & self.fitted[high]
        residual = np.full(inner.size, np.inf)
        residual[both] = np.maximum(from_low, from_high)[both]
        if settings.single_hit_scale > 0:
            lone_high = (self.size[high] == 1) & (self.size[low] >= MIN_HITS_TO_ATTACH) & self.fitted[low]
            lone_low = (self.size[low] == 1) & (self.size[high] >= MIN_HITS_TO_ATTACH) & self.fitted[high]
            residual[lone_high] = from_low[lone_high] / settings.single_hit_scale
            residual[lone_low] = from_high[lone_low] / settings.single_hit_scale
        passing = np.flatnonzero(residual < 1.0)
        if passing.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        # each end's closest candidate, the earliest on ties: the first of its hit's
        # candidates in the order (residual, candidate)
        rank = np.empty(passing.size, dtype=np.int64)
        rank[np.argsort(residual[passing], kind="stable")] = np.arange(passing.size)
        inner, outer = inner[passing], outer[passing]
        chosen = np.ones(passing.size, dtype=bool)
        for ends in (inner, outer):
            first_rank = np.full(labels.shape[0], passing.size, dtype=np.int64)
            np.minimum.at(first_rank, ends, rank)
            chosen &= first_rank[ends] == rank
        return low[passing][chosen], high[passing][chosen]

    def join(self, low: np.ndarray, high: np.ndarray) -> None:
        """Join each piece ``low[i]``'s outer end to ``high[i]``'s inner end (from :meth:`joins`)."""
        head = _chain_heads(self.count, low, high)
        # A chain's inner end is its head's; its outer end is that of its last piece, the
        # one joined to an inner piece and to no outer one.
        joins_outward = np.zeros(self.count, dtype=bool)
        joins_outward[low] = True
        last = high[~joins_outward[high]]
        self.outer_end[head[last]] = self.outer_end[last]
        self.labels = head[self.labels]
        self._fit()


def _wrapped(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped into ``[-pi, pi)``."""
    return np.remainder(angle + np.pi, 2.0 * np.pi) - np.pi
