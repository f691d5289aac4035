"""What vertex shifts cost: one event at a time with one pass, and with three and five passes.

The 100 published benchmark events (``lrt_events``, 1.3k hits) run one at a time on every core
(``Pipeline.run``) through the same bundle with ``RuntimeConfig(vertex_shifts=...)``: one pass at
the centre, the three shifts −70, 0 and 70 mm, and the five −100, −50, 0, 50 and 100 mm (those
of ``models/default-vertex-shifts``). Interleaved rounds (one pass over the events each way per
round, after a warm-up); milliseconds per event from the median pass of each way, the cost as the
median of the rounds' ratios to one pass. Tracking quality with the shifts is measured by
``benchmarks/bench_default_bundle.py --vertex-shifts``.

``python benchmarks/bench_vertex_shifts.py [--bundle models/default] [--rounds N] [--no-write]``
writes the section ``vertex_shifts`` of ``benchmarks/RESULTS.md`` (for another bundle,
``vertex_shifts_<its directory name>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LRT_EVENTS, LoadWatch, bundle_section, interleaved_rounds, load_bundle_option,  # noqa: E402
                      machine_description, median_pass, positive_int, publish, published_events, ratio_text,
                      reduced_run_note, round_ratios)

from trackserve.paths import DEFAULT_BUNDLE  # noqa: E402
from trackserve.runtime.config import RuntimeConfig  # noqa: E402
from trackserve.runtime.pipeline import Pipeline  # noqa: E402

#: The ways compared: a name and the runtime's shifts ((0,): one pass, whatever the bundle carries).
WAYS = (("one pass", (0.0,)), ("3 shifts (-70, 0, 70 mm)", (-70.0, 0.0, 70.0)),
        ("5 shifts (-100 ... 100 mm)", (-100.0, -50.0, 0.0, 50.0, 100.0)))
FULL_ROUNDS = 5


def main(argv=None) -> int:
    """Time the ways, print the table and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle to run (default: models/default)")
    parser.add_argument("--threads", type=positive_int, default=2, help="threads of each event (default 2)")
    parser.add_argument("--rounds", type=positive_int, default=FULL_ROUNDS,
                        help=f"interleaved rounds (default {FULL_ROUNDS})")
    parser.add_argument("--events", type=positive_int, default=100, help="published events to run (default 100)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch RESULTS.md")
    args = parser.parse_args(argv)
    bundle = load_bundle_option(parser, "--bundle", args.bundle)
    if not LRT_EVENTS.is_dir():
        parser.error(f"the published benchmark events are absent ({LRT_EVENTS}); they live in ../shared/data")
    if bundle.num_features != 3:
        parser.error(f"the published events have 3 features per hit, the bundle {bundle.num_features}")
    if args.events > 100:
        parser.error(f"argument --events: at most the 100 published events, got {args.events}")
    events = published_events(args.events)
    watch = LoadWatch()
    pipelines = {name: Pipeline(bundle, config=RuntimeConfig(intra_op_threads=args.threads, graph_threads=args.threads,
                                                             vertex_shifts=shifts))
                 for name, shifts in WAYS}

    def run_pass(pipeline):
        def timed():
            start = time.perf_counter()
            labels = [pipeline.run(features).labels for features in events]
            return labels, time.perf_counter() - start
        return timed

    for pipeline in pipelines.values():  # warm-up
        for features in events[:10]:
            pipeline.run(features)
    results = interleaved_rounds({name: run_pass(pipeline) for name, pipeline in pipelines.items()}, args.rounds)
    watch.finish()
    base = results[WAYS[0][0]]
    reduced = reduced_run_note(([f"{args.rounds} round(s) instead of {FULL_ROUNDS}"] if args.rounds < FULL_ROUNDS
                                else []) + ([f"{len(events)} events instead of 100"] if len(events) < 100 else []))
    lines = [f"Machine: {machine_description()}. Threads: {args.threads} per event (network stages and graph "
             f"building), one event at a time. " + watch.note(),
             f"Bundle `{Path(args.bundle).name}`; the published benchmark events (lrt_events): {len(events)} events, "
             f"{sum(len(f) for f in events) / len(events):,.0f} hits per event on average; {args.rounds} interleaved "
             "rounds after a warm-up; ms per event from the median pass of each way, cost the median of the rounds' "
             "ratios to one pass." + (f" {reduced}" if reduced else ""),
             "",
             "| way | ms per event | cost against one pass |",
             "| --- | ---: | ---: |"]
    for name, _shifts in WAYS:
        _, wall = median_pass(results[name])
        cost = "1x" if name == WAYS[0][0] else ratio_text(round_ratios(results[name], base))
        lines.append(f"| {name} | {wall / len(events) * 1e3:.2f} | {cost} |")
    section = bundle_section(args.bundle, "vertex_shifts", "vertex_shifts_")
    publish(section, "bench_vertex_shifts.py", lines, write=not args.no_write, title=section.replace("_", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
