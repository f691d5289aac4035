"""Our Pipeline against the way ExaTrkX users run the same pipeline today, side by side.

Baseline (same bundle, same weights): the PyTorch eager networks rebuilt by
``load_torch_network`` under ``torch.inference_mode``; graph building as the published
service did it on a CPU, ``faiss.IndexFlatL2.range_search`` with the bundle's radius,
then the bundle's cap and direction rule written plainly (self-pairs dropped, each hit's
neighbours ranked by (distance, index), a pair kept when it is among the K nearest of
either end); the filter in the same edge chunks; ``scipy.sparse.csgraph.connected_components``
on the edges with ``sigmoid(score) > cut`` (for a ``best_edges`` bundle, after keeping each
hit's best inward and outward edge, and with a gap cut the best weaker edges of the hits
left without one, written plainly with ``numpy.maximum.at``; with piece joining, the
pieces' lines and the joins written plainly with ``numpy.add.at`` and ``numpy.minimum.at``
and scipy's components over the pieces). Ours: :class:`trackserve.runtime.pipeline.Pipeline`.

On the benchmark events ours is timed three times: one event at a time (every pool at the
full thread count, like the baseline) and with as many events in flight as threads
(``Pipeline.run_many`` with ``event_workers``, one thread per pool each), on threads (what
``trackserve run`` chooses for several events when the threads are the machine's 2 cores)
and in worker processes (``event_executor="processes"``, started before the rounds).

Events: the 100 published benchmark events (feature CSVs, 3 features) and a full-size
simulated event (``simulate_event`` with the real particles of ``event000001000``, the
bundle's features). Thread pools are set explicitly and identically: torch, faiss
(OpenMP), ONNX Runtime intra-op, our graph threads. Warm-up first, then rounds, each
one pass of every side in turn (a slow spell of a shared machine falls on both sides);
ratios are the median of the rounds' ratios. Labels are compared event by event as
partitions; a difference is explained by the first stage whose output differs (graph
edges on the radius, scores at the cut).

``python benchmarks/bench_runtime.py [--bundle models/default] [--threads 2] [--quick] [--sim-bundle DIR]
[--no-write]`` writes the section ``runtime_vs_baseline`` of ``benchmarks/RESULTS.md`` (for a bundle other
than the default, ``runtime_vs_baseline_<its directory name>``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_array
from scipy.spatial import cKDTree
from scipy.sparse.csgraph import connected_components

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from trackserve.commands.run import PROCESSES_MIN_EVENTS  # noqa: E402
from _results import (LRT_EVENTS, LoadWatch, bundle_description, bundle_section, interleaved_rounds,  # noqa: E402
                      load_bundle_option, machine_description, median_pass, positive_int, publish, published_events,
                      ratio_text, reduced_run_note, round_ratios, use_checkout_in_children)

SHARED = REPO.parent / "shared" / "data"
PARTICLES = SHARED / "trackml" / "event000001000-particles.csv"
STAGES = ("embed", "graph", "filter", "gnn", "tracks")


def set_threads(threads: int) -> dict:
    """Set every pool to ``threads``; return the settings to print."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    return {"torch.set_num_threads": threads, "faiss.omp_set_num_threads": threads,
            "trackserve intra_op_threads (parts of each network stage on single-threaded ONNX Runtime calls)": threads,
            "graph_threads": threads}


class Baseline:
    """The same pipeline as ExaTrkX users run it: eager PyTorch, FAISS, scipy."""

    def __init__(self, bundle, chunk: int):
        from trackserve.export.bundle_networks import load_torch_network

        self.nets = {name: load_torch_network(bundle, name) for name in bundle.networks}
        self.stages = bundle.stages
        self.feature_names, self.feature_scales = list(bundle.feature_names), list(bundle.feature_scales)
        self.chunk = chunk

    def graph(self, points: np.ndarray) -> np.ndarray:
        """faiss range search, then the cap and direction rule, straightforwardly."""
        import faiss

        n = points.shape[0]
        index = faiss.IndexFlatL2(points.shape[1])
        index.add(points)
        limits, distances, neighbours = index.range_search(points, float(np.float32(self.stages.radius) ** 2))
        query = np.repeat(np.arange(n), np.diff(limits.astype(np.int64)))
        neighbours = neighbours.astype(np.int64)
        other = query != neighbours
        query, neighbours, distances = query[other], neighbours[other], distances[other]
        order = np.lexsort((neighbours, distances, query))  # per hit: nearest first, ties by index
        query, neighbours = query[order], neighbours[order]
        starts = np.searchsorted(query, np.arange(n))
        rank = np.arange(query.size) - starts[query]
        near = rank < self.stages.max_neighbours
        # a pair is kept when either end has the other among its K nearest
        pairs = np.unique(np.stack([np.minimum(query, neighbours), np.maximum(query, neighbours)])[:, near], axis=1)
        small, large = pairs
        direction = self.stages.edge_direction
        if direction == "i<j":
            edges = np.stack([small, large])
        elif direction == "i>j":
            edges = np.stack([large, small])
        else:
            edges = np.concatenate([np.stack([small, large]), np.stack([large, small])], axis=1)
        return edges[:, np.lexsort((edges[1], edges[0]))]

    def ends(self, features, edges):
        """(inner, outer) hit of each edge by distance from the origin, plainly."""
        names, scales = self.feature_names, self.feature_scales
        distance = np.hypot(features[:, names.index("r")] * scales[names.index("r")],
                            features[:, names.index("z")] * scales[names.index("z")])
        swap = (distance[edges[0]] > distance[edges[1]]) | ((distance[edges[0]] == distance[edges[1]]) & (edges[0] > edges[1]))
        return np.where(swap, edges[1], edges[0]), np.where(swap, edges[0], edges[1])

    @staticmethod
    def best_of_each_hit(num_hits, end, value, among):
        """Which edges (of those in ``among``) have the highest ``value`` of their ``end`` hit, the earliest on ties."""
        index = np.arange(end.size)
        best = np.full(num_hits, -np.inf)
        np.maximum.at(best, end[among], value[among])
        top = among & (value == best[end])
        earliest = np.full(num_hits, end.size)
        np.minimum.at(earliest, end[top], index[top])
        return top & (earliest[end] == index)

    def best_edges(self, num_hits, inner, outer, logits):
        """Each hit's best outward and inward edge (edges oriented by ``ends``), plainly: a mask."""
        every = np.ones(inner.size, dtype=bool)
        keep = self.best_of_each_hit(num_hits, inner, logits, every) | self.best_of_each_hit(num_hits, outer, logits, every)
        return keep & (inner != outer)

    def gap_edges(self, num_hits, inner, outer, logits, kept):
        """The edges that are the best of both of their free ends (no kept edge on that side), plainly: a mask."""
        has_out = np.zeros(num_hits, dtype=bool)
        has_out[inner[kept]] = True
        has_in = np.zeros(num_hits, dtype=bool)
        has_in[outer[kept]] = True
        free = ~kept & (inner != outer) & ~has_out[inner] & ~has_in[outer]
        return self.best_of_each_hit(num_hits, inner, logits, free) & self.best_of_each_hit(num_hits, outer, logits, free)

    def join_pieces(self, features, edges, logits, labels):
        """The bundle's piece joining, plainly: per round, each piece's lines phi(r) and z(r)
        from sums accumulated with ``numpy.add.at``, each candidate's residual, the lowest
        at both ends with ``numpy.minimum.at``, and scipy's components over the pieces."""
        settings = self.stages.join_pieces
        names, scales = self.feature_names, self.feature_scales
        r, phi, z = (features[:, names.index(name)].astype(np.float64) * float(scales[names.index(name)])
                     for name in ("r", "phi", "z"))
        p = settings.min_score
        threshold = -np.inf if p == 0 else (np.inf if p == 1 else float(np.log(p) - np.log1p(-p)))
        passing = logits.astype(np.float64) > threshold
        inner, outer = self.ends(features, edges[:, passing])
        n = features.shape[0]
        distance = np.hypot(r, z)
        wrap = lambda angle: np.remainder(angle + np.pi, 2.0 * np.pi) - np.pi  # noqa: E731
        labels = labels.astype(np.int64)
        for _ in range(settings.rounds):
            count = int(labels.max()) + 1
            order = np.lexsort((np.arange(n), distance, labels))
            first_of = np.full(count, -1)
            last_of = np.full(count, -1)
            first_of[labels[order[::-1]]] = order[::-1]  # the last write wins: the first hit
            last_of[labels[order]] = order
            size = np.zeros(count)
            np.add.at(size, labels, 1.0)
            turned = wrap(phi - phi[first_of][labels])
            sums = []
            for value in (r, r * r, turned, r * turned, z, r * z):
                total = np.zeros(count)
                np.add.at(total, labels, value)
                sums.append(total)
            sr, srr, sp, srp, sz, srz = sums
            den = size * srr - sr * sr
            fitted = (size >= 2) & (den > 1e-9 * np.maximum(size * srr, 1.0))
            den = np.where(fitted, den, 1.0)
            phi_slope = (size * srp - sr * sp) / den
            phi_zero = (sp - phi_slope * sr) / np.maximum(size, 1)
            z_slope = (size * srz - sr * sz) / den
            z_zero = (sz - z_slope * sr) / np.maximum(size, 1)
            low, high = labels[inner], labels[outer]
            ok = (last_of[low] == inner) & (first_of[high] == outer) & (low != high)
            a, b, lo, hi = inner[ok], outer[ok], low[ok], high[ok]

            def miss(piece, hit):
                across = np.abs(wrap(phi[hit] - phi[first_of][piece] - phi_zero[piece] - phi_slope[piece] * r[hit])) * r[hit]
                along = np.abs(z[hit] - z_zero[piece] - z_slope[piece] * r[hit])
                value = np.maximum(across / settings.transverse_mm, along / settings.z_mm)
                return np.where(fitted[piece], value, np.inf)

            from_low, from_high = miss(lo, b), miss(hi, a)
            residual = np.where(fitted[lo] & fitted[hi], np.maximum(from_low, from_high), np.inf)
            if settings.single_hit_scale > 0:
                lone_high = (size[hi] == 1) & (size[lo] >= 3) & fitted[lo]
                lone_low = (size[lo] == 1) & (size[hi] >= 3) & fitted[hi]
                residual = np.where(lone_high, from_low / settings.single_hit_scale, residual)
                residual = np.where(lone_low, from_high / settings.single_hit_scale, residual)
            good = residual < 1.0
            a, b, lo, hi, residual = a[good], b[good], lo[good], hi[good], residual[good]
            index = np.arange(residual.size)
            chosen = np.ones(residual.size, dtype=bool)
            for end in (a, b):
                lowest = np.full(n, np.inf)
                np.minimum.at(lowest, end, residual)
                top = residual == lowest[end]
                earliest = np.full(n, residual.size)
                np.minimum.at(earliest, end[top], index[top])
                chosen &= top & (earliest[end] == index)
            if not chosen.any():
                break
            pieces = coo_array((np.ones(int(chosen.sum())), (lo[chosen], hi[chosen])), shape=(count, count))
            labels = connected_components(pieces, directed=False)[1][labels]
        return labels

    def gnn(self, x, edges):
        """GNN logits of the filtered ``edges``; with a pruner, the GNN on the edges it passes only."""
        import torch

        if "pruner" not in self.nets:
            return self.nets["gnn"](x, edges)
        logits = self.nets["pruner"](x, edges)
        keep = torch.sigmoid(logits) > self.stages.prune_cut
        if keep.any():
            logits[keep] = self.nets["gnn"](x, edges[:, keep])
        return logits

    def run(self, features: np.ndarray):
        """(labels, per-stage seconds, intermediate results) of one event."""
        import torch

        times, out = {}, {}
        with torch.inference_mode():
            x = torch.from_numpy(features)
            t = time.perf_counter()
            points = self.nets["embedding"](x).numpy()
            times["embed"] = time.perf_counter() - t
            t = time.perf_counter()
            edges = self.graph(np.ascontiguousarray(points))
            times["graph"] = time.perf_counter() - t
            t = time.perf_counter()
            scores = [torch.sigmoid(self.nets["filter"](x, torch.from_numpy(edges[:, b:b + self.chunk]))).numpy()
                      for b in range(0, edges.shape[1], self.chunk)]
            filter_prob = np.concatenate(scores) if scores else np.zeros(0, np.float32)
            kept = np.ascontiguousarray(edges[:, filter_prob > self.stages.filter_cut])
            times["filter"] = time.perf_counter() - t
            t = time.perf_counter()
            gnn_logits = self.gnn(x, torch.from_numpy(kept)) if kept.shape[1] else torch.zeros(0)
            gnn_prob = torch.sigmoid(gnn_logits).numpy()
            times["gnn"] = time.perf_counter() - t
        t = time.perf_counter()
        n = features.shape[0]
        # Cuts on the probabilities; the best edges ranked by the logits (float32 probabilities
        # round many confident edges to exactly 1).
        gnn_logits = gnn_logits.numpy()
        gap_cut = self.stages.gap_cut
        if self.stages.track_building != "best_edges":
            good = kept[:, gnn_prob > self.stages.gnn_cut]
        else:
            weak = gnn_prob > (self.stages.gnn_cut if gap_cut is None else gap_cut)
            candidates, logits = kept[:, weak], gnn_logits[weak]
            inner, outer = self.ends(features, candidates)
            strong = gnn_prob[weak] > self.stages.gnn_cut
            chosen = np.zeros(logits.size, dtype=bool)
            chosen[strong] = self.best_edges(n, inner[strong], outer[strong], logits[strong])
            if gap_cut is not None:
                chosen |= self.gap_edges(n, inner, outer, logits, chosen)
            good = candidates[:, chosen]
        graph = coo_array((np.ones(good.shape[1]), (good[0], good[1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        if self.stages.join_pieces is not None and self.stages.track_building == "best_edges":
            labels = self.join_pieces(features, kept, gnn_logits, labels)
        times["tracks"] = time.perf_counter() - t
        out.update(points=points, edges=edges, filter_prob=filter_prob, kept=kept, gnn_prob=gnn_prob)
        return labels, times, out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings group the hits identically."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def explain(pipeline, features, base_out) -> str:
    """The first stage where ours and the baseline differ, and by how much."""
    emb = pipeline.embed(features)
    edges = pipeline.build_graph(emb)
    r = pipeline.stages.radius
    if edges.shape != base_out["edges"].shape or not np.array_equal(edges, base_out["edges"]):
        n = features.shape[0]
        ours = set((edges[0] * n + edges[1]).tolist())
        theirs = set((base_out["edges"][0] * n + base_out["edges"][1]).tolist())
        diff = np.array(sorted(ours ^ theirs), dtype=np.int64)
        points = emb.astype(np.float64)
        first, second = diff // n, diff % n
        d = np.sqrt(((points[first] - points[second]) ** 2).sum(1))
        # FAISS computes |a|^2 + |b|^2 - 2 a.b in float32: its squared distance may be off by
        # a few float32 ulps of |a|^2 + |b|^2, far more than ours (the rule's direct sum).
        norms = (points**2).sum(1)
        slack = np.maximum(1e-4, 8 * 2.0**-24 * (norms[first] + norms[second]) / np.maximum(d**2, 1e-30))
        on_radius = np.abs(d**2 / r**2 - 1) <= slack
        # With the cap, a pair is decided by each end's K-th nearest distance, where the two
        # roundings can order near-equal distances differently.
        k = pipeline.stages.max_neighbours
        ends = np.unique(np.concatenate([first, second]))
        near, _ = cKDTree(points).query(points[ends], k=min(k + 1, n))
        kth = dict(zip(ends.tolist(), near[:, -1].tolist())) if near.shape[1] == k + 1 else {}
        at_cap = np.array([any(abs(dist**2 / kth[e] ** 2 - 1) <= tol for e in (a, b) if e in kth and kth[e] < r)
                           for a, b, dist, tol in zip(first.tolist(), second.tolist(), d.tolist(), slack.tolist())],
                          dtype=bool)
        other = ~(on_radius | at_cap)
        return (f"graph: {diff.size} edges differ: {int(on_radius.sum())} on the radius, "
                f"{int((at_cap & ~on_radius).sum())} at an end's K-th nearest distance (the cap), "
                f"{int(other.sum())} otherwise (within FAISS's float32 rounding: "
                f"|d^2 / x^2 - 1| <= max(1e-4, 8 ulp of |a|^2 + |b|^2 over d^2))")
    _, logits = pipeline.filter_edges(features, edges)
    cut = pipeline.stages.filter_cut
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    flip = (p > cut) != (base_out["filter_prob"] > cut)
    if flip.any():
        return f"filter: {int(flip.sum())} edges cross the cut, |p - cut| <= {np.abs(p[flip] - cut).max():.1e}"
    return "gnn: scores at the cut"


def timed_pass(function, events):
    """One pass of ``function`` over ``events``: (seconds per stage summed over events, wall seconds)."""
    stage = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    for features in events:
        for key, value in function(features).items():
            if key in stage:
                stage[key] += value
    return stage, time.perf_counter() - start


def in_flight_pass(in_flight, events):
    """One pass of ``in_flight.run_many`` over ``events``: (no stage times, wall seconds)."""
    start = time.perf_counter()
    for _result in in_flight.run_many(events):
        pass
    return None, time.perf_counter() - start


def compare(name, pipeline, baseline, events, repeats, lines, in_flight=None) -> tuple[float, int, dict]:
    """Time both on ``events`` in interleaved rounds, check the labels, add a table to ``lines``;
    return (median per-round ratio, identical, the median per-round ratio of each pipeline of
    ``in_flight``: pipelines by executor name whose ``run_many`` keeps several events in
    flight, timed in the same rounds)."""
    identical, notes = 0, []
    theirs_all = []
    for i, features in enumerate(events):
        ours = pipeline.run(features).labels
        theirs, _, out = baseline.run(features)
        theirs_all.append(theirs)
        if same_partition(ours, theirs):
            identical += 1
        else:
            notes.append(f"event {i}: {explain(pipeline, features, out)}")
    in_flight = in_flight or {}
    same_in_flight = {}
    passes = {"ours": lambda: timed_pass(lambda f: pipeline.run(f).timings, events),
              "baseline": lambda: timed_pass(lambda f: baseline.run(f)[1], events)}
    for executor, runner in in_flight.items():
        same_in_flight[executor] = sum(same_partition(r.labels, t) for r, t in zip(runner.run_many(events), theirs_all))
        passes[executor] = lambda runner=runner: in_flight_pass(runner, events)
    rounds = interleaved_rounds(passes, repeats)
    (ours_stage, ours_wall), (base_stage, base_wall) = median_pass(rounds["ours"]), median_pass(rounds["baseline"])
    count = len(events)
    lines += [f"**{name}**: {count} events, {sum(e.shape[0] for e in events) / count:,.0f} hits per event "
              f"on average; {repeats} rounds after a warm-up, each one pass of every side in turn; times from the "
              f"median pass of each side, ratios the median of the rounds' ratios. Identical partitions: "
              f"{identical}/{count}.", "",
              "| stage | baseline (ms/event) | ours (ms/event) | baseline / ours |", "| --- | ---: | ---: | ---: |"]
    for stage in STAGES:
        b, o = base_stage[stage] / count * 1e3, ours_stage[stage] / count * 1e3
        lines.append(f"| {stage} | {b:.2f} | {o:.2f} | {b / o if o else float('nan'):.2f}x |")
    ratios = round_ratios(rounds["baseline"], rounds["ours"])
    ratio = statistics.median(ratios)
    lines += [f"| **events per second** (one event at a time) | {count / base_wall:.2f} | {count / ours_wall:.2f} | "
              f"{ratio_text(ratios)} |"]
    flight_ratio = {}
    for executor, runner in in_flight.items():
        flight_ratios = round_ratios(rounds["baseline"], rounds[executor])
        flight_ratio[executor] = statistics.median(flight_ratios)
        flight_wall = median_pass(rounds[executor])[1]
        config = runner.config
        how = (f"on threads, as `trackserve run` runs fewer than {PROCESSES_MIN_EVENTS} events" if executor == "threads"
               else f"in worker processes, as `trackserve run` runs {PROCESSES_MIN_EVENTS} events or more "
               "(`--event-executor processes`)")
        lines.append(f"| **events per second**, ours with {config.event_workers} events in flight {how} "
                     f"({config.resolved_intra_op_threads} network / {config.resolved_graph_threads} graph thread "
                     f"each; identical partitions {same_in_flight[executor]}/{count}) | {count / base_wall:.2f} | "
                     f"{count / flight_wall:.2f} | {ratio_text(flight_ratios)} |")
    lines.append("")
    lines += [f"- {note}" for note in notes[:10]] + ([""] if notes else [])
    return ratio, identical, flight_ratio


#: The full run's settings and those of ``--quick``; ``--repeats`` and ``--sim-repeats`` override either.
FULL = {"events": 100, "repeats": 5, "sim_repeats": 2, "sim_particles": None}
QUICK = {"events": 20, "repeats": 1, "sim_repeats": 1, "sim_particles": 1500}


def simulated_event(spec, num_particles: int | None) -> tuple[np.ndarray, str]:
    """Features of an event simulated from the real particles of event000001000 (all of them,
    or the first ``num_particles``), and its name, which gives its size."""
    from trackserve.events.features import hit_features
    from trackserve.events.geometry import load_geometry
    from trackserve.events.simulate import simulate_event
    from trackserve.events.trackml import read_particles

    particles = read_particles(PARTICLES)
    if num_particles is not None:
        particles = {key: value[:num_particles] for key, value in particles.items()}
    features = hit_features(simulate_event(load_geometry(), particles, seed=1).hits, spec)
    source = PARTICLES.name.split("-")[0]
    if num_particles is None:
        return features, f"simulated full event ({features.shape[0]:,} hits, the particles of {source})"
    return features, (f"simulated event of {features.shape[0]:,} hits (the first {num_particles:,} particles of "
                      f"{source}, not a full event)")


def parse_arguments(argv):
    """The options, with the settings ``--quick`` leaves to explicit options resolved, and the
    bundles loaded and checked (a bad path is a one-line error before any work):
    (args, bundle, simulated-event bundle)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"),
                        help="bundle both sides run (default: models/default); the benchmark events need one of 3 "
                        "features")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="threads of every pool on both sides (torch, faiss's OpenMP, ONNX Runtime intra-op, "
                        "graph building), and the events in flight for the in-flight rows (default 2)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help=f"timed rounds over the benchmark events, one pass of each side per round (default "
                        f"{FULL['repeats']}; {QUICK['repeats']} with --quick)")
    parser.add_argument("--sim-repeats", type=positive_int, default=None,
                        help=f"timed rounds of the simulated event (default {FULL['sim_repeats']}; "
                        f"{QUICK['sim_repeats']} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a quick check: {QUICK['events']} benchmark events instead of {FULL['events']}, a "
                        f"simulated event of the first {QUICK['sim_particles']:,} particles instead of the full event, "
                        "and the --quick defaults of --repeats and --sim-repeats (explicit values override them); "
                        "the section says it is a reduced run")
    parser.add_argument("--sim-bundle", default=None,
                        help="bundle for the simulated event (default: --bundle); the benchmark events need a "
                        "3-feature bundle, the simulated event a bundle trained for full-density events")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    args.events, args.sim_particles = settings["events"], settings["sim_particles"]
    args.repeats = settings["repeats"] if args.repeats is None else args.repeats
    args.sim_repeats = settings["sim_repeats"] if args.sim_repeats is None else args.sim_repeats
    if not PARTICLES.is_file():
        parser.error(f"the simulated event needs the particles of {PARTICLES.name}, not found at {PARTICLES} "
                     "(the shared data folder next to the repository)")
    bundle = load_bundle_option(parser, "--bundle", args.bundle)
    sim_bundle = None if args.sim_bundle is None else load_bundle_option(parser, "--sim-bundle", args.sim_bundle)
    return args, bundle, sim_bundle


def reduced_settings(args, benchmark_events: bool) -> list[str]:
    """What this run does below the full run's settings, each in words (none for a full run)."""
    changes = []
    if benchmark_events and args.events < FULL["events"]:
        changes.append(f"{args.events} benchmark events instead of {FULL['events']}")
    if benchmark_events and args.repeats < FULL["repeats"]:
        changes.append(f"{args.repeats} round(s) on the benchmark events instead of {FULL['repeats']}")
    if args.sim_particles is not None:
        changes.append(f"a simulated event of the first {args.sim_particles:,} particles instead of the full event")
    if args.sim_repeats < FULL["sim_repeats"]:
        changes.append(f"{args.sim_repeats} round(s) on the simulated event instead of {FULL['sim_repeats']}")
    return changes


def stage_settings(bundle) -> str:
    """The bundle's graph, cuts and track building, in a few words."""
    stages = bundle.stages
    return (f"track building {stages.track_building}; radius {stages.radius:.4g}, K {stages.max_neighbours}, cuts "
            f"{stages.filter_cut}/{stages.gnn_cut}" + ("" if stages.gap_cut is None else f", gap cut {stages.gap_cut}")
            + ("" if stages.join_pieces is None else f", piece joining ({stages.join_pieces.describe()})"))


def main(argv=None) -> int:
    """Run the comparison, print the tables and write the RESULTS.md section."""
    args, bundle, sim_bundle = parse_arguments(argv)
    use_checkout_in_children()  # the worker processes import this checkout too
    watch = LoadWatch()  # before the benchmark's own work raises the load

    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline
    from trackserve.runtime.vertex_shifts import shifts_in_words

    threads = set_threads(args.threads)
    # One pass on both sides: the baseline has no vertex shifts, so a bundle's own are left out.
    one_pass = (0.0,)
    config = RuntimeConfig(intra_op_threads=args.threads, graph_threads=args.threads, vertex_shifts=one_pass)
    pipeline = Pipeline(bundle, config=config)
    baseline = Baseline(bundle, config.edge_chunk_size)
    lines = [f"The bundle's vertex shifts ({shifts_in_words(shifts)}) are left out: both sides run each event in one "
             "pass, as the baseline has no shifts.", ""] if (shifts := bundle.stages.vertex_shifts) else []
    ratio = flight_ratio = None
    benchmark_events = bundle.num_features == 3 and LRT_EVENTS.is_dir()
    if bundle.num_features != 3:
        lines += [f"The benchmark events have 3 features, the bundle {bundle.num_features}: skipped.", ""]
    elif not LRT_EVENTS.is_dir():
        lines += [f"The published benchmark events are absent ({LRT_EVENTS}): skipped.", ""]
    else:
        events = published_events(args.events)
        for features in events[:5]:  # warm-up
            pipeline.run(features), baseline.run(features)
        in_flight = {executor: Pipeline(bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1,
                                                                     event_workers=args.threads, event_executor=executor,
                                                                     vertex_shifts=one_pass))
                     for executor in ("threads", "processes")}
        for runner in in_flight.values():  # warm-up (and the worker processes' start)
            for _result in runner.run_many(events[:10]):
                pass
        ratio, _, flight_ratio = compare("published benchmark events (lrt_events)", pipeline, baseline, events,
                                         args.repeats, lines, in_flight)
        in_flight["processes"].close()
    if sim_bundle is not None:
        pipeline, baseline = Pipeline(sim_bundle, config=config), Baseline(sim_bundle, config.edge_chunk_size)
        lines += [f"Simulated event: bundle {bundle_description(sim_bundle, args.sim_bundle)}; {stage_settings(sim_bundle)}.",
                  ""]
    big, big_name = simulated_event(pipeline.feature_spec, args.sim_particles)
    # compare() runs both once to check the labels before timing: that is the warm-up here.
    compare(big_name, pipeline, baseline, [big], args.sim_repeats, lines)
    watch.finish()
    if ratio is not None:
        def verdict(value: float) -> str:
            return ("met" if value >= 3 else "NOT met") + watch.provisional()

        threads_ratio, processes = flight_ratio["threads"], flight_ratio["processes"]
        lines.append(f"Target: ours >= 3x the baseline's throughput on the benchmark events: with {args.threads} events "
                     f"in flight in worker processes (`RuntimeConfig(event_workers={args.threads}, intra_op_threads=1, "
                     f"graph_threads=1, event_executor=\"processes\")`, what `trackserve run` does with {PROCESSES_MIN_EVENTS} events or more) "
                     f"{verdict(processes)} ({processes:.2f}x); on threads (what `trackserve run` "
                     f"does with fewer events on {args.threads} cores) "
                     f"{verdict(threads_ratio)} ({threads_ratio:.2f}x); one event at a time "
                     f"(`Pipeline.run`, `trackserve run --event-workers 1`) {verdict(ratio)} "
                     f"({ratio:.2f}x). The baseline runs one event at a time with every pool at the full thread count, "
                     "as the published service's scripts do."
                     + (" Provisional: the machine was busy at the start or during the run (the load note above); "
                        "rerun on a quiet machine for a verdict." if watch.busy else ""))
    rescaled = bundle.provenance.get("rescaled", {}).get("from_features", {}).get("names")
    header = [f"Machine: {machine_description()}.", "",
              "Threads: " + ", ".join(f"{k}={v}" for k, v in threads.items()) + f"; {args.threads} cores for both.",
              f"Bundle: {bundle_description(bundle, args.bundle)}"
              + (f"; rescaled from the features {', '.join(rescaled)}" if rescaled else "")
              + f"; {stage_settings(bundle)}. " + watch.note(), ""]
    reduced = reduced_run_note(reduced_settings(args, benchmark_events), "--quick" if args.quick else None)
    if reduced:
        header += [reduced, ""]
    section = bundle_section(args.bundle, "runtime_vs_baseline", "runtime_vs_baseline_")
    publish(section, "bench_runtime.py", header + lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
