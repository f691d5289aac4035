"""Graph building and track building on the CPU, side by side with FAISS, cKDTree and scipy.

Graph building: our exact ``build_graph`` against ``faiss.IndexFlatL2.range_search`` (what
the published ExaTrkX service runs on a CPU) and ``scipy.spatial.cKDTree`` (``query_pairs``
and ``query_ball_point``), on the same points, radius and edge set, in one run. Two kinds of
clustered points, ~10 per cluster, the radius set to give about 10 neighbours per point:

* ``manifold``: cluster centres on a smooth 3-D manifold in D dimensions, like a learned
  embedding of 3 hit features (the reference event's embedding has 89 % of its variance
  on 3 principal axes);
* ``uniform``: cluster centres uniform in a D-dimensional cube, the hard case for any
  search that relies on a low-dimensional structure.

The references compute distances their own way (FAISS through ``|a|^2 + |b|^2 - 2ab``,
cKDTree in float64 with ``<= r``), so their edge sets may differ from ours only in pairs
within a hair of the radius; the script asserts that every difference is such a pair.

Track building: ``build_tracks`` against ``scipy.sparse.csgraph.connected_components`` on
about 1M scored edges (tracks of ~10 hits plus random fakes), same cut, partitions asserted.

Run ``python benchmarks/bench_graph_building.py`` (``--help`` for sizes and threads); it
writes the section ``graph_building`` of ``benchmarks/RESULTS.md`` (not with ``--no-write``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LoadWatch, comma_choices, machine_description, positive_int, publish,  # noqa: E402
                      reduced_run_note)

from trackserve.runtime.graph_building import build_graph  # noqa: E402
from trackserve.runtime.track_building import build_tracks  # noqa: E402

BORDER = 1e-4  # relative distance to the radius within which the references may disagree
#: The kinds of point sets (see the module docstring).
KINDS = ("manifold", "uniform")
#: The full run's settings.
FULL = {"points": 100_000, "edges": 1_000_000, "repeats": 3}
#: The fewest scored edges track_rows can build an event of (0.4 of them are hits: at least one).
MIN_EDGES = 3


def manifold_points(n: int, dims: int, per_cluster: int, rng: np.random.Generator) -> np.ndarray:
    """Clusters of ~per_cluster points whose centres lie on a smooth 3-D manifold."""
    clusters = max(1, n // per_cluster)
    latent = rng.uniform(-1, 1, (clusters, 3))
    hidden = np.tanh(latent @ rng.normal(0, 1.5, (3, 32)) + rng.normal(0, 0.5, 32))
    centres = 3 * hidden @ rng.normal(0, 1 / np.sqrt(32), (32, dims))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(0, 0.02, (n, dims))).astype(np.float32)


def uniform_points(n: int, dims: int, per_cluster: int, rng: np.random.Generator) -> np.ndarray:
    """Clusters of ~per_cluster points whose centres are uniform in a cube."""
    clusters = max(1, n // per_cluster)
    centres = rng.uniform(-1, 1, (clusters, dims))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(0, 0.05, (n, dims))).astype(np.float32)


def radius_for(points: np.ndarray, neighbours: int, rng: np.random.Generator) -> float:
    """The median distance to the neighbours-th neighbour, from a sample of the points."""
    sample = points[rng.choice(points.shape[0], min(2_000, points.shape[0]), replace=False)]
    distances, _ = cKDTree(points).query(sample, k=neighbours + 1, workers=-1)
    return float(np.median(distances[:, -1]))


def timed(function, repeats: int):
    """(median seconds, last result) over repeats calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def pair_keys(first: np.ndarray, second: np.ndarray, n: int) -> np.ndarray:
    """Unique unordered-pair keys min*n + max, sorted."""
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    return np.unique(np.minimum(first, second) * n + np.maximum(first, second))


def check_same_edges(name, ours, theirs, points, radius, expansion=False) -> int:
    """Assert the edge sets differ only by pairs on the radius up to rounding; return their count.

    "On the radius": ``|d/r - 1| <= BORDER``, or for a reference computing ``|a|^2 + |b|^2 - 2ab``
    in float32 (``expansion``), ``|d^2 - r^2| <= 16 * eps32 * (|a|^2 + |b|^2)``, its rounding bound.
    """
    n = points.shape[0]
    differing = np.setxor1d(ours, theirs, assume_unique=True)
    a = points[differing // n].astype(np.float64)
    b = points[differing % n].astype(np.float64)
    distance2 = np.sum((a - b) ** 2, axis=1)
    on_radius = np.abs(np.sqrt(distance2) / radius - 1) <= BORDER
    if expansion:
        bound = 16 * np.finfo(np.float32).eps * (np.sum(a * a, axis=1) + np.sum(b * b, axis=1))
        on_radius |= np.abs(distance2 - radius * radius) <= bound
    if not on_radius.all():
        raise AssertionError(f"{name}: {int((~on_radius).sum())} edges differ from ours away from the radius")
    return int(differing.size)


def faiss_edges(points: np.ndarray, radius: float, threads: int) -> np.ndarray:
    """FAISS exact range search, as the published service's CPU graph building."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatL2(points.shape[1])
    index.add(points)
    limits, _, neighbours = index.range_search(points, radius * radius)
    queries = np.repeat(np.arange(points.shape[0]), np.diff(limits.astype(np.int64)))
    keep = queries < neighbours
    return pair_keys(queries[keep], neighbours[keep], points.shape[0])


def kdtree_pairs(points: np.ndarray, radius: float) -> np.ndarray:
    """cKDTree.query_pairs (single-threaded: it has no workers option)."""
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    return pair_keys(pairs[:, 0], pairs[:, 1], points.shape[0])


def kdtree_ball(points: np.ndarray, radius: float, threads: int) -> np.ndarray:
    """cKDTree.query_ball_point with workers, turned into an edge list."""
    lists = cKDTree(points).query_ball_point(points, radius, workers=threads, return_sorted=False)
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    neighbours = np.fromiter((j for row in lists for j in row), dtype=np.int64, count=int(counts.sum()))
    queries = np.repeat(np.arange(points.shape[0]), counts)
    keep = queries < neighbours
    return pair_keys(queries[keep], neighbours[keep], points.shape[0])


def graph_rows(kind: str, args, rng: np.random.Generator) -> list[str]:
    """Time our graph building and the references on a point set of ``kind``; the section's lines for it."""
    generate = {"manifold": manifold_points, "uniform": uniform_points}[kind]
    points = generate(args.points, args.dims, args.per_cluster, rng)
    radius = radius_for(points, args.per_cluster, rng)
    n = points.shape[0]

    ours_time, ours = timed(lambda: build_graph(points, radius, 10_000, threads=args.threads), args.repeats)
    ours_keys = ours[0] * n + ours[1]
    degree = 2 * ours.shape[1] / n
    rows = [(f"trackserve build_graph (threads={args.threads})", ours_time, 0)]
    print(f"[{kind}] r={radius:.4g}, {ours.shape[1]} edges, {degree:.1f} neighbours/point, ours {ours_time:.3f} s")

    kd_time, kd = timed(lambda: kdtree_pairs(points, radius), args.repeats)
    kd_differing = check_same_edges("query_pairs", ours_keys, kd, points, radius)
    rows.append(("cKDTree query_pairs (1 thread)", kd_time, kd_differing))
    ball_time, ball = timed(lambda: kdtree_ball(points, radius, args.threads), args.repeats)
    rows.append(
        (f"cKDTree query_ball_point (workers={args.threads})", ball_time,
         check_same_edges("query_ball_point", ours_keys, ball, points, radius))
    )
    if not args.skip_faiss:
        faiss_time, fa = timed(lambda: faiss_edges(points, radius, args.threads), 1)
        rows.append(
            (f"faiss IndexFlatL2.range_search (omp threads={args.threads})", faiss_time,
             check_same_edges("faiss", ours_keys, fa, points, radius, expansion=True))
        )
    for name, seconds, _ in rows[1:]:
        print(f"[{kind}] {name}: {seconds:.3f} s, {seconds / ours_time:.1f}x ours")

    lines = [
        f"**{kind}**: {n:,} points, {args.dims} dims, radius {radius:.4g}, {ours.shape[1]:,} edges "
        f"({degree:.1f} neighbours per point)",
        "",
        "| method | seconds | time / ours | edges differing from ours (all on the radius up to rounding) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {seconds:.3f} | {seconds / ours_time:.1f} | {diff} |" for name, seconds, diff in rows]
    return lines + [""]


def track_rows(args, rng: np.random.Generator) -> list[str]:
    """Tracks of ~10 consecutive hits plus random fake edges, ~args.edges scored edges."""
    hits = int(args.edges * 0.4)
    ends = np.sort(rng.choice(np.arange(1, hits), hits // 10, replace=False))
    starts = np.r_[0, ends]
    same_track = np.ones(hits - 1, dtype=bool)
    same_track[starts[1:] - 1] = False
    true_src = np.flatnonzero(same_track)
    fake = args.edges - true_src.size
    source = np.concatenate([true_src, rng.integers(0, hits, fake)])
    target = np.concatenate([true_src + 1, rng.integers(0, hits, fake)])
    logits = np.concatenate([rng.normal(3, 2, true_src.size), rng.normal(-3, 2, fake)]).astype(np.float32)
    shuffle = rng.permutation(source.size)
    edges = np.stack([source[shuffle], target[shuffle]])
    logits = logits[shuffle]
    cut = 0.75

    def scipy_components():
        kept = 1 / (1 + np.exp(-logits)) > cut
        graph = coo_array((np.ones(int(kept.sum())), (edges[0, kept], edges[1, kept])), shape=(hits, hits))
        return connected_components(graph, directed=False)[1]

    ours_time, ours = timed(lambda: build_tracks(hits, edges, logits, cut), args.repeats)
    scipy_time, theirs = timed(scipy_components, args.repeats)
    _, first = np.unique(theirs, return_index=True)
    relabel = np.empty(first.size, dtype=np.int64)
    relabel[np.argsort(first)] = np.arange(first.size)
    if not np.array_equal(relabel[theirs], ours):
        raise AssertionError("build_tracks and scipy disagree on the partition")
    print(f"[tracks] ours {ours_time:.3f} s, scipy {scipy_time:.3f} s, {scipy_time / ours_time:.2f}x ours")
    return [
        f"**track building**: {hits:,} hits, {edges.shape[1]:,} scored edges, cut 0.75, "
        f"{int(ours.max()) + 1:,} tracks",
        "",
        "| method | seconds | time / ours |",
        "| --- | ---: | ---: |",
        f"| trackserve build_tracks (threshold + components + labels) | {ours_time:.3f} | 1.0 |",
        f"| scipy connected_components (sigmoid + threshold + coo_array) | {scipy_time:.3f} | "
        f"{scipy_time / ours_time:.2f} |",
        "",
    ]


def main(argv=None) -> int:
    """Time graph and track building against the references, print and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=positive_int, default=FULL["points"],
                        help=f"points per graph (default {FULL['points']}; more than --per-cluster, so that every "
                        "point has that many neighbours to set the radius by)")
    parser.add_argument("--dims", type=positive_int, default=8, help="embedding dimensions (default 8)")
    parser.add_argument("--per-cluster", type=positive_int, default=10,
                        help="points per cluster and target neighbours (default 10)")
    parser.add_argument("--edges", type=positive_int, default=FULL["edges"],
                        help=f"scored edges for track building (default {FULL['edges']}; at least {MIN_EDGES})")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                        help="threads for every method (default: the machine's cores)")
    parser.add_argument("--repeats", type=positive_int, default=FULL["repeats"],
                        help=f"runs per method (median; default {FULL['repeats']}); FAISS runs once")
    parser.add_argument("--kinds", type=comma_choices(KINDS), default=list(KINDS),
                        help=f"comma list of point sets among {', '.join(KINDS)} (default: both)")
    parser.add_argument("--skip-faiss", action="store_true", help="leave FAISS out (it takes tens of seconds)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update RESULTS.md")
    args = parser.parse_args(argv)
    if args.points <= args.per_cluster:
        # radius_for takes the distance to the per_cluster-th neighbour: with fewer other points it is infinite
        parser.error(f"argument --points: must be more than --per-cluster ({args.per_cluster}) so that the radius "
                     f"(the distance to the {args.per_cluster}th neighbour) is finite, got {args.points}")
    if args.edges < MIN_EDGES:
        parser.error(f"argument --edges: must be >= {MIN_EDGES} (0.4 of them are the hits of the track-building "
                     f"event), got {args.edges}")
    watch = LoadWatch()  # before the benchmark's own work raises the load

    rng = np.random.default_rng(2024)
    body = []
    for kind in args.kinds:
        body += graph_rows(kind, args, rng)
    body += track_rows(args, rng)
    watch.finish()
    changes = [f"{args.points:,} points instead of {FULL['points']:,}"] if args.points < FULL["points"] else []
    changes += [f"{args.edges:,} scored edges instead of {FULL['edges']:,}"] if args.edges < FULL["edges"] else []
    changes += [f"medians of {args.repeats} runs instead of {FULL['repeats']}"] if args.repeats < FULL["repeats"] else []
    changes += [f"only the point sets {', '.join(args.kinds)}"] if set(KINDS) - set(args.kinds) else []
    changes += ["FAISS left out (`--skip-faiss`)"] if args.skip_faiss else []
    reduced = reduced_run_note(changes)
    lines = [
        f"Machine: {machine_description()}",
        "",
        f"Threads: ours `threads={args.threads}`; FAISS `omp_set_num_threads({args.threads})`; "
        f"cKDTree `query_ball_point(workers={args.threads})`, `query_pairs` has no workers option "
        "(1 thread); scipy connected_components is single-threaded. Medians of "
        f"{args.repeats} runs (FAISS: 1 run). Our graph building keeps its few BLAS products (a sample's covariance and distances) on the calling thread. " + watch.note(),
        "",
        *([reduced, ""] if reduced else []),
    ]
    publish("graph_building", "bench_graph_building.py", lines + body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
