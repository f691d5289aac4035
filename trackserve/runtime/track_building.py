"""Track building on the CPU: connected components of the edges the GNN keeps.

An edge is kept when its score passes the cut strictly, ``sigmoid(score) > cut`` as in
the published ExaTrkX service. With logits this is decided as ``score > logit(cut)``
in float64 (no sigmoid is evaluated, so nothing saturates; the same decision as the
exact one except for a score within about 1e-16 of ``logit(cut)``, the float64 rounding
of that threshold): at ``cut = 0`` every finite logit passes and ``-inf`` does not, at
``cut = 1`` nothing passes. With probabilities it is ``score > cut``.

Two methods (the bundle's ``track_building`` stage parameter):

* ``"components"``: connected components of every edge that passes the cut.
* ``"best_edges"``: first orient each passing edge from its inner to its outer hit (by
  ``hit_order``, the hit's distance from the origin; ties by hit index), then keep an edge
  only when it is the highest-scoring outward edge of its inner hit or the highest-scoring
  inward edge of its outer hit (ties: the earlier edge), then connected components. A
  track is a chain, so each hit needs at most one good edge on each side; a wrong edge
  that scores below a hit's best ones can no longer merge two tracks, which is what costs
  plain components most of their fakes in dense events.

  With a *gap cut* (the bundle's optional ``gap_cut``, below ``cut``), the gaps the cut
  leaves are then filled by weaker edges (:func:`gap_edges`): an edge passing the gap cut
  whose inner hit has no kept outward edge and whose outer hit has no kept inward edge is
  kept when it is the best such edge of both of its hits. It attaches a hit the cut left
  alone to the free end of a track piece, or joins two pieces end to start, and never
  gives a hit a second edge on the same side, so it cannot branch a track.

  With *piece joining* (the bundle's optional ``join_pieces``), the pieces found so far
  are then joined where an edge links the outer end of one to the inner end of another
  and the two pieces lie on one trajectory (straight lines in ``phi(r)`` and ``z(r)``
  fitted to each piece, within tolerances): see :mod:`trackserve.runtime.piece_joining`.

Every hit gets a label, also a hit with no kept edge: it is a track of its own (the
published service gave all such hits one shared label; a single-hit "track" is easy
to drop downstream by its size, a shared label would merge unrelated hits). Labels
are compact and stable: ``0 .. n_tracks - 1``, numbered in the order of the smallest
hit index of each track, so the same partition always gives the same labels.
"""

from __future__ import annotations


import numpy as np

from trackserve.bundle import TRACK_BUILDING_METHODS, JoinSettings
from trackserve.errors import InputError
from trackserve.values import shown

from .components import compact_in_order, component_labels
from .cuts import logit_threshold
from .hit_edges import HitGroups, oriented_ends
from .inputs import scaled_columns, unmasked, validate_num_hits, validate_per_hit, validate_scores
from .piece_joining import hit_positions, join_pieces


def build_tracks(
    num_hits: int,
    edge_index: np.ndarray,
    scores: np.ndarray,
    cut: float,
    *,
    scores_are_logits: bool = True,
    method: str = "components",
    hit_order: np.ndarray | None = None,
    gap_cut: float | None = None,
    join: JoinSettings | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """Label each hit with its track: connected components over the edges passing ``cut``.

    Parameters
    ----------
    num_hits:
        number of hits ``N >= 0``; labels are returned for hits ``0 .. N-1``.
    edge_index:
        integer array ``[2, M]`` of hit indices in ``[0, N)``; direction, repeated edges
        and self-loops do not matter.
    scores:
        float array ``[M]``, one score per edge, no NaN (infinities are allowed).
    cut:
        threshold in ``[0, 1]`` on the edge probability; an edge passes when
        ``sigmoid(score) > cut`` (logits) or ``score > cut`` (probabilities).
    scores_are_logits:
        whether ``scores`` are logits (default) or probabilities.
    method:
        ``"components"`` or ``"best_edges"`` (see the module docstring).
    hit_order:
        float array ``[N]``, finite, for ``"best_edges"``: where each hit lies along a track
        from the collision (its distance from the origin, :func:`hit_distances`).
    gap_cut:
        for ``"best_edges"`` only: a second, lower threshold in ``[0, cut]`` on the same
        scale as ``cut``; the gaps the cut leaves are filled with edges passing it (see
        the module docstring). None (the default): no gap filling.
    join:
        for ``"best_edges"`` only: :class:`~trackserve.bundle.JoinSettings` for joining the
        track pieces that fit one trajectory (:func:`~trackserve.runtime.piece_joining.join_pieces`;
        its ``min_score`` is on the same scale as ``cut``). None (the default): no joining.
    positions:
        float array ``[N, 3]``, finite, with ``join``: each hit's ``(r mm, phi rad, z mm)``
        (:func:`~trackserve.runtime.piece_joining.hit_positions`).

    Returns
    -------
    int64 array ``[N]``: track labels ``0 .. n_tracks-1`` in order of each track's smallest hit index.

    Raises
    ------
    InputError
        on a malformed hit count, edge list, score array or cut.
    """
    n = validate_num_hits(num_hits)
    edges = _validated_edges(edge_index, n)
    values = validate_scores(scores, edges.shape[1], scores_are_logits)
    threshold = logit_threshold(cut, scores_are_logits)
    if method not in TRACK_BUILDING_METHODS:
        raise InputError(f"track building method must be one of {', '.join(TRACK_BUILDING_METHODS)}; got {shown(method)}")
    order = _validated_order(hit_order, n) if method == "best_edges" else None
    gap_threshold = _validated_gap_threshold(gap_cut, cut, method, scores_are_logits)
    if join is not None:
        if not isinstance(join, JoinSettings):
            raise InputError(f"join must be JoinSettings or None; got {shown(join)}")
        if method != "best_edges":
            raise InputError(f"joining track pieces needs track building 'best_edges', not {method!r}")
        if positions is None:
            raise InputError("joining track pieces needs positions (each hit's r, phi and z)")

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Compare in float64 explicitly: numpy < 2 would compare a float32 array with a float64
    # scalar in float32, where a logit just above logit(cut) can round onto it.
    wide = values.astype(np.float64, copy=False)
    if gap_threshold is None:
        passing = wide > threshold
        kept = np.compress(passing, edges, axis=1)
        if order is not None and kept.shape[1]:
            kept = kept[:, _best_edges(kept, wide[passing], order)]
    else:
        # Every edge passing the gap cut; those also passing the cut compete for the best edges first.
        candidates = wide > gap_threshold
        kept = np.compress(candidates, edges, axis=1)
        scores_kept = wide[candidates]
        kept = kept[:, _best_and_gap_edges(kept, scores_kept, order, scores_kept > threshold)]
    labels = _components(n, kept)
    if join is None:
        return labels
    return join_pieces(labels, edges, values, positions, order, join, scores_are_logits=scores_are_logits)


def _components(n: int, kept: np.ndarray) -> np.ndarray:
    """Compact, stable labels of the weakly connected components of ``n`` hits joined by ``kept [2, M]``."""
    if kept.shape[1] == 0:
        return np.arange(n, dtype=np.int64)
    return compact_in_order(component_labels(n, kept)[1])


def best_edges(edge_index: np.ndarray, scores: np.ndarray, hit_order: np.ndarray) -> np.ndarray:
    """Which edges are the best outward edge of their inner hit or the best inward edge of their outer hit.

    ``edge_index`` int64 ``[2, M]``, ``scores [M]`` (higher is better, no NaN),
    ``hit_order [N]``: inner is the end with the smaller ``(hit_order, index)``. A hit's
    best edge has its highest score, the earliest such edge on ties. Returns bool ``[M]``.
    Self-loops are never kept, nor compete for a hit's best edge. Inputs of other shapes,
    edges outside the hits, NaN scores or orders that are not finite raise
    :class:`InputError`.
    """
    return _best_edges(*_checked_hit_edges(edge_index, scores, hit_order))


def _best_edges(edge_index: np.ndarray, values: np.ndarray, hit_order: np.ndarray) -> np.ndarray:
    """:func:`best_edges` of inputs already checked (int64 edges, float64 scores, hit order)."""
    inner, outer = oriented_ends(edge_index, hit_order)
    num_hits = hit_order.shape[0]
    among = _not_loops(inner, outer)  # a self-loop never takes a hit's best slot
    keep = HitGroups(inner, num_hits).best(values, among) | HitGroups(outer, num_hits).best(values, among)
    return keep & (inner != outer)


def _not_loops(inner: np.ndarray, outer: np.ndarray) -> np.ndarray | None:
    """Bool ``[M]``: which edges are not self-loops; None when none is (graph building makes none)."""
    loops = inner == outer
    return ~loops if loops.any() else None


def gap_edges(edge_index: np.ndarray, scores: np.ndarray, hit_order: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Which edges fill a gap that the edges ``kept`` (bool ``[M]``) leave.

    An edge that is not kept is a candidate when its inner hit has no kept outward edge
    and its outer hit no kept inward edge (ends as in :func:`best_edges`; no self-loop);
    a candidate fills a gap when it is the best candidate of both of its hits: the
    highest-scoring (earliest on ties) candidate outward of its inner hit and inward of
    its outer hit. So each hit gains at most one edge on each side, on a side that had
    none. Returns bool ``[M]``, false where ``kept`` is true. ``scores``: no NaN. Inputs
    are checked as by :func:`best_edges`; ``kept`` must be bool ``[M]``.
    """
    edge_index, values, hit_order = _checked_hit_edges(edge_index, scores, hit_order)
    kept = np.asarray(kept)
    if kept.shape != (edge_index.shape[1],) or kept.dtype != bool:
        raise InputError(f"kept must be a bool array of shape [{edge_index.shape[1]}] (one per edge); "
                         f"got {kept.dtype} {kept.shape}")
    inner, outer = oriented_ends(edge_index, hit_order)
    num_hits = hit_order.shape[0]
    return _gaps(HitGroups(inner, num_hits), HitGroups(outer, num_hits), values, kept)


def _checked_hit_edges(edge_index, scores, hit_order) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges int64 [2, M], scores float64 [M], hit_order float64 [N])`` of :func:`best_edges`'
    inputs, the number of hits taken from ``hit_order``; an InputError naming what is wrong."""
    order = np.asarray(hit_order)
    if order.ndim != 1:
        raise InputError(f"hit_order must be 1-D (one value per hit); got shape {order.shape}")
    order = _validated_order(order, order.shape[0])
    edges = _validated_edges(edge_index, order.shape[0])
    return edges, validate_scores(scores, edges.shape[1]).astype(np.float64, copy=False), order


def _best_and_gap_edges(edge_index: np.ndarray, scores: np.ndarray, hit_order: np.ndarray,
                        strong: np.ndarray) -> np.ndarray:
    """``best_edges`` among the ``strong`` edges, then ``gap_edges`` around them (bool ``[M]``),
    grouping the edges by hit once for both."""
    inner, outer = oriented_ends(edge_index, hit_order)
    num_hits = hit_order.shape[0]
    by_inner, by_outer = HitGroups(inner, num_hits), HitGroups(outer, num_hits)
    strong = strong & (inner != outer)  # a self-loop never takes a hit's best slot
    best = by_inner.best(scores, strong) | by_outer.best(scores, strong)
    return best | _gaps(by_inner, by_outer, scores, best)


def _gaps(by_inner: "HitGroups", by_outer: "HitGroups", scores: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The gap edges of :func:`gap_edges`, from the edges grouped by inner and by outer hit."""
    inner, outer = by_inner.hits, by_outer.hits
    has_outward = np.zeros(by_inner.num_hits, dtype=bool)
    has_outward[inner[kept]] = True
    has_inward = np.zeros(by_inner.num_hits, dtype=bool)
    has_inward[outer[kept]] = True
    free = ~kept & (inner != outer) & ~has_outward[inner] & ~has_inward[outer]
    if not free.any():
        return free
    return by_inner.best(scores, free) & by_outer.best(scores, free)


def hit_distances(features: np.ndarray, names, scales) -> np.ndarray:
    """Distance of each hit from the origin (mm, float64) from its ``r`` and ``z`` features.

    ``names`` and ``scales`` describe the feature columns (a bundle's feature spec: the
    value of a column times its scale is the quantity in mm). Raises InputError when the
    features lack ``r`` or ``z``.
    """
    r, z = scaled_columns(features, names, scales, ("r", "z"), "ordering hits along tracks")
    return np.hypot(r, z)


def bundle_hit_order(bundle, features: np.ndarray | None) -> np.ndarray | None:
    """The ``hit_order`` a bundle's track building needs for ``features`` (None when its method needs none)."""
    if bundle.stages.track_building != "best_edges":
        return None
    if features is None:
        raise InputError("this bundle builds tracks with 'best_edges', which needs the hits' features (r and z)")
    return hit_distances(features, bundle.feature_names, bundle.feature_scales)


def bundle_track_options(bundle, features: np.ndarray | None) -> dict:
    """The keyword arguments of :func:`build_tracks` (all but the cut) that a bundle's stage
    parameters give for an event's ``features``: method, hit order, gap cut, piece joining
    and positions."""
    stages = bundle.stages
    return {"method": stages.track_building, "hit_order": bundle_hit_order(bundle, features),
            "gap_cut": stages.gap_cut, "join": stages.join_pieces,
            "positions": bundle_hit_positions(bundle, features)}


def bundle_hit_positions(bundle, features: np.ndarray | None) -> np.ndarray | None:
    """The ``positions`` a bundle's track building needs for ``features`` (None when it joins no pieces)."""
    if bundle.stages.join_pieces is None:
        return None
    if features is None:
        raise InputError("this bundle joins track pieces, which needs the hits' features (r, phi and z)")
    return hit_positions(features, bundle.feature_names, bundle.feature_scales)


def _validated_order(hit_order, n: int) -> np.ndarray:
    if hit_order is None:
        raise InputError("track building 'best_edges' needs hit_order (each hit's distance from the origin)")
    return validate_per_hit(hit_order, "hit_order", (n,))


def _validated_gap_threshold(gap_cut, cut, method: str, scores_are_logits: bool):
    """The threshold of ``gap_cut`` (None without one); it needs ``best_edges`` and must not exceed ``cut``."""
    if gap_cut is None:
        return None
    if method != "best_edges":
        raise InputError(f"a gap cut fills gaps between best edges: it needs track building 'best_edges', not {method!r}")
    try:
        threshold = logit_threshold(gap_cut, scores_are_logits)
    except InputError:
        raise InputError(f"gap cut must be a number in [0, 1]; got {shown(gap_cut)}") from None
    if float(gap_cut) > float(cut):
        raise InputError(f"gap cut {gap_cut!r} is above the cut {cut!r}: the gap cut must lie in [0, cut]")
    return threshold


def _validated_edges(edge_index, n: int) -> np.ndarray:
    edges = np.asarray(unmasked(edge_index, "edge_index"))
    if edges.ndim != 2 or edges.shape[0] != 2:
        pairs = " (pairs in rows: transpose it)" if edges.ndim == 2 and edges.shape[1] == 2 else ""
        raise InputError(f"edge_index must have shape [2, M]; got {list(edges.shape)}{pairs}")
    if edges.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    if edges.dtype.kind not in "iu":
        raise InputError(f"edge_index must hold integers; got dtype {edges.dtype}")
    low, high = edges.min(), edges.max()
    if low < 0 or high >= n:
        bad = int(np.flatnonzero(((edges < 0) | (edges >= n)).any(axis=0))[0])
        raise InputError(
            f"edge {bad} ({int(edges[0, bad])} -> {int(edges[1, bad])}) refers to a hit outside "
            f"0..{n - 1} (num_hits = {n})"
        )
    return edges.astype(np.int64, copy=False)
