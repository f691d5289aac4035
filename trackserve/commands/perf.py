"""``trackserve perf``: measure a served trackserve model under load, as Triton's perf_analyzer does.

Sends events (TrackML or feature CSVs) to a running server at each concurrency level of
a sweep, synchronously (one thread per client) or asynchronously (N requests in flight),
and reports per level the throughput, the p50/p95/p99 latency, the requests and the
errors, as a table and optionally as CSV and JSON. See :mod:`trackserve.serving.perf`.
Exit status: 0 when every request was answered, 1 when any failed, 2 on a usage error
(including a server or model that does not answer before the sweep starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..jsonout import dumps
from ..paths import DEFAULT_BUNDLE, SAMPLE_EVENT

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
    parser.add_argument("--csv", default=None, metavar="FILE", help="write one CSV row per level to FILE")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the results as JSON to FILE ('-': standard output, the table then goes to stderr)")
    parser.set_defaults(handler=run)


def load_events(paths, num_features: int, bundle_path, served=None) -> list:
    """Feature arrays of the events ``paths`` designate: feature CSVs as they are, TrackML events via the bundle.

    ``num_features``: the width the served model takes; ``served``: the ``(names, scales)``
    of the features its bundle reads, when the server says; a bundle with another width or
    other features is refused with a message saying which bundle to give. ``bundle_path``
    given is checked so whatever the inputs; the shipped default (None) only when a TrackML
    event needs it.
    """
    from ..errors import InputError
    from ..events.sources import list_inputs, read_input
    from ..events.trackml import read_feature_csv

    spec = None
    arrays = []
    for kind, path in list_inputs(paths):
        if kind == "features" and bundle_path is None:  # sent as they are: no bundle is used
            arrays.append(read_feature_csv(path, num_features))
            continue
        if spec is None:  # a --bundle given is checked against the served model, used or not
            from ..bundle import load_bundle
            from ..events.features import FeatureSpec
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
            spec = FeatureSpec(tuple(bundle.feature_names), tuple(bundle.feature_scales))
        arrays.append(read_input(kind, path, spec).features)
    return arrays


def run(args: argparse.Namespace) -> int:
    """Check the server, load the events, run the sweep, print and write the results."""
    from ..serving.client import check_timeout

    check_timeout(args.timeout, "--timeout")
    from ..paths import output_file, shipped_path
    from ..serving.client import PROTOCOLS, TritonClient
    from ..serving.perf import PerfSettings, format_table, parse_concurrency, report, run_sweep, write_csv

    levels = parse_concurrency(args.concurrency)
    for option, target in (("--csv", args.csv), ("--json", args.json)):
        if target and target != "-":
            output_file(target, option)  # refused now, not after the sweep
    url = args.url or f"127.0.0.1:{PROTOCOLS[args.protocol]}"
    settings = PerfSettings(url=url, protocol=args.protocol, model=args.model, mode=args.mode,
                            window_s=args.window_seconds, warmup_s=args.warmup_seconds, timeout_s=args.timeout,
                            error_backoff_s=args.error_backoff_ms / 1000.0)
    with TritonClient(url, protocol=args.protocol, model=args.model, timeout_s=args.timeout) as client:
        num_features = client.num_features()  # ServingError (exit 2) when the server or the model does not answer
        served = client.served_features()
    events = load_events(args.events or [shipped_path(SAMPLE_EVENT, "sample event")], num_features, args.bundle, served)
    table_stream = sys.stderr if args.json == "-" else sys.stdout
    print(f"trackserve perf: {len(events)} event(s) to '{args.model}' at {url} ({args.protocol}, {args.mode}), "
          f"a warm-up of at least {settings.warmup_s:g} s + a {settings.window_s:g} s window per level", file=sys.stderr, flush=True)

    measured = []

    def progress(result) -> None:
        measured.append(result)
        print(f"  concurrency {result.concurrency}: {result.throughput:.2f} infer/s, "
              f"{result.requests} requests, {result.errors} errors", file=sys.stderr, flush=True)

    def write(results, interrupted: bool = False) -> None:
        print(format_table(results), file=table_stream, flush=True)
        if settings.error_backoff_s and any(result.errors for result in results):
            print(f"trackserve perf: note: each client paused {args.error_backoff_ms:g} ms after every failed request "
                  "(--error-backoff-ms), which lowers the throughput of the levels with errors", file=sys.stderr)
        if args.csv:
            print(f"CSV written to {write_csv(results, args.csv).resolve()}", file=sys.stderr)
        if args.json:
            document = report(results, settings, num_events=len(events))
            if interrupted:
                document["interrupted"] = f"after {len(results)} of {len(levels)} concurrency level(s)"
            text = dumps(document, indent=2)
            if args.json == "-":
                print(text)
            else:
                Path(args.json).write_text(text + "\n")
                print(f"JSON written to {Path(args.json).resolve()}", file=sys.stderr)

    try:
        results = run_sweep(events, levels, settings, progress=progress)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the levels already measured
        if measured:
            print(f"trackserve perf: interrupted after {len(measured)} of {len(levels)} concurrency level(s); "
                  "writing those", file=sys.stderr)
            write(measured, interrupted=True)
        raise
    write(results)
    return 1 if any(result.failed for result in results) else 0
