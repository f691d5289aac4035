"""Tracking metrics: the vectorised implementation against a per-track Python loop, side by side.

Builds a synthetic full-size TrackML-like event (default 110,000 hits, 12,000 particles,
15 % noise, a labelling with splits, merges and strays), then times
``track_metrics``, ``trackml_score`` and ``evaluate_event`` (alignment included) against a
straightforward loop over tracks computing the same figures, checks they agree, and
writes the "metrics" section of benchmarks/RESULTS.md.

Run: ``python benchmarks/bench_metrics.py [--hits N] [--repeat R] [--no-write]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LoadWatch, int_at_least, machine_description, positive_int, publish,  # noqa: E402
                      reduced_run_note, significant)
from trackserve.events.event import Event  # noqa: E402
from trackserve.events.metrics import evaluate_event, track_metrics, trackml_score  # noqa: E402

#: The full run's settings.
FULL = {"hits": 110_000, "repeat": 5}
#: The smallest event the comparison is defined on: a smaller one may hold no particle of
#: 5 hits (no efficiency) or no candidate track (no fake rate).
MIN_EVENT_HITS = 100


def synthetic(num_hits: int, seed: int = 0):
    """Particle ids, labels, weights and hit ids of a synthetic event."""
    rng = np.random.default_rng(seed)
    num_particles = max(1, num_hits // 9)
    pids = rng.integers(1, num_particles + 1, num_hits) * 4096 + 17
    pids[rng.random(num_hits) < 0.15] = 0
    _, labels = np.unique(pids, return_inverse=True)
    labels = labels.astype(np.int64)
    split = rng.random(num_hits) < 0.1
    labels[split] += num_hits
    stray = rng.random(num_hits) < 0.05
    labels[stray] = rng.integers(0, num_hits // 10 + 1, int(stray.sum()))
    noise = np.flatnonzero(pids == 0)
    labels[noise] = -1 - np.arange(noise.size)
    weights = rng.random(num_hits) * (pids != 0)
    hit_ids = rng.permutation(num_hits).astype(np.int64) + 1
    return pids, labels, weights, hit_ids


def loop_figures(pids, labels, weights, min_hits: int):
    """Efficiency, fake rate and TrackML score with one Python loop over the tracks."""
    pids, labels, weights = pids.tolist(), labels.tolist(), weights.tolist()
    particle_hits = Counter(pids)
    tracks = defaultdict(list)
    for i, (p, t) in enumerate(zip(pids, labels)):
        tracks[t].append(i)
    found, candidates, matched, score = set(), 0, 0, 0.0
    for hits in tracks.values():
        counts = Counter(pids[i] for i in hits)
        major, n = max(counts.items(), key=lambda item: item[1])
        double = major != 0 and 2 * n > len(hits) and 2 * n > particle_hits[major]
        if double:
            score += sum(weights[i] for i in hits if pids[i] == major)
        signal = [i for i in hits if pids[i] != 0]
        if len(signal) < min_hits:
            continue
        candidates += 1
        counts = Counter(pids[i] for i in signal)
        major, n = max(counts.items(), key=lambda item: item[1])
        if 2 * n > len(signal):
            matched += 1
            if 2 * n > particle_hits[major]:
                found.add(major)
    reconstructable = {p for p, n in particle_hits.items() if p != 0 and n >= min_hits}
    return (
        len(found & reconstructable) / len(reconstructable),
        1 - matched / candidates,
        score / math.fsum(weights),
    )


def best_of(repeat: int, function, *args, **kwargs):
    """The smallest wall time of ``repeat`` calls, and the last result."""
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    """Time both implementations, check agreement, write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int_at_least(MIN_EVENT_HITS), default=FULL["hits"],
                        help=f"hits in the synthetic event (default {FULL['hits']}; at least {MIN_EVENT_HITS}, "
                        "below which the event may hold no particle the figures count)")
    parser.add_argument("--repeat", type=positive_int, default=FULL["repeat"],
                        help=f"timed repetitions, best kept (default {FULL['repeat']})")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    watch = LoadWatch()  # before the benchmark's own work raises the load

    pids, labels, weights, hit_ids = synthetic(args.hits)
    truth = {"hit_id": hit_ids, "particle_id": pids, "weight": weights}
    zeros = np.zeros(args.hits)
    event = Event(
        event_id=1,
        hits={"hit_id": hit_ids, "x": zeros, "y": zeros, "z": zeros},
        truth=dict(truth, tx=zeros, ty=zeros, tz=zeros, tpx=zeros, tpy=zeros, tpz=zeros),
    )
    order = np.random.default_rng(1).permutation(args.hits)

    t_tracks, metrics = best_of(args.repeat, track_metrics, pids, labels, min_hits=5)
    t_score, score = best_of(args.repeat, trackml_score, hit_ids, labels, truth)
    t_event, result = best_of(args.repeat, evaluate_event, event, hit_ids[order], labels[order], min_hits=5)
    t_loop, (loop_eff, loop_fake, loop_score) = best_of(1, loop_figures, pids, labels, weights, 5)
    watch.finish()
    for name, mine, theirs in (
        ("efficiency", metrics.efficiency, loop_eff),
        ("fake_rate", metrics.fake_rate, loop_fake),
        ("trackml_score", score, loop_score),
        ("evaluate_event score", result["trackml_score"], loop_score),
    ):
        if not math.isclose(mine, theirs, rel_tol=1e-12, abs_tol=1e-15):
            raise SystemExit(f"{name}: vectorised {mine!r} != loop {theirs!r}")

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    reduced = reduced_run_note(
        ([f"{args.hits:,} hits instead of {FULL['hits']:,}"] if args.hits < FULL["hits"] else [])
        + ([f"best of {args.repeat} runs instead of {FULL['repeat']}"] if args.repeat < FULL["repeat"] else []))
    lines = [
        f"Machine: {machine_description()}. numpy {np.__version__}; OMP_NUM_THREADS={threads} "
        "(the metrics are single-threaded numpy sorts and counts). " + watch.note(),
        "",
        *([reduced, ""] if reduced else []),
        f"Synthetic event: {args.hits} hits, {metrics.num_particles} particles, "
        f"{int((pids == 0).sum())} noise hits, {metrics.num_tracks} tracks "
        f"(efficiency {metrics.efficiency:.4f}, fake rate {metrics.fake_rate:.4f}, score {score:.4f}; "
        "loop and vectorised agree). Best of "
        f"{args.repeat} runs; the loop once.",
        "",
        "| what | time (ms) | loop / this |",
        "| --- | ---: | ---: |",
        f"| `track_metrics` | {t_tracks * 1e3:.1f} | {significant(t_loop / t_tracks)}x |",
        f"| `trackml_score` (alignment included) | {t_score * 1e3:.1f} | {significant(t_loop / t_score)}x |",
        f"| `evaluate_event` (all figures, shuffled rows) | {t_event * 1e3:.1f} | {significant(t_loop / t_event)}x |",
        f"| Python loop over tracks (efficiency, fake rate, score) | {t_loop * 1e3:.1f} | 1.0x |",
    ]
    publish("metrics", "bench_metrics.py", lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
