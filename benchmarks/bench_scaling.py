"""How the Pipeline's cost grows with the event: per-stage time, peak memory and FLOP rate.

Events of about 1k, 10k and 100k hits are simulated on the full TrackML detector with
random particles (the count chosen to give the size). Each size runs in a fresh
subprocess that loads the features from a file, opens the Pipeline, runs it once to
warm up and then ``--repeats`` times (median per stage); its peak memory is the
process's ``ru_maxrss``, reported with the resident size before the first run (imports,
sessions) so the event's own share shows. For each network stage the FLOPs of its
matrix products are counted from the ONNX graph (:func:`trackserve.engines.flops.network_flops`
with that stage's hits and edges) and the achieved rate is set against the machine's
own float32 matrix-multiply peak, measured in the same run with the same thread count
(numpy ``float32`` matmul of 2048x2048 matrices, best of 5).

``python benchmarks/bench_scaling.py [--bundle models/default] [--threads 2] [--quick]``
writes the section ``scaling`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_note, machine_description, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("embed", "graph", "filter", "gnn", "tracks")
NETWORK_OF_STAGE = {"embed": "embedding", "filter": "filter", "gnn": "gnn"}
#: Simulated hits per random particle with the default options (about 13, measured below).
_CALIBRATION_PARTICLES = 500


def matmul_peak(threads: int, size: int = 2048) -> float:
    """Best float32 matmul rate (FLOP/s) of numpy on ``size`` square matrices, BLAS set to ``threads``."""
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


def child(features_path: str, bundle: str, threads: int, repeats: int) -> dict:
    """Run in the subprocess: time the stages of one event, report memory and graph sizes."""
    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline

    features = np.load(features_path)
    pipeline = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=threads, graph_threads=threads))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = pipeline.run(features)
    runs = [pipeline.run(features).timings for _ in range(repeats)]
    timings = {key: float(np.median([run[key] for run in runs])) for key in (*STAGES, "total")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The GNN runs on the hits some filtered edge touches: its node networks see only those.
    filtered, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
    return {"hits": int(features.shape[0]), "timings": timings, "num_edges": result.num_edges,
            "gnn_hits": int(np.unique(filtered).size), "gnn_layout": pipeline._steps.last_gnn_layout,
            "rss_before": rss_before, "peak": peak}


def main(argv=None) -> int:
    """Run every size in its own process, print the table and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--quick", action="store_true", help="sizes 1k and 10k, 1 repeat")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument("--child", nargs=2, metavar=("FEATURES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        Path(args.child[1]).write_text(json.dumps(child(args.child[0], args.bundle, args.threads, args.repeats)))
        return 0

    from trackserve.bundle import load_bundle
    from trackserve.engines.flops import network_flops
    from trackserve.events.features import FeatureSpec

    bundle = load_bundle(args.bundle)
    spec = FeatureSpec(tuple(bundle.feature_names), tuple(bundle.feature_scales))
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    peak = matmul_peak(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            features_path, out_path = Path(scratch) / f"f{size}.npy", Path(scratch) / f"r{size}.json"
            np.save(features_path, simulate_features(size, spec, seed=size))
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
            subprocess.run([sys.executable, __file__, "--bundle", args.bundle, "--threads", str(args.threads),
                            "--repeats", str(repeats), "--child", str(features_path), str(out_path)],
                           check=True, env=env)
            rows.append(json.loads(out_path.read_text()))

    lines = [f"Machine: {machine_description()}.", "",
             f"Threads: trackserve intra_op_threads={args.threads} (each network stage as {args.threads} single-threaded "
             f"ONNX Runtime calls on parts of the event), graph_threads={args.threads}; matmul peak with "
             f"numpy BLAS at {args.threads} threads (OPENBLAS_NUM_THREADS={args.threads}): "
             f"**{peak / 1e9:.1f} GFLOP/s** (float32 2048x2048, best of 5).",
             f"Bundle: `{args.bundle}` ({bundle.provenance.get('data', 'no data recorded')}). Random-particle events "
             f"on the full detector, each size in a fresh process; medians of {repeats} runs after a warm-up. "
             "Peak memory: ru_maxrss of that process (in brackets: before the first event). " + load_note(), "",
             "| hits | graph / filtered edges | GNN ran as | " + " | ".join(f"{s} (ms)" for s in STAGES)
             + " | total (ms) | peak memory (MiB) |",
             "| ---: | ---: | --- | " + " | ".join("---:" for _ in STAGES) + " | ---: | ---: |"]
    rate_lines = ["", "FLOPs of the matrix products at the sizes each network ran at (the GNN: the hits its "
                  "filtered edges touch; in halo slices it computes the halo edges twice, not counted here). "
                  "The column `GNN ran as` says how the GNN used the threads (README): groups of connected "
                  "components or azimuth slices with their halos at once; in one call it runs on one thread "
                  f"(the sequential scatter form) and against this {args.threads}-thread peak could reach at most "
                  f"1/{args.threads}.", "",
                  "| hits | network | GFLOP | GFLOP/s | of matmul peak |", "| ---: | --- | ---: | ---: | ---: |"]
    for row in rows:
        t, e = row["timings"], row["num_edges"]
        lines.append(f"| {row['hits']:,} | {e['graph']:,} / {e['filter']:,} | {row['gnn_layout']} | "
                     + " | ".join(f"{t[s] * 1e3:.1f}" for s in STAGES)
                     + f" | {t['total'] * 1e3:.1f} | {row['peak'] / 2**20:.0f} ({row['rss_before'] / 2**20:.0f}) |")
        stage_edges = {"embed": 0, "filter": e["graph"], "gnn": e["filter"]}
        stage_hits = {"embed": row["hits"], "filter": row["hits"], "gnn": row["gnn_hits"]}
        for stage, network in NETWORK_OF_STAGE.items():
            flops = network_flops(bundle.network_path(network), stage_hits[stage], stage_edges[stage])
            rate = flops / t[stage] if t[stage] > 0 else 0.0
            rate_lines.append(f"| {row['hits']:,} | {network} | {flops / 1e9:.3f} | {rate / 1e9:.1f} | {rate / peak:.0%} |")
    text = "## scaling (`benchmarks/bench_scaling.py`)\n\n" + "\n".join(lines + rate_lines)
    print(text)
    if not args.no_write:
        write_section("scaling", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
