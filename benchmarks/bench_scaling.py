"""How the Pipeline's cost grows with the event: per-stage time, peak memory and FLOP rate.

Events of about 1k, 10k and 100k hits are simulated on the full TrackML detector with
random particles (the count chosen to give the size). Each size runs in a fresh
subprocess that loads the features from a file, opens the Pipeline, runs it once to
warm up and then ``--repeats`` times (median per stage); its peak memory is the
process's peak resident size (``VmHWM``), reported with the resident size before the first run (imports,
sessions) so the event's own share shows. For each network stage the FLOPs of its
matrix products are counted from the ONNX graph (:func:`trackserve.engines.flops.network_flops`
with that stage's hits and edges) and the achieved rate is set against the machine's
own float32 matrix-multiply peak: numpy ``float32`` matmul of 2048x2048 matrices, best
of 5, in a child process with the stage processes' thread environment
(``OMP_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` at ``--threads``), measured at the start
and again at the end of the run; the higher of the two is the peak.

Two more tables say how much of that peak depends on the networks rather than the runtime:
the same events of 10k hits and more on a bundle of random networks with the published
ExaTrkX service's sizes (``benchmarks/published_size_bundle.py``: 512 wide where the
default bundle's embedding and filter are 64), and the rate ONNX Runtime reaches on bare
chains of layers of the bundle's widths and of the published service's 512 columns (matrix
products alone, then with LayerNorm and an activation), run the way the runtime runs a
network stage.

``python benchmarks/bench_scaling.py [--bundle models/default] [--threads 2] [--quick]
[--no-published-sizes] [--no-write]`` writes the section ``scaling`` of
``benchmarks/RESULTS.md`` (for a bundle other than the default, ``scaling_<its directory name>``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one; children get it on PYTHONPATH
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LoadWatch, bundle_description, bundle_section, checkout_environment,  # noqa: E402
                      load_bundle_option, machine_description, network_sizes, network_widths, positive_int,
                      positive_int_list, publish, reduced_run_note, stop_cleanly_on_sigterm)

STAGES = ("embed", "graph", "filter", "gnn", "tracks")
NETWORK_OF_STAGE = {"embed": "embedding", "filter": "filter", "gnn": "gnn"}
#: Simulated hits per random particle with the default options (about 13, measured below).
_CALIBRATION_PARTICLES = 500


#: The full run's settings and those of ``--quick``; ``--sizes`` and ``--repeats`` override either.
FULL = {"sizes": [1000, 10000, 100000], "repeats": 3}
QUICK = {"sizes": [1000, 10000], "repeats": 1}
#: The matrices of the matmul peak: float32, this many rows and columns.
PEAK_SIZE = 2048


def child_environment(threads: int) -> dict:
    """The environment of every measuring child process (stages and matmul peak): this
    checkout first on PYTHONPATH, OpenMP and numpy's OpenBLAS at ``threads`` threads."""
    return checkout_environment(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))


def matmul_peak(size: int = PEAK_SIZE) -> float:
    """Best float32 matmul rate (FLOP/s) of numpy on ``size`` square matrices, best of 5, with
    BLAS at whatever thread count this process's environment set (run it in :func:`measured_peak`)."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measured_peak(threads: int) -> float:
    """:func:`matmul_peak` (FLOP/s) measured in a child process with :func:`child_environment`,
    exactly the thread environment the stage measurements run in."""
    done = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--peak-child"], check=True,
                          env=child_environment(threads), stdout=subprocess.PIPE, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak"])


def simulate_features(target_hits: int, spec, seed: int) -> np.ndarray:
    """Features of a random-particle event of about ``target_hits`` hits on the full detector."""
    from trackserve.events.features import hit_features
    from trackserve.events.geometry import load_geometry
    from trackserve.events.simulate import SimulationConfig, simulate_event

    geometry = load_geometry()
    probe = simulate_event(geometry, SimulationConfig(num_particles=_CALIBRATION_PARTICLES), seed=seed)
    per_particle = len(probe.hits["hit_id"]) / _CALIBRATION_PARTICLES
    count = max(1, round(target_hits / per_particle))
    event = simulate_event(geometry, SimulationConfig(num_particles=count), seed=seed)
    return hit_features(event.hits, spec)


def peak_resident_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` of /proc/self/status where there is one
    (Linux; it starts afresh at exec, where ``ru_maxrss`` keeps the parent's peak at the fork),
    else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(features_path: str, bundle: str, threads: int, repeats: int) -> dict:
    """Run in the subprocess: time the stages of one event, report memory and graph sizes."""
    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline

    features = np.load(features_path)
    pipeline = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=threads, graph_threads=threads))
    rss_before = peak_resident_bytes()
    result = pipeline.run(features)
    runs = [pipeline.run(features).timings for _ in range(repeats)]
    timings = {key: float(np.median([run[key] for run in runs])) for key in (*STAGES, "total")}
    peak = peak_resident_bytes()
    # The GNN runs on the hits some filtered edge touches: its node networks see only those.
    filtered, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
    layout = pipeline._steps.last_gnn_layout
    sizes = {"gnn_hits": int(np.unique(filtered).size), "gnn_edges": int(filtered.shape[1])}
    if pipeline.stages.prune_cut is not None:
        # With a pruner the GNN step runs it on the filtered graph, then the GNN on the edges it passes.
        pruned = pipeline.pruned_edges(features, filtered)
        sizes = {"pruner_hits": sizes["gnn_hits"], "pruner_edges": sizes["gnn_edges"],
                 "gnn_hits": int(np.unique(pruned).size), "gnn_edges": int(pruned.shape[1])}
    return {"hits": int(features.shape[0]), "timings": timings, "num_edges": result.num_edges, **sizes,
            "gnn_layout": layout, "rss_before": rss_before, "peak": peak}


def layer_chain_model(width: int, layers: int, layer_norm: bool, activation: str | None) -> bytes:
    """An ONNX model of ``layers`` blocks ``Gemm [rows, width] x [width, width]`` (+ LayerNorm, + activation)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    nodes, weights, current = [], [], "x"
    for layer in range(layers):
        weights += [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                            f"w{layer}"),
                    numpy_helper.from_array(np.zeros(width, np.float32), f"b{layer}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [f"gemm{layer}"]))
        current = f"gemm{layer}"
        if layer_norm:
            weights += [numpy_helper.from_array(np.ones(width, np.float32), f"scale{layer}"),
                        numpy_helper.from_array(np.zeros(width, np.float32), f"shift{layer}")]
            nodes.append(helper.make_node("LayerNormalization", [current, f"scale{layer}", f"shift{layer}"],
                                          [f"norm{layer}"], axis=-1))
            current = f"norm{layer}"
        if activation:
            nodes.append(helper.make_node(activation, [current], [f"act{layer}"]))
            current = f"act{layer}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["rows", width])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


#: The layer chains timed for the ceiling table: (label, LayerNorm, activation).
CHAIN_KINDS = (("products only", False, None), ("+ LayerNorm + Tanh", True, "Tanh"), ("+ LayerNorm + ReLU", True, "Relu"))


def layer_chain_rates(widths, threads: int, rows: int = 100_000, layers: int = 4) -> list[tuple[int, str, float]]:
    """(width, kind, FLOP/s) of 4-layer chains on ``rows`` rows, run as the runtime runs the
    embedding: ``threads`` single-threaded ONNX Runtime sessions on row slices at once, each
    slice in calls of :data:`~trackserve.runtime.network_steps.EMBED_BLOCK_ROWS` rows."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from trackserve.runtime.network_steps import EMBED_BLOCK_ROWS

    results = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for width in widths:
            x = np.random.default_rng(1).standard_normal((rows, width), dtype=np.float32)
            slices = np.array_split(x, threads)
            for label, layer_norm, activation in CHAIN_KINDS:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                model = layer_chain_model(width, layers, layer_norm, activation)
                # A session per thread, as the runtime's networks keep one per call at once.
                sessions = [ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                            for _ in slices]

                def run_slice(session, part):
                    for begin in range(0, part.shape[0], EMBED_BLOCK_ROWS):
                        session.run(None, {"x": part[begin:begin + EMBED_BLOCK_ROWS]})

                def run_all():
                    list(pool.map(run_slice, sessions, slices))

                run_all()
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    run_all()
                    best = min(best, time.perf_counter() - start)
                results.append((width, label, 2.0 * rows * width * width * layers / best))
    return results


def measure_bundle(bundle_path: str, sizes, threads: int, repeats: int, scratch: Path, tag: str) -> list[dict]:
    """Run every size of event on ``bundle_path`` in its own process; the rows of the tables."""
    from trackserve.bundle import load_bundle
    from trackserve.events.features import FeatureSpec

    bundle = load_bundle(bundle_path)
    spec = FeatureSpec(tuple(bundle.feature_names), tuple(bundle.feature_scales))
    rows = []
    for size in sizes:
        features_path, out_path = scratch / f"{tag}-f{size}.npy", scratch / f"{tag}-r{size}.json"
        np.save(features_path, simulate_features(size, spec, seed=size))
        subprocess.run([sys.executable, __file__, "--bundle", bundle_path, "--threads", str(threads),
                        "--repeats", str(repeats), "--child", str(features_path), str(out_path)],
                       check=True, env=child_environment(threads))
        rows.append(json.loads(out_path.read_text()))
    return rows


def bundle_tables(bundle_path: str, rows: list[dict], peak: float) -> tuple[list[str], list[str]]:
    """The stage table and the FLOP-rate table (markdown lines) of one bundle's rows."""
    from trackserve.bundle import load_bundle
    from trackserve.engines.flops import network_flops

    bundle = load_bundle(bundle_path)
    stage_lines = ["| hits | graph / filtered edges | GNN ran as | " + " | ".join(f"{s} (ms)" for s in STAGES)
                   + " | total (ms) | peak memory (MiB) |",
                   "| ---: | ---: | --- | " + " | ".join("---:" for _ in STAGES) + " | ---: | ---: |"]
    rate_lines = ["| hits | network | GFLOP | GFLOP/s | of matmul peak |", "| ---: | --- | ---: | ---: | ---: |"]
    for row in rows:
        t, e = row["timings"], row["num_edges"]
        stage_lines.append(f"| {row['hits']:,} | {e['graph']:,} / {e['filter']:,} | {row['gnn_layout']} | "
                           + " | ".join(f"{t[s] * 1e3:.1f}" for s in STAGES)
                           + f" | {t['total'] * 1e3:.1f} | {row['peak'] / 2**20:.0f} ({row['rss_before'] / 2**20:.0f}) |")
        stage_edges = {"embed": 0, "filter": e["graph"], "gnn": row.get("gnn_edges", e["filter"])}
        stage_hits = {"embed": row["hits"], "filter": row["hits"], "gnn": row["gnn_hits"]}
        for stage, network in NETWORK_OF_STAGE.items():
            flops = network_flops(bundle.network_path(network), stage_hits[stage], stage_edges[stage])
            if stage == "gnn" and "pruner_edges" in row:  # the GNN step is the pruner, then the GNN
                flops += network_flops(bundle.network_path("pruner"), row["pruner_hits"], row["pruner_edges"])
                network = f"pruner ({row['pruner_edges']:,} edges) + gnn ({row['gnn_edges']:,})"
            rate = flops / t[stage] if t[stage] > 0 else 0.0
            rate_lines.append(f"| {row['hits']:,} | {network} | {flops / 1e9:.3f} | {rate / 1e9:.1f} | {rate / peak:.0%} |")
    return stage_lines, rate_lines


def parse_arguments(argv):
    """The options, with the settings ``--quick`` leaves to explicit options resolved; in the
    parent (not a child process), the bundle loaded and checked and torch looked for when the
    published-size bundle is wanted, each failure a one-line error before any work:
    (args, bundle or None in a child)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"),
                        help="bundle to time (default: models/default)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="trackserve intra_op_threads and graph_threads of every measurement, and the "
                        "OMP_NUM_THREADS/OPENBLAS_NUM_THREADS of the measuring processes (default 2)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help=f"runs of each event after the warm-up, median kept (default {FULL['repeats']}; "
                        f"{QUICK['repeats']} with --quick)")
    parser.add_argument("--sizes", type=positive_int_list, default=None,
                        help="comma list of event sizes in hits (default "
                        f"{','.join(map(str, FULL['sizes']))}; {','.join(map(str, QUICK['sizes']))} with --quick)")
    parser.add_argument("--published-sizes", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a bundle of random networks with the published service's sizes "
                             "(benchmarks/published_size_bundle.py; needs torch to write it), on the sizes of 10k "
                             "hits and more")
    parser.add_argument("--published-repeats", type=positive_int, default=1,
                        help="runs after the warm-up for the published-size bundle (its 100k-hit event takes ~30 s)")
    parser.add_argument("--quick", action="store_true",
                        help="a quick check: the --quick defaults of --sizes and --repeats (explicit values override "
                        "them); the section says it is a reduced run")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument("--child", nargs=2, metavar=("FEATURES", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.published_sizes and args.published_repeats != 1:
        parser.error("--published-repeats counts the runs of the published-size bundle, which --no-published-sizes "
                     "leaves out: give one of them")
    settings = QUICK if args.quick else FULL
    args.sizes = settings["sizes"] if args.sizes is None else args.sizes
    args.repeats = settings["repeats"] if args.repeats is None else args.repeats
    if args.child or args.peak_child:
        return args, None
    if args.published_sizes and importlib.util.find_spec("torch") is None:
        parser.error("--published-sizes needs torch to write the published-size bundle, and torch is not installed: "
                     "install it or pass --no-published-sizes")
    return args, load_bundle_option(parser, "--bundle", args.bundle)


def reduced_settings(args) -> list[str]:
    """What this run does below the full run's settings, each in words (none for a full run)."""
    changes = []
    if not set(FULL["sizes"]) <= set(args.sizes):
        changes.append(f"event sizes {', '.join(f'{s:,}' for s in args.sizes)} instead of "
                       f"{', '.join(f'{s:,}' for s in FULL['sizes'])} hits")
    if args.repeats < FULL["repeats"]:
        changes.append(f"medians of {args.repeats} run(s) instead of {FULL['repeats']}")
    if not args.published_sizes:
        changes.append("the published-size tables left out (`--no-published-sizes`)")
    return changes


def published_tables(args, scratch: Path):
    """Write the published-size bundle (in its own process: torch stays out of this one and of
    the children's memory figures) and time it on the sizes of 10k hits and more; return the
    function that gives the section's lines for it once the matmul peak is known."""
    from trackserve.bundle import load_bundle
    from published_size_bundle import EMBEDDING, FILTER, GNN

    sizes = [s for s in args.sizes if s >= 10_000]
    if not sizes:
        return lambda _peak: ["", "### The same runtime on networks of the published service's sizes", "",
                              "Not run: it runs on the sizes of 10k hits and more, and none was asked for."]
    published = str(scratch / "published-sizes")
    subprocess.run([sys.executable, str(Path(__file__).with_name("published_size_bundle.py")), published],
                   check=True, env=checkout_environment())
    rows = measure_bundle(published, sizes, args.threads, args.published_repeats, scratch, "published")
    stages = load_bundle(published).stages

    def lines(peak: float) -> list[str]:
        p_stage, p_rate = bundle_tables(published, rows, peak)
        return ["", "### The same runtime on networks of the published service's sizes", "",
                "Random weights with the sizes of the published ExaTrkX service's hyperparameter files "
                f"(`benchmarks/published_size_bundle.py`): embedding {EMBEDDING['nb_layer']} layers of "
                f"{EMBEDDING['emb_hidden']}, filter {FILTER['nb_layer']} layers of {FILTER['hidden']} (both LayerNorm "
                f"and Tanh), attention GNN (ResAGNN) of width {GNN['hidden']}, {GNN['n_graph_iters']} iterations, "
                f"{GNN['nb_node_layer']}-layer node and edge networks; radius {stages.radius} (10 neighbours for the "
                f"median hit of a 10k-hit event), cap {stages.max_neighbours}, filter cut {stages.filter_cut:.3f} (a "
                f"third of the edges), GNN cut {stages.gnn_cut}. Medians of {args.published_repeats} run(s) after a "
                "warm-up; the same events as above.", "", *p_stage, "", *p_rate]

    return lines


def main(argv=None) -> int:
    """Run every size in its own process, print the tables and write the RESULTS.md section."""
    args, bundle = parse_arguments(argv)
    stop_cleanly_on_sigterm()  # its temporary folder is removed
    if args.child:
        Path(args.child[1]).write_text(json.dumps(child(args.child[0], args.bundle, args.threads, args.repeats)))
        return 0
    if args.peak_child:
        print(json.dumps({"peak": matmul_peak()}))
        return 0

    from published_size_bundle import EMBEDDING, FILTER
    from trackserve.runtime.network_steps import EMBED_BLOCK_ROWS

    watch = LoadWatch()  # before the benchmark's own work raises the load
    peak_start = measured_peak(args.threads)
    widths = sorted(set(network_widths(bundle).values()) | {EMBEDDING["emb_hidden"], FILTER["hidden"]})
    with tempfile.TemporaryDirectory() as scratch:
        rows = measure_bundle(args.bundle, args.sizes, args.threads, args.repeats, Path(scratch), "bundle")
        published_lines = published_tables(args, Path(scratch)) if args.published_sizes else lambda _peak: []
        chains = layer_chain_rates(widths, args.threads)
        peak_end = measured_peak(args.threads)
        watch.finish()
        peak = max(peak_start, peak_end)
        stage_lines, rate_lines = bundle_tables(args.bundle, rows, peak)
        published = published_lines(peak)  # reads the published-size bundle's ONNX files, still in scratch
    chain_lines = ["", "### What ONNX Runtime reaches on layers of these widths", "",
                   f"Chains of 4 layers `[100,000 x w] x [w x w]` run as the runtime runs the embedding "
                   f"({args.threads} single-threaded sessions on row slices at once, each slice in calls of "
                   f"{EMBED_BLOCK_ROWS:,} rows), best of 3: the matrix products alone, and each followed by a "
                   "LayerNorm and an activation as in the networks. The widths: the bundle's networks' (from its "
                   f"pipeline.json: {network_sizes(bundle)}) and the published service's embedding and filter "
                   f"({EMBEDDING['emb_hidden']}).", "",
                   "| width | layers | GFLOP/s | of matmul peak |", "| ---: | --- | ---: | ---: |"]
    for width, label, rate in chains:
        chain_lines.append(f"| {width} | {label} | {rate / 1e9:.1f} | {rate / peak:.0%} |")
    env = f"OMP_NUM_THREADS={args.threads}, OPENBLAS_NUM_THREADS={args.threads}"
    lines = [f"Machine: {machine_description()}.", "",
             f"Threads: trackserve intra_op_threads={args.threads} (each network stage as {args.threads} single-threaded "
             f"ONNX Runtime calls on parts of the event), graph_threads={args.threads}; every measuring process "
             f"(each event size, and the matmul peak) started with {env}. Matmul peak: numpy float32 "
             f"{PEAK_SIZE}x{PEAK_SIZE} matmul, best of 5, in such a process: {peak_start / 1e9:.1f} GFLOP/s at the "
             f"start of the run, {peak_end / 1e9:.1f} at the end; the rates below are set against the higher, "
             f"**{peak / 1e9:.1f} GFLOP/s**.",
             f"Bundle: {bundle_description(bundle, args.bundle)}. Random-particle events "
             f"on the full detector, each size in a fresh process; medians of {args.repeats} runs after a warm-up. "
             "Peak memory: the peak resident size (VmHWM) of that process (in brackets: before the first event). "
             + watch.note(), ""]
    reduced = reduced_run_note(reduced_settings(args), "--quick" if args.quick else None)
    if reduced:
        lines += [reduced, ""]
    lines += stage_lines
    rate_intro = ["", "FLOPs of the matrix products at the sizes each network ran at (the GNN: the hits its "
                  "filtered edges touch; in halo slices it computes the halo edges twice, not counted here). "
                  "The column `GNN ran as` says how the GNN used the threads (README): groups of connected "
                  "components, or blocks of rows on all threads, at once; in one call it runs on one thread "
                  f"(the sequential scatter form) and against this {args.threads}-thread peak could reach at most "
                  f"1/{args.threads}.", ""]
    section = bundle_section(args.bundle, "scaling", "scaling_")
    publish(section, "bench_scaling.py", lines + rate_intro + rate_lines + published + chain_lines,
            write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
