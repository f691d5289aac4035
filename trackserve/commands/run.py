"""``trackserve run``: run a bundle on events and write one track label per hit.

Inputs are TrackML events or headerless feature CSVs (:mod:`trackserve.events.sources`);
the default bundle and the sample event shipped with trackserve are used when none is
given. Labels are written in the TrackML submission format, and a table (or, with
``--json``, one JSON object) gives per-stage times, graph sizes, tracks found and, when
the event has truth, the tracking metrics. With ``--event-workers N`` N events are in
flight at once (:meth:`~trackserve.runtime.pipeline.Pipeline.run_many`); when neither it
nor ``--threads`` is given, several events run in flight, one per core up to 2
(:func:`~trackserve.runtime.config.automatic_event_workers`), and a single event uses
every core. Events in flight run on threads, or in worker processes
(:mod:`~trackserve.runtime.event_processes`) from :data:`PROCESSES_MIN_EVENTS` events or
with ``--event-executor processes``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

from ..events.metrics import DEFAULT_MIN_HITS, DEFAULT_MIN_PT, figure_text
from ..jsonout import dumps
from ..paths import DEFAULT_BUNDLE, DEFAULT_LABELS_DIRECTORY, SAMPLE_EVENT, file_problem
from ..runtime.config import DEFAULT_EDGE_CHUNK_SIZE, DEFAULT_MEMORY_LIMIT_BYTES

ORDER = 50

#: ``--event-executor auto`` runs the events in flight in worker processes from this many
#: events (threads below): on the project's 2-core Intel machine with the default bundle,
#: with one event handed over ahead on threads too, copies of the published benchmark
#: events took 1.90 s on threads against 2.38-2.45 s in processes for 100 events (the
#: workers' start not yet paid back), 6.48-6.61 against 6.75-6.89 s for 500 and
#: 13.05-13.71 against 12.58-13.09 s for 1,000 (wall time with reading and metrics, two
#: runs each, 2026-11-30); the two ways cross at about 700.
PROCESSES_MIN_EVENTS = 700


def register(subparsers) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run a bundle on events (TrackML or feature CSV) and write track labels",
        description=(
            "Run the pipeline of a bundle (features -> embedding -> radius graph -> filter -> GNN -> "
            "track building: connected components, or the bundle's best-edge method with its gap filling "
            "and piece joining) on each event and write its labels as <output>/<event>-labels.csv "
            "(TrackML submission format: event_id,hit_id,track_id). With no EVENT the sample event "
            "shipped with trackserve is used; with no --bundle, the shipped default bundle. Events with "
            "truth also get the tracking metrics of `trackserve evaluate`."
        ),
    )
    parser.add_argument("events", nargs="*", metavar="EVENT",
                        help="TrackML event prefixes, files or directories, or feature CSV files or directories "
                        "(default: the shipped sample event)")
    parser.add_argument("--bundle", default=None, help="bundle directory (default: the shipped models/default)")
    parser.add_argument("--output", "-o", default=None, help=f"directory for the label files (default: {DEFAULT_LABELS_DIRECTORY})")
    parser.add_argument("--no-labels", action="store_true", help="do not write label files")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads of each network stage (parts of the event at once) and of graph building "
                             "(default: all cores)")
    parser.add_argument("--event-workers", type=int, default=None, metavar="N",
                        help="events run at once, each with --threads threads (default: with several events and "
                        "no --threads, one per core up to 2, each on one core; otherwise 1, one event at a time on "
                        "every core)")
    parser.add_argument("--event-executor", choices=("auto", "threads", "processes"), default="auto",
                        help="where the events in flight run: threads of this process, or worker processes with a "
                        "pipeline each, which pay about a second to start and then run small events a little faster "
                        f"(default auto: processes from {PROCESSES_MIN_EVENTS} events, threads below)")
    parser.add_argument("--edge-chunk-size", type=int, default=None, metavar="N",
                        help="edges the filter scores at once, bounding its memory (cut into a part per thread, each "
                             f"scored in blocks of a few thousand; default {DEFAULT_EDGE_CHUNK_SIZE:,})")
    parser.add_argument("--memory-limit-gb", type=float, default=None, metavar="GB",
                        help=f"refuse events whose estimated working memory exceeds this many GiB (2**30 bytes; default "
                             f"{DEFAULT_MEMORY_LIMIT_BYTES / 2**30:g}); "
                             "with several events in flight each has its share")
    parser.add_argument("--vertex-shifts", default=None, metavar="MM,MM,...",
                        help="run each event's networks and graph once per position along the beam (mm, "
                        "e.g. -100,-50,0,50,100) and merge the edges by where each points on "
                        "the beam line: finds more of the particles produced far from the centre, at about one "
                        "event's time per shift (default: the bundle's stages.vertex_shifts, one pass at the centre for "
                        "a bundle without; 0: one pass; README, 'Vertex shifts')")
    parser.add_argument("--min-pt", type=float, default=DEFAULT_MIN_PT, metavar="GEV",
                        help="metrics: reconstructable particles have at least this pT (GeV; default %(default)g; "
                        "0 counts every particle)")
    parser.add_argument("--min-hits", type=int, default=DEFAULT_MIN_HITS, metavar="N",
                        help="metrics: reconstructable particles have at least N hits, and candidate tracks too "
                        "(the table's tracks>=N column; default %(default)s)")
    parser.set_defaults(handler=run)


def _config(args, num_events: int):
    """``(runtime settings, how the events in flight were chosen)`` for the options: the
    events in flight chosen for ``num_events`` events when neither they nor the threads
    were given."""
    from ..errors import InputError
    from ..runtime.config import RuntimeConfig, automatic_event_workers, available_cores, memory_limit_from_gib
    from ..runtime.vertex_shifts import parse_vertex_shifts

    settings = {}
    cores = available_cores()
    for option, value, what in (("--threads", args.threads, "threads"), ("--event-workers", args.event_workers, "events")):
        if value is not None and value < 1:
            raise InputError(f"{option} must be an integer >= 1, got {value}")
        # RuntimeConfig itself allows more (the tests run larger machines' layouts); a run does not.
        if value is not None and value > cores:
            raise InputError(f"{option} {value} is more than the {cores} core{'s' if cores > 1 else ''} this process "
                             f"may use: the {what} "
                             f"would take turns on the cores and run slower; give at most {cores}, or leave it out")
    if args.threads is not None and args.event_workers is not None and args.threads * args.event_workers > cores:
        raise InputError(f"--event-workers {args.event_workers} with --threads {args.threads} would run "
                         f"{args.threads * args.event_workers} threads on {cores} cores; lower one of them, or leave "
                         "--threads out to share the cores")
    if args.threads is not None:
        settings["intra_op_threads"] = args.threads
        settings["graph_threads"] = args.threads
    if args.event_workers is not None:
        settings["event_workers"], chosen = args.event_workers, "by --event-workers"
    elif args.threads is None:
        settings["event_workers"], chosen = automatic_event_workers(num_events), "automatically"
    else:
        chosen = "one, as --threads was given"
    executor = args.event_executor
    if executor == "auto":
        executor = "processes" if num_events >= PROCESSES_MIN_EVENTS else "threads"
    settings["event_executor"] = executor
    if args.edge_chunk_size is not None:
        if args.edge_chunk_size < 1:
            raise InputError(f"--edge-chunk-size must be an integer >= 1, got {args.edge_chunk_size}")
        settings["edge_chunk_size"] = args.edge_chunk_size
    if args.memory_limit_gb is not None:
        settings["memory_limit_bytes"] = memory_limit_from_gib(args.memory_limit_gb)
    if args.vertex_shifts is not None:
        settings["vertex_shifts"] = parse_vertex_shifts(args.vertex_shifts)
    config = RuntimeConfig(**settings)
    if args.event_executor == "processes" and config.event_workers == 1:
        print("trackserve run: note: --event-executor processes runs the events in flight in worker processes; "
              "this run takes one event at a time" + (" (one event given)" if num_events == 1 else "")
              + ", so every event runs in this process", file=sys.stderr)
    return config, chosen


def _shifts_text(settings: dict) -> str:
    """The text report's note of the vertex shifts, empty for one pass at the centre."""
    from ..runtime.vertex_shifts import passes_in_words

    shifts = settings["vertex_shifts"]
    if shifts == [0.0]:
        return ""
    return f"; {passes_in_words(shifts)}" + ("" if len(shifts) == 1 else (
        ": graph and filtered edges summed over the passes, merged the distinct filtered edges tracks are built from"))


def _event_record(item, result, args) -> dict:
    from ..events.metrics import evaluate_event

    return {
        "event": item.name,
        "event_id": item.event_id,
        "num_hits": result.num_hits,
        "num_edges": result.num_edges,
        # labels of at least --min-hits hits, the table's column: the candidate tracks' size in
        # the metrics (metrics.num_tracks, where there is truth, counts every distinct label but noise's)
        "num_tracks_min_hits": result.num_tracks_with(args.min_hits),
        "timings_ms": {stage: 1e3 * seconds for stage, seconds in result.timings.items()},
        # null for an input without truth (a feature file, hits alone), so every record has the same keys
        "metrics": evaluate_event(item.event, item.hit_ids, result.labels, min_pt=args.min_pt, min_hits=args.min_hits)
        if item.has_truth else None,
    }


def _print_tables(report: dict, stages, out) -> None:
    shifted = report["settings"]["vertex_shifts"] != [0.0]  # graph and filtered: summed over the passes
    header = ["event", "hits", "graph", "filtered"] + (["merged"] if shifted else []) + [
        "kept", f"tracks>={report['settings']['min_track_hits']}"]
    header += [f"{s} ms" for s in stages] + ["total ms"]
    rows = []
    for ev in report["events"]:
        edges = ev["num_edges"]
        row = [ev["event"], ev["num_hits"], edges["graph"], edges["filter"]] + ([edges["merged"]] if shifted else []) + [
            edges["gnn"], ev["num_tracks_min_hits"]]
        row += [f"{ev['timings_ms'][s]:.1f}" for s in stages] + [f"{ev['timings_ms']['total']:.1f}"]
        rows.append([str(v) for v in row])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    if rows:  # (none when every event failed)
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)), file=out)
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), file=out)
    with_metrics = [ev for ev in report["events"] if ev["metrics"] is not None]
    if with_metrics:
        print(file=out)
        print(f"tracking metrics (double majority; particles with pT >= {report['settings']['min_pt']:g} GeV "
              f"and >= {report['settings']['min_hits']} hits; noise ignored):", file=out)
        print(f"{'event':>16}  {'efficiency':>10}  {'fake rate':>9}  {'duplicates':>10}  {'TrackML score':>13}", file=out)
        for ev in with_metrics:
            m = ev["metrics"]
            print(f"{ev['event']:>16}  {figure_text(m['efficiency'], '.3f'):>10}  {figure_text(m['fake_rate'], '.3f'):>9}  "
                  f"{figure_text(m['duplicate_rate'], '.3f'):>10}  {figure_text(m['trackml_score'], '.3f'):>13}", file=out)
    summary = report["summary"]
    print(file=out)
    settings = report["settings"]
    failed = report["failed"]
    if failed:  # (each one's error is on stderr, and in --json's failed list)
        names = ", ".join(entry["event"] for entry in failed[:10]) + (f" and {len(failed) - 10} more"
                                                                    if len(failed) > 10 else "")
        print(f"{len(failed)} event(s) failed, not in the tables: {names} (their errors on stderr)", file=out)
    if not summary["num_events"]:
        print(f"no event ran to the end: nothing to time (wall time {summary['wall_seconds']:.3f} s)", file=out)
        return
    print(f"{summary['num_events']} event(s), {summary['num_hits']} hits in {summary['seconds']:.3f} s of pipeline time: "
          f"{figure_text(summary['events_per_second'], '.2f')} events/s  (threads: {settings['intra_op_threads']} "
          f"network, {settings['graph_threads']} graph building{_shifts_text(settings)})", file=out)
    where = f" in {settings['event_executor']}" if settings.get("event_executor") else ""
    print(f"wall time {summary['wall_seconds']:.3f} s with reading, writing and metrics, {settings['event_workers']} "
          f"event(s) at once{where}: {figure_text(summary['events_per_second_wall'], '.2f')} events/s", file=out)
    if report.get("labels_directory") and report["events"]:
        print(f"labels written to {report['labels_directory']}", file=out)


def run(args: argparse.Namespace) -> int:
    """Run the bundle on every event and report."""
    from tqdm import tqdm

    from ..errors import InputError, TrackserveError, WorkerError
    from ..events.metrics import SELECTION_OPTIONS, check_selection
    from ..events.sources import input_name, list_inputs, read_input
    from ..paths import shipped_path
    from ..runtime.pipeline import STAGES, Pipeline
    from ..labels_output import (EarlierLabels, chosen_output, labels_files, missing_directories, note_input_problems,
                                 note_repeated_event_ids, note_skipped, remove_created)

    check_selection(args.min_pt, args.min_hits, names=SELECTION_OPTIONS)

    bundle = args.bundle or shipped_path(DEFAULT_BUNDLE, "default bundle")
    paths = args.events or [shipped_path(SAMPLE_EVENT, "sample event")]
    skipped: list[Path] = []
    inputs = list_inputs(paths, skipped)
    note_skipped("run", skipped)
    config, workers_chosen = _config(args, len(inputs))
    output = chosen_output(args.output, args.no_labels)
    created = missing_directories(output)
    labels_paths = labels_files(output, inputs)
    if labels_paths is not None:
        note_repeated_event_ids("run", inputs)
    earlier = EarlierLabels("run", labels_paths)
    try:
        pipeline = Pipeline(bundle, config=config)
    except BaseException:  # a bundle refused, a Ctrl-C while loading: no output directory left made
        remove_created(created)
        raise
    records = []
    total_seconds = 0.0
    total_hits = 0
    progress = tqdm(total=len(inputs), desc="events", unit="event", file=sys.stderr, disable=len(inputs) < 2 or None)
    # Events are read as the pipeline asks for them (several ahead with event workers);
    # their results come back in the same order. An event that cannot be read or that the
    # pipeline refuses is named and left out; the others still run.
    read: deque = deque()  # (input index, event) of the events handed to the pipeline
    failed: list[tuple[int, dict]] = []  # (input index, what failed and why)

    def fail(index: int, name: str, error: Exception) -> None:
        message = file_problem(error) if isinstance(error, OSError) and error.filename is not None else str(error)
        where = "" if str(inputs[index][1]) in message else f" ({inputs[index][1]})"
        print(f"trackserve run: error: event {name}{where}: {message}", file=sys.stderr)
        removed = labels_paths is not None and earlier.remove(labels_paths[index])
        failed.append((index, {"event": name, "input": str(inputs[index][1]), "error": message,
                               **({"removed_old_labels": str(labels_paths[index])} if removed else {})}))
        progress.update()

    def features():
        for index, (kind, path) in enumerate(inputs):
            try:
                item = read_input(kind, path, pipeline.feature_spec)
            except (TrackserveError, OSError) as error:  # unreadable: the pipeline never sees it
                fail(index, input_name(kind, path), error)
                continue
            read.append((index, item))
            note_input_problems("run", kind, path, item, pipeline.feature_spec)
            yield item.features

    wall = time.perf_counter()
    source = features()
    results = pipeline.run_many(source, yield_errors=True)
    try:
        while True:
            try:
                for result in results:
                    index, item = read.popleft()
                    if isinstance(result, InputError):  # the pipeline refused this event
                        fail(index, item.name, result)
                        continue
                    if labels_paths is not None:
                        unwritten = earlier.write(labels_paths[index], item.event_id, item.hit_ids, result.labels)
                        if unwritten is not None:  # no space left, say: this event failed, the next may not
                            fail(index, item.name, unwritten)
                            continue
                    total_seconds += result.timings["total"]  # the summary counts the events it lists
                    total_hits += result.num_hits
                    records.append(_event_record(item, result, args))
                    progress.update()
                break
            except WorkerError as error:  # a worker process died: its events in flight are lost, named,
                while read:               # and the others run in new workers
                    index, item = read.popleft()
                    fail(index, item.name, error)
                results = pipeline.run_many(source, yield_errors=True)
    except BaseException:  # Ctrl-C, SIGTERM, an error: stop the worker processes now, not after their events
        # First what must not be cut short: no earlier run's labels pass for this run's (a second
        # Ctrl-C meanwhile is held back, then stops the rest of the stop: the workers' wait).
        earlier.remove_unreplaced()
        results.close()
        pipeline.close(wait=False)
        raise
    finally:
        results.close()
        pipeline.close()
    wall = time.perf_counter() - wall
    progress.close()
    report = {
        "bundle": str(Path(bundle).resolve()),
        "settings": {
            "intra_op_threads": pipeline.config.resolved_intra_op_threads,
            "graph_threads": pipeline.config.resolved_graph_threads,
            "event_workers": pipeline.config.event_workers,
            "event_workers_chosen": workers_chosen,
            "event_executor": pipeline.config.event_executor if pipeline.config.event_workers > 1 else None,
            "edge_chunk_size": pipeline.config.edge_chunk_size,
            "vertex_shifts": list(pipeline.vertex_shifts or (0.0,)),
            "min_pt": args.min_pt,
            "min_hits": args.min_hits,
            "min_track_hits": args.min_hits,
        },
        "labels_directory": None if output is None else str(output.resolve()),
        "events": records,
        "failed": [entry for _index, entry in sorted(failed, key=lambda pair: pair[0])],
        "summary": {
            "num_events": len(records),
            "num_failed": len(failed),
            "num_hits": total_hits,
            "seconds": total_seconds,
            "events_per_second": (len(records) / total_seconds) if total_seconds > 0 else None,
            "wall_seconds": wall,
            "events_per_second_wall": (len(records) / wall) if wall > 0 and records else None,
        },
    }
    if args.json:
        print(dumps(report, indent=2))
    else:
        _print_tables(report, STAGES, sys.stdout)
    if failed:
        names = ", ".join(entry["event"] for entry in report["failed"][:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        print(f"trackserve run: {len(failed)} of {len(inputs)} event(s) failed ({names}{more}; each error above)"
              + ("; the others' labels were written" if labels_paths is not None and records else ""),
              file=sys.stderr)
        return 2
    return 0
