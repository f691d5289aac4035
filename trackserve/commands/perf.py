"""``trackserve perf``: measure a served trackserve model under load, as Triton's perf_analyzer does.

Sends events (TrackML or feature CSVs) to a running server at each concurrency level of
a sweep, synchronously (one thread per client) or asynchronously (N requests in flight),
and reports per level the throughput, the p50/p95/p99 latency, the requests and the
errors, as a table and optionally as CSV and JSON. See :mod:`trackserve.serving.perf`.
Exit status: 0 when every request was answered, 1 when any failed, 2 on a usage error
(including a server or model that does not answer before the sweep starts) and when no
level measured anything (no request answered within any level's window); 130 / 143 when
interrupted (Ctrl-C / SIGTERM), after writing the levels measured so far (none: the CSV
and JSON say so, so that no earlier run's files pass for this run's).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..jsonout import dumps
from ..paths import DEFAULT_BUNDLE, SAMPLE_EVENT, write_files_atomically

ORDER = 63


def register(subparsers) -> None:
    """Add the ``perf`` subcommand."""
    from ..serving.interface import DEFAULT_MODEL_NAME

    parser = subparsers.add_parser(
        "perf",
        help="measure throughput and latency of a served model over a concurrency sweep (like perf_analyzer)",
        description=(
            "Load-test a running Triton server serving a trackserve model: at each concurrency level, N "
            "clients send events (one request per event, cycling over the events) back to back; after a "
            "warm-up, a measurement window gives the throughput (inferences/s), the p50/p95/p99 latency, "
            "the requests and the errors of the level. Every request sent is either answered or counted "
            "as an error."
        ),
    )
    parser.add_argument("events", nargs="*", metavar="EVENT",
                        help="TrackML event prefixes, files or directories, or feature CSVs "
                        "(default: the shipped sample event)")
    parser.add_argument("--url", default=None,
                        help="server host:port (default: 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default: %(default)s")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME,
                        help="served model: the custom model or the ensemble (default: %(default)s)")
    parser.add_argument("--bundle", default=None,
                        help="bundle whose features TrackML events are given (default: models/default); "
                        "feature CSVs do not need it")
    parser.add_argument("--concurrency", default="1,2,4,8,16", metavar="LEVELS",
                        help="start:end[:step] (end included) or a list, e.g. 1:16 or 1,2,4 (default: %(default)s)")
    parser.add_argument("--mode", choices=("sync", "async"), default="sync",
                        help="sync: one thread per client; async: N requests in flight on one asyncio loop "
                        "(default: %(default)s)")
    parser.add_argument("--window-seconds", type=float, default=5.0, metavar="S",
                        help="measurement window of each level (default: %(default)s); a level whose window "
                        "holds fewer than 20 answered requests is flagged as rough (give a longer window)")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, metavar="S",
                        help="unmeasured run before each window: at least this long, and until every client has had an "
                             "answer (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per request (default: %(default)s)")
    parser.add_argument("--error-backoff-ms", type=float, default=50.0, metavar="MS",
                        help="a client's pause after a failed request, so that a dead server is not hammered (default: "
                             "%(default)g; it lowers the throughput of levels with errors; 0: none)")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="write one CSV row per level to FILE ('-': standard output, the table then goes to stderr)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the results as JSON to FILE ('-': standard output, the table then goes to stderr)")
    parser.set_defaults(handler=run)


def load_events(inputs, num_features: int, bundle_path, served=None) -> list:
    """Feature arrays of the ``inputs`` (listed by :func:`~trackserve.events.sources.list_inputs`):
    feature CSVs as they are, TrackML events via the bundle.

    ``num_features``: the width the served model takes; ``served``: the ``(names, scales)``
    of the features its bundle reads, when the server says; a bundle with another width or
    other features is refused with a message saying which bundle to give. ``bundle_path``
    given is checked so whatever the inputs; the shipped default (None) only when a TrackML
    event needs it.
    """
    from ..errors import InputError
    from ..events.sources import read_input
    from ..events.trackml import read_feature_csv

    spec = None
    arrays = []
    for kind, path in inputs:
        if kind == "features" and bundle_path is None:  # sent as they are: no bundle is used
            arrays.append(read_feature_csv(path, num_features))
            continue
        if spec is None:  # a --bundle given is checked against the served model, used or not
            from ..bundle import load_bundle
            from ..paths import shipped_path
            from ..serving.client import check_served_features

            bundle = load_bundle(bundle_path or shipped_path(DEFAULT_BUNDLE, "default bundle"))
            if bundle.num_features != num_features:
                raise InputError(
                    f"the served model takes {num_features} features per hit but the bundle {bundle.directory} "
                    f"gives {bundle.num_features}; give the --bundle the server serves"
                )
            check_served_features(served, bundle.feature_names, bundle.feature_scales, "the served model",
                                  f"--bundle {bundle_path}" if bundle_path else "the shipped default bundle (no --bundle)")
            spec = bundle.feature_spec
        arrays.append(read_input(kind, path, spec).features)
    return arrays


def _given(value: float) -> str:
    """``value`` as an option's value is written (``0`` for 0.0, ``-1`` for -1.0), exactly."""
    text = f"{value:g}"
    return text if not math.isfinite(value) or float(text) == value else repr(value)


def check_times(args: argparse.Namespace) -> None:
    """Refuse a window, warm-up or error back-off out of range, naming the option and the value given."""
    from ..errors import InputError

    from ..serving.perf import MAX_WINDOW_SECONDS

    for option, value, unit, zero_allowed, most in (
            ("--window-seconds", args.window_seconds, "seconds", False, MAX_WINDOW_SECONDS),
            ("--warmup-seconds", args.warmup_seconds, "seconds", True, MAX_WINDOW_SECONDS),
            ("--error-backoff-ms", args.error_backoff_ms, "milliseconds", True, 1000 * MAX_WINDOW_SECONDS)):
        if not (math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)):
            raise InputError(f"{option} must be a finite number of {unit} {'>= 0' if zero_allowed else '> 0'}, "
                             f"got {_given(value)}")
        if value > most:
            raise InputError(f"{option} must be at most {most:g} {unit} (a day), got {_given(value)}")


def check_outputs(csv_target, json_target, sources) -> None:
    """Refuse, before any request, output files perf could not write, that are one of the
    event files ``sources`` (overwritten with the results), or that are one file for both
    ``--csv`` and ``--json`` (the JSON would overwrite the CSV); ``-`` is standard output,
    which only one of them may take."""
    from ..errors import InputError
    from ..paths import output_file, same_file

    if csv_target == "-" and json_target == "-":
        raise InputError("--csv - and --json - both name standard output, where the CSV and the JSON would be mixed; "
                         "give a file name to one of them")
    for option, target in (("--csv", csv_target), ("--json", json_target)):
        if not target or target == "-":
            continue
        for source in sources:
            if same_file(target, source):
                raise InputError(f"{option} {target} is the input event file {source}: perf would overwrite it with "
                                 "its results; give another file name")
        output_file(target, option)  # refused now, not after the sweep
    if csv_target and json_target and "-" not in (csv_target, json_target) and same_file(csv_target, json_target):
        raise InputError(f"--csv {csv_target} and --json {json_target} name the same file: the JSON would overwrite "
                         "the CSV; give two file names")


def run(args: argparse.Namespace) -> int:
    """Check the options and the server, load the events, run the sweep, print and write the results."""
    from ..events.sources import input_files, list_inputs
    from ..serving.client import check_timeout

    check_timeout(args.timeout, "--timeout")
    check_times(args)
    from ..paths import shipped_path
    from ..serving.client import PROTOCOLS, TritonClient
    from ..serving.perf import (PerfSettings, format_table, measured_nothing, parse_concurrency, report, run_sweep,
                                write_csv, write_csv_rows)

    levels = parse_concurrency(args.concurrency)
    inputs = list_inputs(args.events or [shipped_path(SAMPLE_EVENT, "sample event")])
    check_outputs(args.csv, args.json, input_files(inputs))
    url = args.url or f"127.0.0.1:{PROTOCOLS[args.protocol]}"
    settings = PerfSettings(url=url, protocol=args.protocol, model=args.model, mode=args.mode,
                            window_s=args.window_seconds, warmup_s=args.warmup_seconds, timeout_s=args.timeout,
                            error_backoff_s=args.error_backoff_ms / 1000.0)
    table_stream = sys.stderr if "-" in (args.csv, args.json) else sys.stdout

    measured = []

    def progress(result) -> None:
        measured.append(result)
        print(f"  concurrency {result.concurrency}: {result.throughput:.2f} infer/s, "
              f"{result.requests} requests, {result.errors} errors", file=sys.stderr, flush=True)

    def write(results, interrupted: bool = False) -> None:
        if results:
            print(format_table(results), file=table_stream, flush=True)
        if settings.error_backoff_s and any(result.errors for result in results):
            print(f"trackserve perf: note: each client paused {args.error_backoff_ms:g} ms after every failed request "
                  "(--error-backoff-ms), which lowers the throughput of the levels with errors", file=sys.stderr)
        if args.csv == "-":
            write_csv_rows(results, sys.stdout)
            sys.stdout.flush()
        elif args.csv:
            print(f"CSV written to {write_csv(results, args.csv).resolve()}", file=sys.stderr)
        if args.json:
            document = report(results, settings, num_events=len(inputs))
            if interrupted:
                document["interrupted"] = f"after {len(results)} of {len(levels)} concurrency level(s)"
            text = dumps(document, indent=2)
            if args.json == "-":
                print(text)
            else:
                write_files_atomically([(Path(args.json), (text + "\n").encode())], follow_links=True)
                print(f"JSON written to {Path(args.json).resolve()}", file=sys.stderr)

    try:
        with TritonClient(url, protocol=args.protocol, model=args.model, timeout_s=args.timeout) as client:
            num_features = client.num_features()  # ServingError (exit 2) when the server or the model does not answer
            served = client.served_features()
        events = load_events(inputs, num_features, args.bundle, served)
        print(f"trackserve perf: {len(events)} event(s) to '{args.model}' at {url} ({args.protocol}, {args.mode}), "
              f"a warm-up of at least {settings.warmup_s:g} s + a {settings.window_s:g} s window per level",
              file=sys.stderr, flush=True)
        results = run_sweep(events, levels, settings, progress=progress)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the levels already measured
        if measured:
            print(f"trackserve perf: interrupted after {len(measured)} of {len(levels)} concurrency level(s); "
                  "writing those", file=sys.stderr)
        else:  # files saying so replace an earlier run's, which would pass for this run's results
            print(f"trackserve perf: interrupted after 0 of {len(levels)} concurrency level(s): nothing was measured"
                  + ("; writing the CSV / JSON with no level" if args.csv or args.json else ""), file=sys.stderr)
        write(measured, interrupted=True)
        raise
    write(results)
    if measured_nothing(results):
        # levels whose requests failed (in the window, or all of them wherever they ended): not the window's fault
        failing = [result for result in results if result.errors or (result.answered == 0 and result.failed)]
        why = ("requests failed at every level (errors above); a longer --window-seconds would not help"
               if len(failing) == len(results) else
               "no request ended within any window; give a longer --window-seconds" if not failing else
               "requests failed (errors above) or ended outside the window (give a longer --window-seconds)")
        print(f"trackserve perf: nothing measured: no request was answered within the window of any of the "
              f"{len(results)} concurrency level(s): {why}", file=sys.stderr)
        return 2
    return 1 if any(result.failed for result in results) else 0
