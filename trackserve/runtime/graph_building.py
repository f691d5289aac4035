"""Exact fixed-radius graph building on the CPU: every pair of hits closer than ``r`` in the embedding.

The rule (what :func:`build_graph` returns, and what its tests check by brute force):

* Distance: for hits ``i`` and ``j`` the squared distance is computed in float32 as
  ``((E[i,0]-E[j,0])**2 + (E[i,1]-E[j,1])**2) + ...``, summed over the dimensions in
  order ``0, 1, ..., D-1``. A pair is an edge when that value is strictly below
  ``float32(float32(r) * float32(r))``: points exactly on the radius are excluded.
* Cap (``max_neighbours = K``): rank the neighbours of each hit by (squared distance,
  neighbour index), self excluded. An unordered pair is kept when either endpoint has
  the other among its K first; so the cap never depends on the order of the hits nor
  on the direction convention, and no hit ever loses a neighbour it ranks in its K
  nearest. (The published ExaTrkX service ran FRNN with K=500 counting the query point
  itself and kept the edges whose source index was the larger one; on its events the
  cap never binds, and neither does ours at K >= 499.)
* Direction: ``"i<j"`` gives each kept pair once as ``[[small], [large]]``, ``"i>j"``
  once as ``[[large], [small]]`` (the published service's convention), ``"both"``
  gives both. Edges are sorted by source, then target. There are no self-loops.

How it is fast and still exact. When the cap binds for most hits (a radius wide enough
to reach far more than K neighbours), the pairs are found as each hit's nearest
neighbours instead (:func:`_nearest_capped_pairs`): a k-d tree query of the
``K + 1 + 8`` nearest within the radius in float64, the exact float32 rule applied to
them, and each hit's K first by (float32 squared distance, index). A hit whose K-th
float32 distance is not clearly below the farthest float64 distance returned (a near
tie at the edge of the list, or distances so small that their float32 squares underflow)
is searched again over its whole radius, so the result is
the rule's, not an approximation; memory is ``N x (K + 9)`` whatever the radius, plus at
most about a million neighbours at once for the hits searched again (a crowd of hits at
one point in the embedding has each of them search the whole crowd: time grows as its
square, 11 s for 12,000 equal points here, memory does not). With
several threads the hits are cut into row slabs, each queried and checked in its own
thread.
Otherwise the embedding is projected onto its ``g`` leading
principal axes (an orthogonal projection shortens every distance), candidate pairs
closer than ``r`` (plus a relative margin of 1e-5, far wider than float32 rounding)
in the projection are found with :class:`scipy.spatial.cKDTree`, and every candidate
is then checked with the exact float32 rule above over all D dimensions. ``g`` is
chosen per call from the number of candidate pairs counted on a sample of the hits.
With several threads the hits are split into slabs along the first axis, each slab
searched in its own thread (cKDTree releases the GIL), so memory grows with the
number of candidates of one slab, never with N squared (unless the output does).
"""

from __future__ import annotations

import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.spatial import cKDTree

from trackserve.errors import InputError
from trackserve.values import finite_real, shown

from .inputs import unmasked
from .memory import memory_limit_error
from .parallel import row_parts

DIRECTIONS = ("i<j", "i>j", "both")

# Relative widening of the search radius in the projection: float32 rounding of the
# exact rule can accept a pair at most ~(D + 3) * 2**-24 beyond r (relative), far below this.
_SEARCH_MARGIN = 1e-5
# Hits per slab below which splitting the search across threads is not worth it.
_MIN_SLAB = 16_384
# Hits per slab above which the search is split to bound the memory of one task.
_MAX_SLAB = 65_536
# Hits from which a search tree is built balanced and compact (scipy's defaults): dearer to
# build, cheaper to search. Measured on this project's 2-core machine: 100k clustered
# points in 8 dimensions (10 neighbours each) 0.47 against 0.53 s, points on a 3-D
# manifold the same (0.12 s); on the benchmark events' embeddings (1,300 hits) the
# unbalanced tree was faster (0.85 against 0.94 ms per event).
_BALANCED_TREE_MIN = 16_384
# Sample size used to choose the number of projected dimensions; below 4 samples' worth
# of hits the choice costs more than it saves and 3 dimensions are used.
_SAMPLE = 2_000
# Highest number of projected dimensions tried (k-d trees degrade in more).
_MAX_TREE_DIMS = 6
# Relative cost of one hit per k-d tree cell of the 2**g around it versus one candidate pair.
_TRAVERSAL_COST = 1.5


def build_graph(
    embedding: np.ndarray,
    radius: float,
    max_neighbours: int,
    *,
    direction: str = "i<j",
    threads: int | None = None,
    memory_limit: int | None = None,
    memory_held: int = 0,
) -> np.ndarray:
    """All pairs of hits closer than ``radius`` in ``embedding``, at most ``max_neighbours`` each.

    Parameters
    ----------
    embedding:
        float32 array ``[N, D]`` (other real float dtypes are converted to float32);
        every value must be finite.
    radius:
        the strict distance bound ``r > 0``; ``float32(r)**2`` must be a finite, normal
        float32 (about 1.1e-19 < r < 1.8e19).
    max_neighbours:
        ``K >= 1``: a pair is kept when it is among the K nearest of either endpoint
        (ties broken by the lower index); see the module docstring for the exact rule.
    direction:
        ``"i<j"``, ``"i>j"`` or ``"both"``: how each kept pair is written.
    threads:
        number of threads (``None``: ``os.cpu_count()``).
    memory_limit, memory_held:
        bytes the caller may use in all, and those it holds already (``None``: no check).
        Before searching, the search's working memory is estimated from the neighbour count
        of a sample of the hits (:func:`graph_memory_estimate`); when the held bytes plus
        the estimate exceed the limit, :class:`~trackserve.errors.MemoryLimitError` (an
        ``InputError``) is raised before any is used.

    Returns
    -------
    int64 array ``[2, M]``, sorted by source then target, without self-loops or duplicates.

    Raises
    ------
    InputError
        on a malformed embedding, radius, cap, direction or thread count, or (a
        ``MemoryLimitError``) a search estimated to need more than ``memory_limit``.
    """
    points = _validated_embedding(embedding)
    r32 = _validated_radius(radius)
    k = _validated_cap(max_neighbours)
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    n_threads = _validated_threads(threads)
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, numbers.Integral)
                                     or memory_limit < 1):
        raise InputError(f"memory_limit must be None or a whole number of bytes >= 1; got {shown(memory_limit)}")
    if isinstance(memory_held, bool) or not isinstance(memory_held, numbers.Integral) or memory_held < 0:
        raise InputError(f"memory_held must be a whole number of bytes >= 0; got {shown(memory_held)}")

    n = points.shape[0]
    if n < 2:
        return np.zeros((2, 0), dtype=np.int64)
    built: dict = {}
    binds = _cap_binds(points, r32, k, built)
    if memory_limit is not None and "mean_neighbours" not in built and n >= _SAMPLED_MIN_HITS:
        built["mean_neighbours"] = _mean_neighbours(points, r32)  # (a cap too wide to bind: no sample yet)
    if memory_limit is not None:
        needed = memory_held + graph_memory_estimate(n, k, binds, built.get("mean_neighbours"))
        if needed > memory_limit and "mean_neighbours" not in built:
            # A small event, every pair assumed within the radius: count its pairs instead (a
            # few ms at most), so that it is not refused where larger events, sampled, pass.
            built["mean_neighbours"] = _mean_neighbours(points, r32, exact=True)
            needed = memory_held + graph_memory_estimate(n, k, binds, built["mean_neighbours"])
        if needed > memory_limit:
            found = built.get("mean_neighbours")
            within = "" if found is None else f", about {found:,.0f} neighbours each within the radius"
            raise memory_limit_error(f"building the graph of {n:,} hits (at most {k} kept each{within})",
                                     needed, memory_limit)
    if binds:
        keys = _nearest_capped_pairs(points, r32, k, n_threads, built.get("tree"))
        small = keys // n
        if direction == "i<j":  # the keys are the pairs in this order already
            return np.stack([small, keys - small * n])
        large = keys - small * n
    else:
        small, large, dist2 = _pairs_within_radius(points, r32, n_threads)
        small, large = _apply_cap(n, small, large, dist2, k)
    return _oriented_sorted(n, small, large, direction)


# Peak bytes of the search per slot of the nearest-neighbour tables (N x (K + 9): neighbour
# indices and distances, the float32 check, the keys and their unique sort), and per pair
# within the radius when every pair is enumerated (the candidates, their distances, the cap's
# ranking, the sorted edges). Measured on random-particle embeddings of the default bundle
# (2026-12-02): 68-70 bytes per slot (200k and 500k hits at K = 16 and 48), 78-119 bytes per
# pair within the radius (200k hits, 4 and 29 million pairs), and on sparse points about 84
# bytes per hit whatever their pairs (the points' copies, projection and search order); rounded up.
_CAPPED_BYTES_PER_SLOT = 80
_BYTES_PER_PAIR = 150
_BYTES_PER_HIT = 128


def graph_memory_estimate(num_hits: int, max_neighbours: int, cap_binds: bool,
                          mean_neighbours: float | None) -> float:
    """Bytes :func:`build_graph`'s search is expected to need at most: the nearest-neighbour
    tables when the cap binds, else every pair within the radius (``mean_neighbours`` per hit,
    from a sample; all pairs of the hits when not sampled, on small events)."""
    base = float(num_hits) * _BYTES_PER_HIT
    if cap_binds:
        return base + float(num_hits) * (max_neighbours + 1 + _KNN_EXTRA) * _CAPPED_BYTES_PER_SLOT
    per_hit = (num_hits - 1) if mean_neighbours is None else min(mean_neighbours, num_hits - 1)
    return base + float(num_hits) * max(per_hit, 0.0) / 2 * _BYTES_PER_PAIR


# Extra neighbours asked of the nearest-neighbour query beyond K + 1 (the hit itself):
# room for float32 and float64 to order near ties differently.
_KNN_EXTRA = 8
# The cap is taken to bind when a sample of hits has on average more than this many
# times K neighbours within the radius (then enumerating every pair costs more).
_KNN_FACTOR = 1.0
# Hits sampled to estimate the neighbour count, and the fewest hits of an event whose
# neighbours are counted on a sample (fewer: the cap is taken not to bind).
_KNN_SAMPLE = 256
_SAMPLED_MIN_HITS = 1_000
# Up to this many hits the estimate counts a smaller sample's neighbours by brute force.
_KNN_BRUTE_MAX_HITS = 20_000
_KNN_BRUTE_SAMPLE = 16
# OpenBLAS runs a matrix product of at most m * n * k = 65536 * 4 on the calling thread
# (its multithreading threshold), so the brute-force count starts no BLAS threads.
_ONE_THREAD_PRODUCT = 65_536 * 4
# Relative gap (on squared distances) between the K-th float32 distance and the farthest
# float64 one that proves no unlisted neighbour can rank among the K nearest.
_KNN_GAP = 1e-5
# The smallest squared distance the gap proof holds for: float32 squares of differences below
# about 1e-19 underflow (subnormal or zero, an absolute error of up to 2**-150 each), which
# this bound (float32's smallest normal number over the gap, about 1.2e-33) keeps far below
# the gap's own width. Hits nearer than that are searched in full.
_KNN_SURE_MIN = float(np.finfo(np.float32).tiny) / _KNN_GAP
#: Neighbours fetched at once by the full search of the hits whose k nearest the capped query
#: could not settle (see _nearest_by_full_search): bounds its memory on crowded points.
_FULL_SEARCH_BATCH = 1 << 20
# Points per leaf of the k-d tree the nearest-neighbour query walks (scipy's default is 16).
# Measured on this project's 2-core Intel machine on the default bundle's 100k-hit event
# (57 nearest of 50k hits on one thread: 0.53 s at 16, 0.47 s at 32 and 64; the whole graph
# at 2 threads, medians of 7 alternating builds: 836 ms at 16, 769 at 32, 781 at 64, 804 at
# 128; the same edges). The radius search of smaller events keeps 16: its pair queries
# were slower with larger leaves (published benchmark events 1.17 ms at 16, 1.29 at 64).
_KNN_LEAF_SIZE = 32


def _cap_binds(points: np.ndarray, r32: np.float32, k: int, built: dict | None = None) -> bool:
    """Whether most hits have far more than ``k`` neighbours within the radius (estimated on a sample).

    The k-d tree of the hits it builds is left in ``built["tree"]`` for the search that follows,
    the sample's mean neighbour count in ``built["mean_neighbours"]`` (not set for the small
    events it decides without a sample).
    """
    n = points.shape[0]
    if n <= 4 * (k + 1 + _KNN_EXTRA) or n < _SAMPLED_MIN_HITS:
        return False
    mean = _mean_neighbours(points, r32, built)
    if built is not None:
        built["mean_neighbours"] = mean
    return mean > _KNN_FACTOR * k


def _mean_neighbours(points: np.ndarray, r32: np.float32, built: dict | None = None, *, exact: bool = False) -> float:
    """The mean number of neighbours within the radius of a sample of the hits (brute force on
    small events, else a k-d tree query, whose tree goes to ``built["tree"]``); with ``exact``
    (events of at most :data:`_KNN_BRUTE_MAX_HITS` hits) of every hit."""
    n = points.shape[0]
    if n <= _KNN_BRUTE_MAX_HITS:
        # Small events: count a sample's neighbours directly (no tree to build for nothing),
        # in products small enough that OpenBLAS keeps them on the calling thread.
        sample = points if exact else points[:: max(1, n // _KNN_BRUTE_SAMPLE)][:_KNN_BRUTE_SAMPLE]
        sample_norms = np.einsum("sd,sd->s", sample, sample)[:, None]
        block = max(1, _ONE_THREAD_PRODUCT // (sample.shape[0] * points.shape[1]))
        within = 0
        for begin in range(0, n, block):
            part = points[begin : begin + block]
            with np.errstate(over="ignore", invalid="ignore"):  # far-off points overflow: inf or nan, not within
                squared = sample_norms + np.einsum("nd,nd->n", part, part)[None, :] - 2 * (sample @ part.T)
            within += np.count_nonzero(squared < r32 * r32)
        return within / sample.shape[0] - 1.0
    step = max(1, n // _KNN_SAMPLE)
    tree = cKDTree(points, leafsize=_KNN_LEAF_SIZE)
    if built is not None:
        built["tree"] = tree
    counts = tree.query_ball_point(points[::step], float(r32), return_length=True)
    return float(np.mean(counts)) - 1.0


def _nearest_capped_pairs(points: np.ndarray, r32: np.float32, k: int, n_threads: int, tree=None) -> np.ndarray:
    """The capped pairs from each hit's nearest neighbours, as ascending unique keys
    ``small * N + large``; see the module docstring.

    ``tree``: a k-d tree of ``points`` already built (else one is built here). The hits are
    cut into row slabs (from :data:`_MIN_SLAB` hits each, at most one per thread), each
    queried and worked through by :func:`_nearest_rows` in a thread of its own (the k-d
    tree query and numpy's work on the large tables release the interpreter lock);
    one slab queries with all the threads. Measured on the project's 2-core Intel machine
    on a 100k-hit event (the default bundle's embedding, 2.5 million edges; 15 builds each
    in 5 alternating processes): 1.01 s median (best 0.86) in two slabs against 1.48 s
    (best 1.14) in one slab with a two-thread query, the same edges.
    """
    n = points.shape[0]
    tree = cKDTree(points, leafsize=_KNN_LEAF_SIZE) if tree is None else tree
    slabs = row_parts(n, n_threads, _MIN_SLAB)
    if len(slabs) == 1:
        keys = _nearest_rows(points, tree, 0, n, r32, k, n_threads)
    else:
        with ThreadPoolExecutor(max_workers=len(slabs)) as pool:
            keys = np.concatenate(list(pool.map(
                lambda slab: _nearest_rows(points, tree, slab.start, slab.stop, r32, k, 1), slabs)))
    return np.unique(keys)


def _nearest_rows(points: np.ndarray, tree, lo: int, hi: int, r32: np.float32, k: int, workers: int) -> np.ndarray:
    """The capped pairs that hits ``lo .. hi-1`` keep as their k nearest, as keys ``small * N + large``.

    Works on the query's ``[hi - lo, K + 9]`` table: the exact float32 distances column by
    column, then each row ordered by one 64-bit key (the float32 distance's bits, which
    order like the distances for non-negative floats, above the neighbour's index).
    """
    n = points.shape[0]
    r2 = np.float32(r32 * r32)
    want = min(n, k + 1 + _KNN_EXTRA)
    rows = hi - lo
    reach = float(r32) * (1 + _SEARCH_MARGIN)
    dist, index = tree.query(points[lo:hi], k=want, distance_upper_bound=reach, workers=workers)
    dist, index = dist.reshape(rows, want), index.reshape(rows, want)
    own = np.arange(lo, hi, dtype=np.int64)
    listed = (index < n) & (index != own[:, None])
    neighbour = np.where(listed, index, 0).astype(np.int64)
    d32 = np.zeros((rows, want), dtype=np.float32)
    with np.errstate(over="ignore"):  # pairs too far apart for float32 sum to inf: never within the radius
        for column in points.T:  # the rule's sum, dimension by dimension
            diff = column[neighbour] - column[lo:hi, None]
            diff *= diff
            d32 += diff
    close = listed & (d32 < r2)
    keys = (d32.view(np.uint32).astype(np.uint64) << np.uint64(32)) | neighbour.astype(np.uint64)
    keys[~close] = np.iinfo(np.uint64).max
    keys.sort(axis=1)
    counts = close.sum(axis=1)
    # a full list (want entries within reach) may hide an unlisted neighbour ranking among the
    # k nearest when the k-th listed distance is close to the farthest listed one: redo those
    full = index[:, -1] < n
    kth = np.full(rows, np.inf)
    if k <= want:
        has_k = counts >= k
        kth[has_k] = (keys[has_k, k - 1] >> np.uint64(32)).astype(np.uint32).view(np.float32)
    # Below _KNN_SURE_MIN the float32 squares of unlisted neighbours may have underflowed (to
    # subnormals or zero, off by far more than the gap): no proof there either.
    bound = dist[:, -1] ** 2 * (1 - _KNN_GAP)
    unsure = np.flatnonzero(full & ~((kth < bound) & (bound >= _KNN_SURE_MIN)))
    near = keys[:, :k]
    kept = near != np.iinfo(np.uint64).max
    kept[unsure] = False
    keep_rows = np.broadcast_to(own[:, None], near.shape)[kept]
    keep_cols = (near[kept] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    if unsure.size:
        extra_rows, extra_cols = _nearest_by_full_search(points, tree, unsure + lo, r32, r2, k)
        keep_rows = np.concatenate([keep_rows, extra_rows])
        keep_cols = np.concatenate([keep_cols, extra_cols])
    return np.minimum(keep_rows, keep_cols) * n + np.maximum(keep_rows, keep_cols)


def _nearest_by_full_search(points, tree, hits, r32, r2, k):
    """(hit, neighbour) for the k nearest of each of ``hits`` among all its neighbours within the radius.

    The hits' neighbour lists are fetched a batch at a time, each batch holding at most
    :data:`_FULL_SEARCH_BATCH` neighbours in all (a hit with more alone): on hits that
    nearly coincide in the embedding every hit has the whole crowd within the radius, and
    fetching all lists at once held N^2 Python integers (6.8 GB for 12,000 equal points)."""
    reach = float(r32) * (1 + _SEARCH_MARGIN)
    hits = np.asarray(hits, dtype=np.int64)
    lengths = np.asarray(tree.query_ball_point(points[hits], reach, return_length=True), dtype=np.int64)
    out_rows, out_cols = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    start = 0
    while start < hits.size:
        # as many hits as fit the batch by their neighbour counts, at least one
        stop = start + max(1, int(np.searchsorted(np.cumsum(lengths[start:]), _FULL_SEARCH_BATCH, side="right")))
        batch = hits[start:stop]
        for hit, neighbours in zip(batch, tree.query_ball_point(points[batch], reach)):
            cols = np.asarray(neighbours, dtype=np.int64)
            cols = cols[cols != hit]
            rows = np.full(cols.size, hit, dtype=np.int64)
            d32 = _squared_distances(points, rows, cols)
            close = d32 < r2
            cols, d32 = cols[close], d32[close]
            chosen = cols[np.lexsort((cols, d32))[:k]]
            out_rows.append(np.full(chosen.size, hit, dtype=np.int64))
            out_cols.append(chosen)
        start = stop
    return np.concatenate(out_rows), np.concatenate(out_cols)


def _validated_embedding(embedding) -> np.ndarray:
    array = np.asarray(unmasked(embedding, "embedding"))
    if array.ndim != 2:
        raise InputError(f"embedding must be a 2-D array [hits, dims]; got shape {array.shape}")
    if array.dtype.kind != "f":
        raise InputError(f"embedding must hold floating-point values (float32); got dtype {array.dtype}")
    if array.shape[1] < 1:
        raise InputError("embedding has zero dimensions; it needs at least one column")
    with np.errstate(over="ignore"):  # a finite value beyond float32's range is named below
        points = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(points)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        if np.isfinite(array[row]).all():
            raise InputError(f"embedding row {row} holds a value beyond float32's range (about 3.4e38), where graph "
                             f"building computes: {array[row].tolist()}")
        raise InputError(f"embedding row {row} holds a NaN or infinite value ({points[row].tolist()})")
    return points


def _validated_radius(radius) -> np.float32:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, numbers.Real):
        raise InputError(f"radius must be a number; got {radius!r}")
    if not finite_real(radius) or float(radius) <= 0:  # (an integer beyond any float is no radius either)
        raise InputError(f"radius must be a finite positive number; got {shown(radius)}")
    value = float(radius)
    with np.errstate(over="ignore", under="ignore"):
        r32 = np.float32(value)
        r2 = np.float32(r32 * r32)
    if not np.isfinite(r2) or r2 < np.finfo(np.float32).tiny:
        raise InputError(
            f"radius {value!r} is out of range: its float32 square must be a finite normal number "
            "(about 1.1e-19 < radius < 1.8e19); rescale the embedding"
        )
    return r32


def _validated_cap(max_neighbours) -> int:
    if isinstance(max_neighbours, bool) or not isinstance(max_neighbours, (int, np.integer)):
        raise InputError(f"max_neighbours must be an integer >= 1; got {max_neighbours!r}")
    if max_neighbours < 1:
        raise InputError(f"max_neighbours must be >= 1; got {max_neighbours}")
    return int(max_neighbours)


def _validated_threads(threads) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InputError(f"threads must be None or an integer >= 1; got {threads!r}")
    return int(threads)


def _squared_distances(points: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The exact float32 squared distances of the pairs, summed over dimensions in order."""
    columns = points.T
    total = np.zeros(first.shape[0], dtype=np.float32)
    with np.errstate(over="ignore"):  # pairs too far apart for float32 sum to inf: never within the radius
        for column in columns:
            diff = column[first] - column[second]
            diff *= diff
            total += diff
    return total


def _projection(points: np.ndarray, r32: np.float32) -> tuple[np.ndarray, float]:
    """The hits on their g leading principal axes (float64, C-contiguous) and the search radius.

    ``g`` minimises an estimated cost: the candidate pairs (counted on a sample of the hits)
    plus a k-d tree traversal term that doubles with every dimension.
    """
    n, dims = points.shape
    step = max(1, n // _SAMPLE)
    sample = points[::step].astype(np.float64)
    # Any centre gives the same projected differences; the sample's mean is cheap and close.
    # (Summed by einsum: numpy's axis-0 reductions of a few columns are slow, and a product
    # with ones is a matrix-vector product that OpenBLAS runs on its thread pool from 9,216
    # elements, whose threads then spin for milliseconds beside the stages that follow.)
    mean = np.einsum("sd->d", sample) / sample.shape[0]
    sample -= mean
    _, vectors = np.linalg.eigh(sample.T @ sample)
    axes = np.ascontiguousarray(vectors[:, ::-1])
    centred = points.astype(np.float64)
    centred -= mean
    # The mean lies inside every column's range, so twice the largest centred value bounds
    # the largest column range (the spread) from above; every projected coordinate is at
    # most the norm of a centred row. A wider search only adds candidates.
    spread = 2.0 * float(np.abs(centred).max())
    search = float(r32) * (1 + _SEARCH_MARGIN) + 1e-12 * spread * math.sqrt(dims)
    if n <= 4 * _SAMPLE:
        best = min(dims, 3)
    else:
        rotated_sample = sample @ axes
        scale = (n / sample.shape[0]) ** 2
        best, lowest = 1, math.inf
        for g in range(1, min(dims, _MAX_TREE_DIMS) + 1):
            traversal = _TRAVERSAL_COST * n * 2**g
            if traversal >= lowest:
                # this g and every higher one cost more than the best so far whatever their
                # candidates, so the choice is the full argmin's. Counting is the dearest
                # part of the choice and dearer the higher g: on the default bundle's
                # 10k-hit event the six counts took 13.5 ms, g = 5 and 6 5.5 ms of it, and
                # stopping here took graph building from 35 to 28 ms (medians of 15).
                break
            tree = cKDTree(np.ascontiguousarray(rotated_sample[:, :g]))
            cost = (tree.count_neighbors(tree, search) - sample.shape[0]) / 2 * scale + traversal
            if cost < lowest:
                best, lowest = g, cost
    # einsum, not BLAS: a skinny product where a BLAS thread pool only adds start-up cost.
    return np.einsum("nd,dg->ng", centred, axes[:, :best]), search


def _pairs_within_radius(points: np.ndarray, r32: np.float32, n_threads: int):
    """Unordered pairs (small index, large index) passing the exact rule, with their squared distance."""
    n = points.shape[0]
    r2 = np.float32(r32 * r32)
    projected, search = _projection(points, r32)
    n_slabs = max(1, min(n_threads, n // _MIN_SLAB), -(-n // _MAX_SLAB))
    if n_slabs == 1:
        # One slab: no ordering along the first axis, the tree holds all the hits as they are.
        return _exact_pairs(points, r2, _search_tree(projected).query_pairs(search, output_type="ndarray"))

    order = np.argsort(projected[:, 0], kind="stable")
    first_axis = projected[order, 0]
    bounds = np.linspace(0, n, n_slabs + 1).astype(np.int64)

    def slab(index: int):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        reach = int(np.searchsorted(first_axis, first_axis[hi - 1] + search, side="right"))
        members = order[lo:reach]
        tree = _search_tree(projected[members])
        local = tree.query_pairs(search, output_type="ndarray")
        own = np.minimum(local[:, 0], local[:, 1]) < hi - lo
        return _exact_pairs(points, r2, members[local[own]])

    with ThreadPoolExecutor(max_workers=min(n_threads, n_slabs)) as pool:
        parts = list(pool.map(slab, range(n_slabs)))
    small = np.concatenate([p[0] for p in parts])
    large = np.concatenate([p[1] for p in parts])
    dist2 = np.concatenate([p[2] for p in parts])
    return small, large, dist2


def _search_tree(points: np.ndarray) -> cKDTree:
    """The k-d tree of the projected hits one search uses (balanced from :data:`_BALANCED_TREE_MIN` hits)."""
    if points.shape[0] >= _BALANCED_TREE_MIN:
        return cKDTree(points)
    return cKDTree(points, balanced_tree=False, compact_nodes=False)


def _exact_pairs(points: np.ndarray, r2: np.float32, candidates: np.ndarray):
    """The candidate pairs ``[C, 2]`` that pass the exact rule: (small int64, large int64, squared distance)."""
    a = candidates[:, 0].astype(np.int64, copy=False)
    b = candidates[:, 1].astype(np.int64, copy=False)
    dist2 = _squared_distances(points, a, b)
    close = dist2 < r2
    a, b, dist2 = a[close], b[close], dist2[close]
    return np.minimum(a, b), np.maximum(a, b), dist2


def _apply_cap(n: int, small: np.ndarray, large: np.ndarray, dist2: np.ndarray, k: int):
    """Keep the pairs among the k nearest (by distance, then index) of either endpoint.

    Only the hits with more than k pairs rank theirs: every pair of a hit within the cap is
    among its k nearest. On the default bundle's 10k-hit event (50,265 pairs before the
    cap) ranking only those took the cap from 2.78 to 0.43 ms (the graph 24.0 -> 21.9 ms)."""
    degree = np.bincount(small, minlength=n) + np.bincount(large, minlength=n)
    if small.size == 0 or degree.max() <= k:
        return small, large
    over = degree > k
    # each pair as seen from each end, only from the ends over the cap
    from_small, from_large = np.flatnonzero(over[small]), np.flatnonzero(over[large])
    source = np.concatenate([small[from_small], large[from_large]])
    target = np.concatenate([large[from_small], small[from_large]])
    distance = np.concatenate([dist2[from_small], dist2[from_large]])
    if n <= 1 << 16:
        # One 64-bit key (source, distance, target): the float32 bits of a distance >= 0
        # order as the distances do; one sort instead of lexsort's three.
        bits = distance.view(np.uint32).astype(np.uint64)
        keys = (source.astype(np.uint64) << np.uint64(48)) | (bits << np.uint64(16)) | target.astype(np.uint64)
        order = np.argsort(keys)
    else:
        order = np.lexsort((target, distance, source))
    counted = np.where(over, degree, 0)
    first_of_source = np.cumsum(counted) - counted
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size) - first_of_source[source[order]]
    near = rank < k
    keep = ~over[small] | ~over[large]
    keep[from_small[near[: from_small.size]]] = True
    keep[from_large[near[from_small.size :]]] = True
    return small[keep], large[keep]


def _oriented_sorted(n: int, small: np.ndarray, large: np.ndarray, direction: str) -> np.ndarray:
    """Write the pairs in the direction convention, sorted by source then target."""
    if direction == "i<j":
        keys = small * n + large
    elif direction == "i>j":
        keys = large * n + small
    else:
        keys = np.concatenate([small * n + large, large * n + small])
    keys.sort()
    source = keys // n
    return np.stack([source, keys - source * n])
