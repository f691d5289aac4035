"""Benchmark of ``trackserve simulate``: time to simulate (and write) TrackML-sized events.

Sources, side by side in one run: the two real full-event particle tables in
``<repo>/../shared/data/trackml`` (skipped with a note when absent) and random particles
(as many as give about the same number of hits). For each: hits produced (and the real
event's hit count, for comparison), the simulation time (best of ``--repeats``), its
ratio to the 10 s budget for a 100k-hit event, and the time to write the event as CSV.

Run: ``python benchmarks/bench_simulate.py [--repeats N] [--small] [--no-write]``; writes the
"simulate" section of ``benchmarks/RESULTS.md``. ``--small`` simulates a tenth of each
source, for a quick check that the script works (the section says it is a reduced run).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LoadWatch, machine_description, positive_int, publish, reduced_run_note,  # noqa: E402
                      stop_cleanly_on_sigterm)

from trackserve.events.geometry import load_geometry  # noqa: E402
from trackserve.events.simulate import SimulationConfig, simulate_event  # noqa: E402
from trackserve.events.trackml import read_particles, write_event  # noqa: E402

SHARED_DATA = REPO / ".." / "shared" / "data" / "trackml"
TABLES = ("event000001000-particles.csv", "event000021139-particles.csv")
BUDGET_S = 10.0
#: Random particles per event, chosen to give about 100k particle hits with the default options.
RANDOM_PARTICLES = 8500
#: Runs per source of the full run.
FULL_REPEATS = 3


def _best_time(function, repeats: int):
    """Best wall time of ``repeats`` calls and the last result."""
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=FULL_REPEATS,
                        help=f"runs per source; the best is reported (default {FULL_REPEATS})")
    parser.add_argument("--small", action="store_true",
                        help="a tenth of each source: a quick check (the section says it is a reduced run)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()  # its temporary folder is removed
    fraction = 0.1 if args.small else 1.0
    watch = LoadWatch()  # before the benchmark's own work raises the load

    load_time, geometry = _best_time(load_geometry, 1)
    config = SimulationConfig()
    sources = []
    notes = []
    for name in TABLES:
        path = SHARED_DATA / name
        if not path.is_file():
            notes.append(f"{name} absent from {SHARED_DATA.resolve()}: skipped.")
            continue
        table = read_particles(path)
        keep = int(round(len(table["particle_id"]) * fraction))
        table = {column: values[:keep] for column, values in table.items()}
        sources.append((f"real table `{name.split('-')[0]}`", table, int(table["nhits"].sum())))
    random_config = replace(config, num_particles=int(round(RANDOM_PARTICLES * fraction)))
    sources.append((f"random, {random_config.num_particles} particles", random_config, None))

    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for label, source, real_hits in sources:
            seconds, event = _best_time(lambda source=source: simulate_event(geometry, source, seed=1, config=None if isinstance(source, SimulationConfig) else config), args.repeats)
            write_seconds, _ = _best_time(lambda event=event: write_event(event, directory), 1)
            signal = int(np.count_nonzero(event.truth["particle_id"]))
            per_100k = seconds * 100_000 / max(event.num_hits, 1)
            rows.append((label, event.num_hits, signal, real_hits, seconds, per_100k, write_seconds))
            print(f"{label}: {event.num_hits} hits ({signal} from particles), {seconds:.2f} s, write {write_seconds:.2f} s")

    watch.finish()
    threads = ", ".join(f"{name}={os.environ.get(name)}" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
    reduced = reduced_run_note((["a tenth of each source (`--small`)"] if args.small else [])
                               + ([f"best of {args.repeats} runs instead of {FULL_REPEATS}"]
                                  if args.repeats < FULL_REPEATS else []))
    lines = [
        f"Machine: {machine_description()}. Threads: single-threaded numpy code ({threads}).",
        f"Default options (2 T, smearing pitch/sqrt(12), x/X0 = 0.02 per layer, noise fraction 0.1). "
        f"Best of {args.repeats} runs{'; `--small`: a tenth of each source' if args.small else ''}. "
        f"Geometry load (once): {load_time:.2f} s. " + watch.note(),
        "",
        *([reduced, ""] if reduced else []),
        "| source | hits | particle hits | real event's particle hits | simulated / real | simulate (s) | s per 100k hits | budget 10 s / per-100k time | write CSV (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, hits, signal, real_hits, seconds, per_100k, write_seconds in rows:
        real_text = "-" if real_hits is None else f"{real_hits}"
        ratio_text = "-" if real_hits is None else f"{signal / real_hits:.2f}"
        lines.append(
            f"| {label} | {hits} | {signal} | {real_text} | {ratio_text} | {seconds:.2f} | {per_100k:.2f} | "
            f"{BUDGET_S / per_100k:.1f}x | {write_seconds:.2f} |"
        )
    lines.append("")
    lines.append(
        "The real events' particle hits come from a full simulation with interactions and energy loss, which "
        "stop some particles earlier; this simulation follows every particle through its outgoing half turn."
    )
    lines.extend(notes)
    publish("simulate", "bench_simulate.py", lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
