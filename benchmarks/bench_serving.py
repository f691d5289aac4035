"""The comparison of the published study, reproduced on this machine: custom model, ensemble, direct inference.

The published ExaTrkX-as-a-service study measured, on an A100, the throughput of the
whole pipeline in one custom Triton model at about 2.1x that of the per-stage ensemble,
and at about 0.84x that of direct (in-process, no server) inference. This script
measures the same three on this machine with the same 100 events
(``../shared/data/exatrkx_service/lrt_events/evt_{0..99}.csv``, 3 features):

* ``custom`` and ``ensemble``: a real ``tritonserver`` serving a repository written by
  :func:`trackserve.serving.repository.write_repository` (layout ``both``), loaded by
  :mod:`trackserve.serving.perf` (gRPC, sync mode: N client threads sending back to
  back, cycling over the events), at each concurrency level;
* ``direct``: the :class:`~trackserve.runtime.pipeline.Pipeline` in this process, N
  threads each running events back to back on one shared pipeline (ONNX Runtime runs
  concurrent calls of a session), measured with the same warm-up, window and
  accounting (:func:`trackserve.serving.perf.summarize`);
* the custom model's throughput versus its instance count (1, 2, 4).

Served labels are first checked identical to the direct pipeline's on a few events.
Threads are explicit: every served instance and the direct pipeline use
``--threads`` ONNX Runtime intra-op threads and graph threads (default 1); numpy's
pools are 1 (set before numpy loads). The machine has few cores, shared by the
server's instances, the load generator's client threads and (for ``direct``) the
pipeline's threads: the report says so with the figures.

Usage: ``python benchmarks/bench_serving.py [--bundle DIR] [--threads 1] [--instances 2] [--quick] [--no-write]``;
writes section ``serving`` of ``benchmarks/RESULTS.md`` and ``benchmarks/serving_throughput.png``
(for a bundle other than ``models/default``: ``serving_<its directory name>`` and
``serving_throughput_<its directory name>.png``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# This checkout's trackserve, here and (through PYTHONPATH, set in main) in the served instances.
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(HERE))

# The served instances get these pools at one thread (trackserve serve's environment); the
# direct pipeline in this process gets the same, set before numpy loads.
from trackserve.serving.server import ONE_THREAD_POOLS  # noqa: E402

for _variable in ONE_THREAD_POOLS:
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

from trackserve.serving.perf import FEW_REQUESTS  # noqa: E402  (numpy's pools set above)

from _results import (LRT_EVENTS, LoadWatch, bundle_section, load_bundle_option, machine_description,  # noqa: E402
                      positive_int, publish, published_events, reduced_run_note, replace_file, repo_relative,
                      stop_cleanly_on_sigterm, use_checkout_in_children)

DEFAULT_BUNDLE = REPO / "models" / "default"
PLOT = HERE / "serving_throughput.png"
PUBLISHED = {"custom_over_ensemble": 2.1, "custom_over_direct": 0.84}
TARGETS = {"custom_over_ensemble": 2.0, "custom_over_direct": 0.9}
FULL = {"levels": (1, 2, 4, 8, 12, 16), "instances": (1, 2, 4), "warmup": 2.0, "window": 8.0}
QUICK = {"levels": (1, 4, 16), "instances": (1, 2, 4), "warmup": 0.5, "window": 2.0}



def tiny_bundle(directory: Path, events: list[np.ndarray]) -> Path:
    """The tests' tiny-bundle recipe (tests/conftest.py) on 3 features, radius giving ~10 neighbours on the events."""
    import torch

    from tests.conftest import _tiny_networks
    from trackserve.bundle import StageParameters, make_bundle
    from trackserve.events.features import EXATRKX_SERVICE

    embedding, edge_filter, gnn = _tiny_networks(EXATRKX_SERVICE.num_features, seed=7)
    with torch.no_grad():
        points = embedding(torch.from_numpy(events[0])).numpy()
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    radius = float(np.median(np.sort(distances, axis=1)[:, 11]))
    make_bundle(directory, {"embedding": embedding, "filter": edge_filter, "gnn": gnn}, features=EXATRKX_SERVICE,
                stages=StageParameters(radius=radius, max_neighbours=64, filter_cut=0.4, gnn_cut=0.5,
                                       edge_direction="i<j"),
                provenance={"data": "random weights (tests' tiny-bundle recipe), for the serving benchmark"})
    return directory


def measure_direct(pipeline, events, concurrency: int, warmup: float, window: float):
    """Direct inference: ``concurrency`` threads running events back to back, as a perf level."""
    from trackserve.serving.perf import PerfSettings, RequestRecord, summarize

    counter = itertools.count()
    stop = threading.Event()
    records: list[list] = [[] for _ in range(concurrency)]

    def worker(mine: list) -> None:
        while not stop.is_set():
            features = events[next(counter) % len(events)]
            start = time.perf_counter()
            error = None
            try:
                pipeline.run(features)
            except Exception as failure:  # counted, as the load generator counts a failed request
                error = f"{type(failure).__name__}: {failure}"
            mine.append(RequestRecord(start, time.perf_counter(), error))

    threads = [threading.Thread(target=worker, args=(records[i],), daemon=True) for i in range(concurrency)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    window_start = begin + warmup
    window_end = window_start + window
    time.sleep(max(0.0, window_end - time.perf_counter()))
    stop.set()
    for thread in threads:
        thread.join()
    settings = PerfSettings(url="in-process", model="direct", window_s=window, warmup_s=warmup)
    return summarize([r for mine in records for r in mine], concurrency=concurrency, settings=settings,
                     window_start=window_start, window_end=window_end)


def start_server(repository: Path):
    """A tritonserver on free loopback ports serving ``repository``."""
    from trackserve.serving.server import ServerSettings, TritonServer, free_port

    settings = ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None, startup_timeout_s=300)
    return TritonServer(repository, settings).start()


def check_identical(server, models, pipeline, events) -> None:
    """Exit unless every served model answers the direct pipeline's labels on a few events."""
    from trackserve.serving.client import TritonClient

    for model in models:
        with TritonClient(server.grpc_url, model=model) as client:
            for index in checked_events(len(events)):
                features = events[index]
                if not np.array_equal(client.infer(features), pipeline.run(features).labels):
                    sys.exit(f"model {model!r} answers other labels than the direct pipeline on event {index}")


def checked_events(count: int) -> list[int]:
    """The events whose served labels are compared with the direct pipeline's: up to three distinct ones."""
    return sorted({0, 1, 57} & set(range(count)))


def sweep(server_url: str, model: str, events, levels, warmup: float, window: float):
    """A perf sweep of ``model`` over ``levels`` (gRPC, sync), printed as it goes."""
    from trackserve.serving.perf import PerfSettings, run_sweep

    settings = PerfSettings(url=server_url, model=model, window_s=window, warmup_s=warmup, timeout_s=120.0)
    return run_sweep(events, levels, settings, progress=lambda r: _print(model, r))


def _print(what: str, result) -> None:
    print(f"  {what:9s} concurrency {result.concurrency:3d}: {result.throughput:8.2f} infer/s  "
          f"p50 {result.latency_ms['p50'] or float('nan'):8.2f} ms  requests {result.requests}  errors {result.errors}",
          flush=True)


def _best(results):
    return max(results, key=lambda r: r.throughput)


def plot(curves: dict, instances: list, path: Path) -> None:
    """Throughput versus concurrency (one line per target) and the custom model's versus instances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, results in curves.items():
        left.plot([r.concurrency for r in results], [r.throughput for r in results], marker="o", label=name)
    left.set_xlabel("concurrency (requests in flight)")
    left.set_ylabel("throughput (events/s)")
    left.set_title("throughput versus concurrency")
    left.grid(alpha=0.3)
    left.legend()
    right.plot([n for n, _ in instances], [r.throughput for _, r in instances], marker="s", color="C0")
    right.set_xticks([n for n, _ in instances])
    right.set_xlabel("instances of the custom model")
    right.set_ylabel("throughput (events/s)")
    right.set_title(f"custom model, concurrency {instances[0][1].concurrency}")
    right.grid(alpha=0.3)
    figure.tight_layout()
    replace_file(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def published_event_count() -> int:
    """How many published benchmark events there are: ``evt_0.csv``, ``evt_1.csv``... in a row (0 when absent)."""
    count = 0
    while (LRT_EVENTS / f"evt_{count}.csv").is_file():
        count += 1
    return count


def plot_path(section: str) -> Path:
    """The plot of ``section``: ``serving_throughput.png`` for ``serving``, with the bundle's suffix for another."""
    return PLOT if section == "serving" else PLOT.with_name(f"{PLOT.stem}{section[len('serving'):]}{PLOT.suffix}")


def reduced_settings(args, config) -> list[str]:
    """What this run does below the full run's settings, each in words (none for a full run)."""
    changes = []
    if args.quick:
        changes.append(f"concurrency levels {', '.join(map(str, config['levels']))} instead of "
                       f"{', '.join(map(str, FULL['levels']))}, warm-up {config['warmup']:g} s and window "
                       f"{config['window']:g} s instead of {FULL['warmup']:g} s and {FULL['window']:g} s (`--quick`)")
    if args.events < 100:
        changes.append(f"{args.events} of the 100 published events")
    if args.instances != 2:
        changes.append(f"{args.instances} instance(s) of every model in the concurrency sweep instead of 2")
    if args.instance_concurrency != 8:
        changes.append(f"the instance sweep at concurrency {args.instance_concurrency} instead of 8"
                       + (" (one request in flight: the instance count cannot matter)"
                          if args.instance_concurrency == 1 else ""))
    return changes


def _percentiles(result) -> str:
    """``p50 / p95 / p99`` of a level, in ms."""
    return " / ".join(_cell(result.latency_ms[key]) for key in ("p50", "p95", "p99"))


def markdown(args, bundle_note, config, curves, instances, ratios, setup, watch, plot_note) -> list[str]:
    """The lines of the serving section of RESULTS.md (under the heading :func:`publish` gives it)."""
    reduced = reduced_run_note(reduced_settings(args, config))
    lines = [
        f"Machine: {machine_description()}. {watch.note()}",
        "",
        *([reduced, ""] if reduced else []),
        f"Bundle: {bundle_note}. Events: the {args.events} published benchmark events "
        "(`lrt_events/evt_*.csv`, 3 features), cycled. Load: `trackserve.serving.perf`, gRPC, sync mode "
        f"(N client threads back to back); warm-up {config['warmup']:g} s then a {config['window']:g} s window "
        "per level; throughput = events answered in the window / window.",
        "",
        f"Threads: each served instance and the direct pipeline use ONNX Runtime intra_op_threads={args.threads}, "
        f"graph_threads={args.threads} (repository options `intra_op_threads`/`graph_threads`); numpy pools 1. "
        f"Concurrency sweep: {args.instances} instance(s) of every model. Direct: one Pipeline in the benchmark "
        "process, N threads each running events back to back. "
        f"All of it shares {os.cpu_count()} cores: the server's instances, Triton, the load generator's client "
        "threads (same process as the direct runs, which are measured separately).",
        "",
        f"Setup: server started in {setup['startup']:.1f} s; served labels identical to the direct pipeline's "
        f"(checked on {len(checked_events(args.events))} event(s) per model).",
        "",
        "| concurrency | custom (events/s) | ensemble (events/s) | direct (events/s) | custom / ensemble | custom / direct | custom p50 ms | ensemble p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for custom, ensemble, direct in zip(curves["custom"], curves["ensemble"], curves["direct"]):
        lines.append(
            f"| {custom.concurrency} | {custom.throughput:.2f} | {ensemble.throughput:.2f} | {direct.throughput:.2f} "
            f"| {custom.throughput / max(ensemble.throughput, 1e-12):.2f} | {custom.throughput / max(direct.throughput, 1e-12):.2f} "
            f"| {_cell(custom.latency_ms['p50'])} | {_cell(ensemble.latency_ms['p50'])} |"
        )
    lines += ["", "Latency (p50 / p95 / p99, ms) and failed requests of every level, each target:", "",
              "| concurrency | custom | ensemble | direct | failed (custom / ensemble / direct) |",
              "|---:|---:|---:|---:|---:|"]
    for custom, ensemble, direct in zip(curves["custom"], curves["ensemble"], curves["direct"]):
        lines.append(f"| {custom.concurrency} | {_percentiles(custom)} | {_percentiles(ensemble)} | "
                     f"{_percentiles(direct)} | {custom.failed} / {ensemble.failed} / {direct.failed} |")
    rough = sorted({f"{name} at concurrency {r.concurrency}" for name, results in curves.items() for r in results
                    if r.few_requests} | {f"custom with {n} instance(s)" for n, r in instances if r.few_requests})
    errors = sum(r.failed for results in curves.values() for r in results) + sum(r.failed for _, r in instances)
    lines += [
        "",
        f"Failed requests over the whole run (the three sweeps and the instance sweep): {errors}."
        + (f" Rough levels (fewer than {FEW_REQUESTS} events answered in the window): {', '.join(rough)}."
           if rough else ""),
        "",
        f"Custom model versus instance count (concurrency {instances[0][1].concurrency}):",
        "",
        "| instances | events/s | p50 ms | p95 ms | p99 ms | failed |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {r.throughput:.2f} | {_cell(r.latency_ms['p50'])} | {_cell(r.latency_ms['p95'])} | "
              f"{_cell(r.latency_ms['p99'])} | {r.failed} |" for n, r in instances]
    lines += ["", "Ratios at the best concurrency of each (best throughput against best throughput):", "",
              "| ratio | here | published (A100) | target | met |", "|---|---:|---:|---:|---|"]
    rows = (("custom_over_ensemble", "custom / ensemble", "custom_over_ensemble"),
            ("custom_over_direct", f"custom ({args.instances} instances) / direct", "custom_over_direct"),
            ("custom_any_instances_over_direct", "custom (best instance count too) / direct", "custom_over_direct"))
    for key, label, reference in rows:
        met = ("yes" if ratios[key] >= TARGETS[reference] else "no") + watch.provisional()
        lines.append(f"| {label} | {ratios[key]:.2f} | {PUBLISHED[reference]:.2f} | >= {TARGETS[reference]:.1f} | {met} |")
    lines += ["", f"{plot_note} Rerun: `python benchmarks/bench_serving.py"
              + "".join(f" {shlex.quote(arg)}" for arg in args.argv if arg != "--no-write") + "`."]
    return lines


def parse_arguments(argv):
    """The options, checked before any work (one-line errors): counts positive, ``--events``
    at most the published events there are, ``--bundle`` loaded and checked, matplotlib
    present for the plot unless ``--no-write``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None,
                        help="bundle to serve (default: models/default if it exists, else the tests' tiny bundle)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="ORT intra-op and graph threads per instance (default 1)")
    parser.add_argument("--instances", type=positive_int, default=2,
                        help="instances of every model in the concurrency sweep (default 2)")
    parser.add_argument("--events", type=positive_int, default=100,
                        help="how many of the 100 published events (default 100; fewer: a reduced run)")
    parser.add_argument("--instance-concurrency", type=positive_int, default=8,
                        help="concurrency of the instance sweep (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="short windows and fewer levels (a check that it works; the section says it is a "
                        "reduced run)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only: leave RESULTS.md and the plot alone")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    available = published_event_count()
    if available == 0:
        parser.error(f"the published benchmark events are absent: no {LRT_EVENTS / 'evt_0.csv'} (the shared data "
                     "folder next to the repository)")
    if args.events > available:
        parser.error(f"argument --events: at most the {available} published events in {LRT_EVENTS}, got {args.events}")
    if args.bundle is not None:
        load_bundle_option(parser, "--bundle", args.bundle)
    if not args.no_write and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plot needs matplotlib, which is not installed: pip install -e '.[bench]' "
                     "(or pass --no-write to print the figures only)")
    return args


def main(argv=None) -> int:
    """Run the comparison, write RESULTS.md's serving section and the plot (unless ``--no-write``)."""
    args = parse_arguments(argv)
    stop_cleanly_on_sigterm()  # the temporary repositories are removed and the servers stopped
    config = QUICK if args.quick else FULL
    use_checkout_in_children()  # the served instances' Python imports this checkout too

    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline
    from trackserve.serving.repository import RepositoryOptions, write_repository

    watch = LoadWatch()  # before the benchmark's own work raises the load
    events = published_events(args.events)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        scratch = Path(scratch)
        if args.bundle:
            bundle, bundle_note = Path(args.bundle), f"`{repo_relative(args.bundle)}`"
        elif (DEFAULT_BUNDLE / "pipeline.json").is_file():
            bundle, bundle_note = DEFAULT_BUNDLE, "`models/default` (the shipped default bundle)"
        else:
            bundle = tiny_bundle(scratch / "tiny_bundle", events)
            bundle_note = ("the tests' tiny-bundle recipe (random small networks, tests/conftest.py) on 3 features, "
                           "because models/default does not exist yet: the networks are far smaller than a trained "
                           "bundle's, so serving overheads weigh more than they would")
        section = bundle_section(bundle, "serving", "serving_")
        print(f"bundle: {bundle}", flush=True)
        pipeline = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=args.threads, graph_threads=args.threads))

        options = dict(intra_op_threads=args.threads, graph_threads=args.threads)
        written = write_repository(bundle, scratch / "both",
                                   RepositoryOptions(layout="both", instance_count=args.instances, **options))
        server = start_server(written.path)
        setup = {"startup": server.startup_seconds}
        try:
            check_identical(server, written.entry_points.values(), pipeline, events)
            curves = {
                "custom": sweep(server.grpc_url, written.entry_points["custom"], events, config["levels"],
                                config["warmup"], config["window"]),
                "ensemble": sweep(server.grpc_url, written.entry_points["ensemble"], events, config["levels"],
                                  config["warmup"], config["window"]),
            }
        finally:
            server.stop()
        curves["direct"] = []
        for level in config["levels"]:
            result = measure_direct(pipeline, events, level, config["warmup"], config["window"])
            _print("direct", result)
            curves["direct"].append(result)

        instances = []
        for count in config["instances"]:
            written = write_repository(bundle, scratch / f"custom{count}",
                                       RepositoryOptions(layout="custom", instance_count=count, **options))
            server = start_server(written.path)
            try:
                result = sweep(server.grpc_url, written.entry_points["custom"], events, [args.instance_concurrency],
                               config["warmup"], config["window"])[0]
            finally:
                server.stop()
            print(f"    ({count} instance(s))", flush=True)
            instances.append((count, result))
    watch.finish()

    best = {name: _best(results) for name, results in curves.items()}
    ratios = {
        "custom_over_ensemble": best["custom"].throughput / max(best["ensemble"].throughput, 1e-12),
        "custom_over_direct": best["custom"].throughput / max(best["direct"].throughput, 1e-12),
        "custom_any_instances_over_direct": max([best["custom"].throughput] + [r.throughput for _, r in instances])
        / max(best["direct"].throughput, 1e-12),
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.2f} (published {PUBLISHED.get(key, PUBLISHED['custom_over_direct'])}, "
              f"target >= {TARGETS.get(key, TARGETS['custom_over_direct'])})")
    plot_file = plot_path(section)
    plot_note = (f"Plot: `benchmarks/{plot_file.name}`." if not args.no_write
                 else f"Plot: not written (`--no-write`; it would be `benchmarks/{plot_file.name}`).")
    if not args.no_write:
        plot(curves, instances, plot_file)
        print(f"wrote {plot_file}")
    publish(section, "bench_serving.py",
            markdown(args, bundle_note, config, curves, instances, ratios, setup, watch, plot_note),
            write=not args.no_write,
            title="Serving: custom model vs ensemble vs direct inference (the published study's comparison)"
            + ("" if section == "serving" else f", bundle {bundle.name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
