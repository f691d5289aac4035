"""TrackML event reading and truth graph: trackserve's vectorised code next to plain-Python baselines.

Measures, on a synthetic event of ``--hits`` hits (default 100k, the size of a full
TrackML event) written as CSV and CSV.gz:

* ``read_table`` of the hits file against the standard library's ``csv`` module
  converting every field in Python;
* ``truth_graph`` against a loop over particles (sort each particle's hits, join
  neighbours).

Each figure is the best of ``--repeat`` runs. Writes the ``trackml_io`` section of
``benchmarks/RESULTS.md``. Run: ``python benchmarks/bench_trackml_io.py [--hits 20000] [--repeat 3] [--no-write]``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LoadWatch, machine_description, positive_int, publish, reduced_run_note,  # noqa: E402
                      stop_cleanly_on_sigterm)

from trackserve.events.event import HITS_COLUMNS, Event  # noqa: E402
from trackserve.events.trackml import read_table, write_table  # noqa: E402
from trackserve.events.truth_graph import truth_graph  # noqa: E402

#: The full run's settings.
FULL = {"hits": 100_000, "repeat": 3}


def best_of(repeat: int, function) -> float:
    """The shortest wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def synthetic_hits(num_hits: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A hits table with realistic value widths and the particle id of each hit (15 % noise)."""
    rng = np.random.default_rng(seed)
    hits = {
        "hit_id": np.arange(1, num_hits + 1, dtype=np.int64),
        "x": rng.normal(0, 400, num_hits),
        "y": rng.normal(0, 400, num_hits),
        "z": rng.normal(0, 1200, num_hits),
        "volume_id": rng.integers(7, 19, num_hits),
        "layer_id": rng.integers(2, 15, num_hits),
        "module_id": rng.integers(1, 3000, num_hits),
    }
    particle_ids = np.where(rng.random(num_hits) < 0.15, 0, rng.integers(1, num_hits // 9 + 2, num_hits))
    return hits, (particle_ids * 4503599627370496 + 1).astype(np.int64) * (particle_ids != 0)


def csv_module_read(path: Path) -> dict:
    """Baseline: the standard library's csv reader, converting each field in Python."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        columns = {name: [] for name in header}
        for row in reader:
            for name, value in zip(header, row):
                columns[name].append(value)
    return {name: np.array(columns[name], dtype=dtype) for name, dtype in HITS_COLUMNS.items()}


def loop_truth_graph(event: Event) -> np.ndarray:
    """Baseline: one particle at a time."""
    particle_ids = event.truth["particle_id"]
    x, y, z = event.hits["x"], event.hits["y"], event.hits["z"]
    order = np.argsort(particle_ids, kind="stable")
    boundaries = np.flatnonzero(np.diff(particle_ids[order])) + 1
    sources, targets = [], []
    for rows in np.split(order, boundaries):
        if particle_ids[rows[0]] == 0:
            continue
        path = rows[np.argsort(x[rows] ** 2 + y[rows] ** 2 + z[rows] ** 2, kind="stable")]
        sources.append(path[:-1])
        targets.append(path[1:])
    return np.stack([np.concatenate(sources), np.concatenate(targets)])


def main(argv=None) -> int:
    """Run the measurements, print them and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=positive_int, default=FULL["hits"],
                        help=f"number of hits of the synthetic event (default {FULL['hits']})")
    parser.add_argument("--repeat", type=positive_int, default=FULL["repeat"],
                        help=f"runs per figure; the best is kept (default {FULL['repeat']})")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()  # its temporary folder is removed
    watch = LoadWatch()  # before the benchmark's own work raises the load

    hits, particle_ids = synthetic_hits(args.hits)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in ("event000000001-hits.csv", "event000000001-hits.csv.gz"):
            path = write_table(Path(directory) / name, hits, list(HITS_COLUMNS))
            ours = best_of(args.repeat, lambda: read_table(path, HITS_COLUMNS))
            base = best_of(args.repeat, lambda: csv_module_read(path))
            table, theirs = read_table(path, HITS_COLUMNS), csv_module_read(path)
            differing = [c for c in HITS_COLUMNS if not np.array_equal(table[c], theirs[c])]
            if differing:
                raise SystemExit(f"{name}: read_table and the csv module read other values in {differing}")
            rows.append((f"read `{name.split('-', 1)[1]}`", ours, "csv module", base))

    truth = {"hit_id": hits["hit_id"], "particle_id": particle_ids}
    event = Event(1, hits, truth)
    ours = best_of(args.repeat, lambda: truth_graph(event))
    base = best_of(args.repeat, lambda: loop_truth_graph(event))
    watch.finish()
    if not np.array_equal(truth_graph(event), loop_truth_graph(event)):
        raise SystemExit("truth_graph and the loop over particles give other edges")
    rows.append(("truth_graph", ours, "loop over particles", base))

    threads = ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    reduced = reduced_run_note(
        ([f"{args.hits:,} hits instead of {FULL['hits']:,}"] if args.hits < FULL["hits"] else [])
        + ([f"best of {args.repeat} runs instead of {FULL['repeat']}"] if args.repeat < FULL["repeat"] else []))
    lines = [
        f"Machine: {machine_description()}. Threads: single-threaded numpy code ({threads}).",
        f"Synthetic event of {args.hits:,} hits, best of {args.repeat} runs. " + watch.note(),
        "",
        *([reduced, ""] if reduced else []),
        "| step | trackserve (ms) | baseline | baseline (ms) | speed-up |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for step, ours, baseline, base in rows:
        lines.append(f"| {step} | {ours * 1e3:.1f} | {baseline} | {base * 1e3:.1f} | {base / ours:.1f}x |")
    publish("trackml_io", "bench_trackml_io.py", lines, write=not args.no_write,
            title="TrackML I/O and truth graph")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
