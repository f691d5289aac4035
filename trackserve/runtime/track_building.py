"""Track building on the CPU: connected components of the edges the GNN keeps.

An edge is kept when its score passes the cut strictly, ``sigmoid(score) > cut`` as in
the published ExaTrkX service. With logits this is decided as ``score > logit(cut)``
in float64, the exact mathematical equivalent (no sigmoid is evaluated, so nothing
saturates): at ``cut = 0`` every finite logit passes and ``-inf`` does not, at
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

Every hit gets a label, also a hit with no kept edge: it is a track of its own (the
published service gave all such hits one shared label; a single-hit "track" is easy
to drop downstream by its size, a shared label would merge unrelated hits). Labels
are compact and stable: ``0 .. n_tracks - 1``, numbered in the order of the smallest
hit index of each track, so the same partition always gives the same labels.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.sparse import coo_array, csr_array
from scipy.sparse.csgraph import connected_components

from trackserve.bundle import TRACK_BUILDING_METHODS
from trackserve.errors import InputError

from .cuts import logit_threshold


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

    Returns
    -------
    int64 array ``[N]``: track labels ``0 .. n_tracks-1`` in order of each track's smallest hit index.

    Raises
    ------
    InputError
        on a malformed hit count, edge list, score array or cut.
    """
    n = _validated_num_hits(num_hits)
    edges = _validated_edges(edge_index, n)
    values = _validated_scores(scores, edges.shape[1])
    threshold = logit_threshold(cut, scores_are_logits)
    if method not in TRACK_BUILDING_METHODS:
        raise InputError(f"track building method must be one of {', '.join(TRACK_BUILDING_METHODS)}; got {method!r}")
    order = _validated_order(hit_order, n) if method == "best_edges" else None
    gap_threshold = _validated_gap_threshold(gap_cut, cut, method, scores_are_logits)

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Compare in float64 explicitly: numpy < 2 would compare a float32 array with a float64
    # scalar in float32, where a logit just above logit(cut) can round onto it.
    wide = values.astype(np.float64, copy=False)
    if gap_threshold is None:
        passing = wide > threshold
        kept = np.compress(passing, edges, axis=1)
        if order is not None and kept.shape[1]:
            kept = kept[:, best_edges(kept, wide[passing], order)]
    else:
        # Every edge passing the gap cut; those also passing the cut compete for the best edges first.
        candidates = wide > gap_threshold
        kept = np.compress(candidates, edges, axis=1)
        scores_kept = wide[candidates]
        strong = np.flatnonzero(scores_kept > threshold)
        best = np.zeros(kept.shape[1], dtype=bool)
        best[strong] = best_edges(kept[:, strong], scores_kept[strong], order)
        kept = kept[:, best | gap_edges(kept, scores_kept, order, best)]
    return _components(n, kept)


def _components(n: int, kept: np.ndarray) -> np.ndarray:
    """Compact, stable labels of the weakly connected components of ``n`` hits joined by ``kept [2, M]``."""
    if kept.shape[1] == 0:
        return np.arange(n, dtype=np.int64)
    first, second = kept
    if n <= _RADIX_MAX_HITS:
        # Rows grouped by a stable sort of 16-bit keys (numpy's radix sort, linear): a CSR
        # graph straight away, without the COO graph's conversion.
        rows = np.argsort(first.astype(np.uint16), kind="stable")
        indptr = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(first, minlength=n), out=indptr[1:])
        graph = csr_array((np.ones(first.size, dtype=np.float64), second[rows].astype(np.int32), indptr), shape=(n, n))
    else:
        index = np.int32 if n < 2**31 else np.int64
        # A COO graph: scipy groups it by row in O(M).
        graph = coo_array((np.ones(first.size, dtype=np.float64), (first.astype(index), second.astype(index))),
                          shape=(n, n))
    # Weak components ignore the direction.
    _, labels = connected_components(graph, directed=True, connection="weak")
    return _compact_in_order(labels)


#: Up to this many hits, edges are grouped by hit with 16-bit keys (a linear radix sort).
_RADIX_MAX_HITS = 1 << 16


def best_edges(edge_index: np.ndarray, scores: np.ndarray, hit_order: np.ndarray) -> np.ndarray:
    """Which edges are the best outward edge of their inner hit or the best inward edge of their outer hit.

    ``edge_index`` int64 ``[2, M]``, ``scores [M]`` (higher is better, no NaN),
    ``hit_order [N]``: inner is the end with the smaller ``(hit_order, index)``. A hit's
    best edge has its highest score, the earliest such edge on ties. Returns bool ``[M]``.
    Self-loops are never kept.
    """
    inner, outer = oriented_ends(edge_index, hit_order)
    values = np.asarray(scores, dtype=np.float64)
    num_hits = hit_order.shape[0]
    keep = _best_of_each_hit(inner, values, num_hits) | _best_of_each_hit(outer, values, num_hits)
    return keep & (inner != outer)


def gap_edges(edge_index: np.ndarray, scores: np.ndarray, hit_order: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Which edges fill a gap that the edges ``kept`` (bool ``[M]``) leave.

    An edge that is not kept is a candidate when its inner hit has no kept outward edge
    and its outer hit no kept inward edge (ends as in :func:`best_edges`; no self-loop);
    a candidate fills a gap when it is the best candidate of both of its hits: the
    highest-scoring (earliest on ties) candidate outward of its inner hit and inward of
    its outer hit. So each hit gains at most one edge on each side, on a side that had
    none. Returns bool ``[M]``, false where ``kept`` is true.
    """
    inner, outer = oriented_ends(edge_index, hit_order)
    kept = np.asarray(kept, dtype=bool)
    num_hits = hit_order.shape[0]
    has_outward = np.zeros(num_hits, dtype=bool)
    has_outward[inner[kept]] = True
    has_inward = np.zeros(num_hits, dtype=bool)
    has_inward[outer[kept]] = True
    candidates = np.flatnonzero(~kept & (inner != outer) & ~has_outward[inner] & ~has_inward[outer])
    fills = np.zeros(kept.shape[0], dtype=bool)
    if candidates.size:
        values = np.asarray(scores, dtype=np.float64)[candidates]
        fills[candidates] = (_best_of_each_hit(inner[candidates], values, num_hits)
                             & _best_of_each_hit(outer[candidates], values, num_hits))
    return fills


def oriented_ends(edge_index: np.ndarray, hit_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inner, outer)`` hit of each edge ``[2, M]``: inner has the smaller ``(hit_order, index)``."""
    first, second = edge_index
    swap = (hit_order[first] > hit_order[second]) | ((hit_order[first] == hit_order[second]) & (first > second))
    return np.where(swap, second, first), np.where(swap, first, second)


def _best_of_each_hit(hits: np.ndarray, scores: np.ndarray, num_hits: int) -> np.ndarray:
    """Bool ``[M]``: whether edge ``i`` has the highest score of the edges whose ``hits[i]``
    is the same hit, the earliest such edge on ties."""
    if hits.size == 0:
        return np.zeros(0, dtype=bool)
    # Grouped by hit, each group in edge order (stable); then the first position of each
    # group that holds the group's maximum.
    keys = hits.astype(np.uint16) if num_hits <= _RADIX_MAX_HITS else hits
    grouped = np.argsort(keys, kind="stable")
    sorted_hits = hits[grouped]
    sorted_scores = scores[grouped]
    starts = np.ones(hits.size, dtype=bool)
    np.not_equal(sorted_hits[1:], sorted_hits[:-1], out=starts[1:])
    group = np.cumsum(starts) - 1
    maxima = np.maximum.reduceat(sorted_scores, np.flatnonzero(starts))
    at_maximum = np.flatnonzero(sorted_scores == maxima[group])
    first_at_maximum = np.ones(at_maximum.size, dtype=bool)
    np.not_equal(group[at_maximum[1:]], group[at_maximum[:-1]], out=first_at_maximum[1:])
    best = np.zeros(hits.size, dtype=bool)
    best[grouped[at_maximum[first_at_maximum]]] = True
    return best


def hit_distances(features: np.ndarray, names, scales) -> np.ndarray:
    """Distance of each hit from the origin (mm, float64) from its ``r`` and ``z`` features.

    ``names`` and ``scales`` describe the feature columns (a bundle's feature spec: the
    value of a column times its scale is the quantity in mm). Raises InputError when the
    features lack ``r`` or ``z``.
    """
    names = list(names)
    missing = [name for name in ("r", "z") if name not in names]
    if missing:
        raise InputError(f"ordering hits along tracks needs the features r and z; these features are {names}")
    r = features[:, names.index("r")].astype(np.float64) * float(scales[names.index("r")])
    z = features[:, names.index("z")].astype(np.float64) * float(scales[names.index("z")])
    return np.hypot(r, z)


def bundle_hit_order(bundle, features: np.ndarray | None) -> np.ndarray | None:
    """The ``hit_order`` a bundle's track building needs for ``features`` (None when its method needs none)."""
    if bundle.stages.track_building != "best_edges":
        return None
    if features is None:
        raise InputError("this bundle builds tracks with 'best_edges', which needs the hits' features (r and z)")
    return hit_distances(features, bundle.feature_names, bundle.feature_scales)


def _validated_order(hit_order, n: int) -> np.ndarray:
    if hit_order is None:
        raise InputError("track building 'best_edges' needs hit_order (each hit's distance from the origin)")
    order = np.asarray(hit_order)
    if order.shape != (n,) or order.dtype.kind not in "fiu":
        raise InputError(f"hit_order must be a real array of shape [{n}]; got {order.dtype} {order.shape}")
    order = order.astype(np.float64, copy=False)
    if n and not np.isfinite(order).all():
        raise InputError(f"hit_order of hit {int(np.flatnonzero(~np.isfinite(order))[0])} is not finite")
    return order


def _validated_gap_threshold(gap_cut, cut, method: str, scores_are_logits: bool):
    """The threshold of ``gap_cut`` (None without one); it needs ``best_edges`` and must not exceed ``cut``."""
    if gap_cut is None:
        return None
    if method != "best_edges":
        raise InputError(f"a gap cut fills gaps between best edges: it needs track building 'best_edges', not {method!r}")
    try:
        threshold = logit_threshold(gap_cut, scores_are_logits)
    except InputError:
        raise InputError(f"gap cut must be a number in [0, 1]; got {gap_cut!r}") from None
    if float(gap_cut) > float(cut):
        raise InputError(f"gap cut {gap_cut!r} is above the cut {cut!r}: the gap cut must lie in [0, cut]")
    return threshold


def _validated_num_hits(num_hits) -> int:
    if isinstance(num_hits, bool) or not isinstance(num_hits, numbers.Integral) or num_hits < 0:
        raise InputError(f"num_hits must be an integer >= 0; got {num_hits!r}")
    return int(num_hits)


def _validated_edges(edge_index, n: int) -> np.ndarray:
    edges = np.asarray(edge_index)
    if edges.ndim != 2 or edges.shape[0] != 2:
        raise InputError(f"edge_index must have shape [2, M]; got {edges.shape}")
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


def _validated_scores(scores, m: int) -> np.ndarray:
    values = np.asarray(scores)
    if values.ndim != 1 or values.shape[0] != m:
        raise InputError(f"scores must have shape [{m}] (one per edge); got {values.shape}")
    if m == 0:
        return np.zeros(0, dtype=np.float64)
    if values.dtype.kind != "f":
        raise InputError(f"scores must be floating-point; got dtype {values.dtype}")
    nan = np.isnan(values)
    if nan.any():
        raise InputError(f"score of edge {int(np.flatnonzero(nan)[0])} is NaN ({int(nan.sum())} NaN scores in all)")
    return values


def _compact_in_order(labels: np.ndarray) -> np.ndarray:
    """Renumber component labels 0.. in order of first appearance (smallest hit index)."""
    labels = labels.astype(np.int64, copy=False)
    running_max = np.maximum.accumulate(labels)
    if running_max[0] == 0 and np.all(np.diff(running_max) <= 1):
        # Each new label is one above every label before it: already in first-appearance order.
        return labels
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse]
