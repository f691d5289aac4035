"""Several events in flight against one event at a time: the choice ``trackserve run`` makes.

``trackserve run`` given several events, and neither ``--event-workers`` nor ``--threads``,
keeps one event in flight per core, at most 2, each on its share of the cores
(:func:`trackserve.runtime.config.automatic_event_workers`); a single event runs alone on
every core. This script measures that choice, on threads and in worker processes
(``event_executor="processes"``), against one event at a time on every core (the cores
split between parts of each event), on the same events:

* the 100 published benchmark events (``lrt_events``, 1.3k hits), when present;
* simulated random-particle events on the full detector of about 10k hits (8 of them)
  and 100k hits (2 of them).

Each size runs in interleaved rounds (one pass of each way per round, after a warm-up
pass of each); throughput is events over the wall time of a pass, from the median pass
of each way, and the ratio is the median of the rounds' ratios. The labels of the two
ways are compared event by event.

``python benchmarks/bench_event_workers.py [--bundle models/default] [--quick] [--no-write]``
writes the section ``event_workers`` of ``benchmarks/RESULTS.md`` (for another bundle,
``event_workers_<its directory name>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from trackserve.commands.run import PROCESSES_MIN_EVENTS  # noqa: E402
from _results import (LRT_EVENTS, LoadWatch, bundle_description, bundle_section, interleaved_rounds,  # noqa: E402
                      load_bundle_option, machine_description, median_pass, publish, published_events, ratio_text,
                      reduced_run_note, round_ratios, use_checkout_in_children)
from bench_scaling import simulate_features  # noqa: E402



def timed_pass(pipeline, events) -> tuple[list[np.ndarray], float]:
    """One ``run_many`` pass over ``events``: (the labels, wall seconds)."""
    start = time.perf_counter()
    labels = [result.labels for result in pipeline.run_many(events)]
    return labels, time.perf_counter() - start


def compare(name: str, one, flights: dict, events: list, rounds: int) -> str:
    """One table row: throughput of each way (median pass), the median ratio of the rounds
    of each way in flight (``flights``: pipelines by executor) to one at a time, and how
    many events got identical labels every way."""
    passes = {"one": lambda: timed_pass(one, events)}
    for executor, flight in flights.items():
        passes[executor] = lambda flight=flight: timed_pass(flight, events)
    for run_pass in passes.values():  # warm-up pass of each way
        run_pass()
    results = interleaved_rounds(passes, rounds)
    one_labels, one_wall = median_pass(results["one"])
    count = len(events)
    hits = sum(len(features) for features in events) / count
    same = [True] * count
    rates, ratios = [], []
    for executor in flights:
        labels, wall = median_pass(results[executor])
        same = [s and np.array_equal(a, b) for s, a, b in zip(same, one_labels, labels)]
        rates.append(f"{count / wall:.2f}")
        ratios.append(ratio_text(round_ratios(results["one"], results[executor])))
    return (f"| {name} | {count} | {hits:,.0f} | {count / one_wall:.2f} | {' | '.join(rates)} | "
            f"{' | '.join(ratios)} | {sum(same)}/{count} |")


#: Simulated events of the full run: (name, hits, count, rounds); and of ``--quick``.
SIZES = (("simulated, random particles", 10_000, 8, 3), ("simulated, random particles", 100_000, 2, 2))
QUICK_SIZES = (("simulated, random particles", 3_000, 4, 1),)
#: Benchmark events and rounds on them: the full run's and ``--quick``'s.
LRT_FULL, LRT_QUICK = (100, 5), (20, 1)


def main(argv=None) -> int:
    """Run the comparison, print the table and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"),
                        help="bundle every way runs (default: models/default); the benchmark events are used when it "
                        "has 3 features")
    parser.add_argument("--quick", action="store_true",
                        help=f"a quick check: {LRT_QUICK[0]} benchmark events in {LRT_QUICK[1]} round instead of "
                        f"{LRT_FULL[0]} in {LRT_FULL[1]}, and {QUICK_SIZES[0][2]} simulated events of "
                        f"{QUICK_SIZES[0][1]:,} hits in {QUICK_SIZES[0][3]} round instead of the 10k- and 100k-hit "
                        "ones; the section says it is a reduced run")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    bundle = load_bundle_option(parser, "--bundle", args.bundle)
    use_checkout_in_children()  # the worker processes import this checkout too
    watch = LoadWatch()  # before the benchmark's own work raises the load

    from trackserve.runtime.config import RuntimeConfig, automatic_event_workers, available_cores
    from trackserve.runtime.pipeline import Pipeline

    cores = available_cores()
    workers = automatic_event_workers(100, cores)
    one = Pipeline(bundle, config=RuntimeConfig(event_workers=1))
    flights = {executor: Pipeline(bundle, config=RuntimeConfig(event_workers=workers, event_executor=executor))
               for executor in ("threads", "processes")}
    flight = flights["threads"]
    sizes = QUICK_SIZES if args.quick else SIZES
    lrt_count, lrt_rounds = LRT_QUICK if args.quick else LRT_FULL
    rows, skipped = [], ""
    if bundle.num_features != 3:
        skipped = f" The benchmark events have 3 features, the bundle {bundle.num_features}: skipped."
    elif not LRT_EVENTS.is_dir():
        skipped = f" The published benchmark events are absent ({LRT_EVENTS}): skipped."
    else:
        events = published_events(lrt_count)
        rows.append(compare("published benchmark events (lrt_events)", one, flights, events, lrt_rounds))
    for name, hits, count, rounds in sizes:
        events = [simulate_features(hits, one.feature_spec, seed=100 + i) for i in range(count)]
        rows.append(compare(name, one, flights, events, rounds))
    flights["processes"].close()
    watch.finish()
    reduced = reduced_run_note(([] if skipped else [f"{lrt_count} benchmark events in {lrt_rounds} round instead of "
                                                    f"{LRT_FULL[0]} in {LRT_FULL[1]}"])
                               + [f"{QUICK_SIZES[0][2]} simulated events of {QUICK_SIZES[0][1]:,} hits "
                                  f"in {QUICK_SIZES[0][3]} round instead of 8 of 10k and 2 of 100k hits"]
                               if args.quick else [], "--quick")
    lines = [f"Machine: {machine_description()}.", "",
             f"Bundle: {bundle_description(bundle, args.bundle)}. One at a time: `RuntimeConfig(event_workers=1)`, "
             f"{one.config.resolved_intra_op_threads} network / {one.config.resolved_graph_threads} graph-building "
             f"threads for each event (parts of it at once). In flight: `RuntimeConfig(event_workers={workers})`, "
             f"{flight.config.resolved_intra_op_threads} / {flight.config.resolved_graph_threads} for each, on "
             f"threads (what `trackserve run` chooses for several events on these {cores} cores, below "
             f"{PROCESSES_MIN_EVENTS}) and in worker processes (`event_executor=\"processes\"`: `trackserve run` from "
             f"{PROCESSES_MIN_EVENTS} events; started in "
             f"the warm-up pass). {watch.note()}{skipped}", ""]
    if reduced:
        lines += [reduced, ""]
    lines += ["| events | count | hits per event | one at a time (events/s) | in flight, threads (events/s) | "
              "in flight, processes (events/s) | threads / one at a time | processes / one at a time | "
              "identical labels (all three) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]
    section = bundle_section(args.bundle, "event_workers", "event_workers_")
    publish(section, "bench_event_workers.py", lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
