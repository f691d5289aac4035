"""Training steps in float32 and in bfloat16 (``trackserve train --precision bfloat16``), side by side.

The default bundle's filter and second GNN, from their own weights, take optimiser steps
as ``trackserve train`` takes them on one full-size event simulated from a TrackML
particle table, at the default recipe's settings (``models/default/README.md``): GNN
steps on azimuth sectors of 1/64 of the turn with a quarter sector of halo on each side,
of the graph the bundle's pruner passes; filter steps on batches of the filter's default
size of the radius graph, less the edges of particles below 0.8 GeV (left out of the loss,
``--ignore-soft-edges``). Three ways, in turn within each round, on the same steps:

* ``float32``: the plain step;
* ``bfloat16, steps' own shapes``: bfloat16 products under autocast, each step's hits and
  edges as they come (a new shape nearly every step, as a training sees them);
* ``bfloat16, padded shapes``: the same, hits and edges padded to a multiple of
  ``SHAPE_MULTIPLE`` as the trainer does (``trackserve/train/precision.py``).

Each round takes new sectors and batches (new shapes), as each epoch of a training does.
Reports milliseconds per step (median of the rounds) and the ratio to float32, and writes
the section ``training_precision`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import LoadWatch, machine_description, one_line, positive_int, publish, reduced_run_note  # noqa: E402

DEFAULT_TABLE = ROOT.parent / "shared" / "data" / "trackml" / "event000021139-particles.csv"
#: The default recipe's GNN sectors and halo, and the pT below which edges leave the loss.
SECTORS, HALO, SIGNAL_MIN_PT = 64, 0.25, 0.8
WAYS = ("float32", "bfloat16, steps' own shapes", "bfloat16, padded shapes")
#: The full run's settings.
FULL = {"gnn_steps": 40, "filter_steps": 6, "rounds": 4}


def event_graphs(particles: Path | None, seed: int):
    """One simulated event in the default bundle's features, its radius graph and the pruner's graph."""
    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline
    from trackserve.train.data import SimulatedSource, simulated_events

    pipeline = Pipeline(ROOT / "models" / "default", config=RuntimeConfig(intra_op_threads=2, graph_threads=2))
    source = SimulatedSource(particles=particles) if particles else SimulatedSource()
    event = simulated_events([source], 1, pipeline.feature_spec, seed=seed, show_progress=False)[0]
    graph = pipeline.build_graph(pipeline.embed(event.features))
    filtered, _ = pipeline.filter_edges(event.features, graph)
    return source, event, graph, pipeline.pruned_edges(event.features, filtered)


def gnn_steps(event, pruned: np.ndarray, count: int, rng: np.random.Generator) -> list[tuple]:
    """``count`` sector steps of the GNN: (features, edges, labels, counted) as the trainer builds them."""
    from trackserve.train.gnn import SectorIndex, hit_phi, sector_loss_mask
    from trackserve.train.pairs import edge_targets

    sectors = SectorIndex(hit_phi(event), pruned)
    labels, counted = edge_targets(pruned, event.particle_ids, event.hit_pt, SIGNAL_MIN_PT, True)
    if not counted.any():  # no sector would ever hold an edge of the loss: the loop below would not end
        raise SystemExit(f"bench_training_precision.py: the event's pruned graph ({pruned.shape[1]} edges) holds no "
                         "edge the GNN's loss counts, so no training step can be made of it; give a particles table "
                         "with more particles")
    half_width = np.pi / SECTORS
    reach = half_width * (1.0 + 2.0 * HALO)
    steps = []
    while len(steps) < count:
        centre = rng.uniform(-np.pi, np.pi)
        hits, local, rows = sectors.subgraph(centre, reach)
        in_loss = sector_loss_mask(sectors.phi[hits], local, centre, half_width, reach, counted[rows])
        if rows.size and in_loss.any():
            steps.append((event.features[hits], local, labels[rows], in_loss))
    return steps


def filter_steps(event, graph: np.ndarray, count: int, batch_edges: int, rng: np.random.Generator) -> list[tuple]:
    """``count`` filter batches: (features, edges, labels, None) as the trainer builds them."""
    from trackserve.train.pairs import edge_targets

    labels, counted = edge_targets(graph, event.particle_ids, event.hit_pt, SIGNAL_MIN_PT, True)
    steps = []
    for _ in range(count):
        chosen = rng.choice(graph.shape[1], size=min(batch_edges, graph.shape[1]), replace=False)
        chosen = chosen[counted[chosen]]
        steps.append((event.features, graph[:, chosen], labels[chosen], None))
    return steps


def time_steps(network, steps: list[tuple], way: str, event_features: np.ndarray, event_padded: tuple) -> float:
    """Milliseconds per step of ``steps`` the ``way`` of :data:`WAYS`."""
    import torch

    from trackserve.train.classifier import classifier_step
    from trackserve.train.precision import pad_step

    precision = "float32" if way == "float32" else "bfloat16"
    if way == "bfloat16, padded shapes":
        steps = [pad_step(*step, hits=event_padded if step[0] is event_features else None)[:4] for step in steps]
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
    start = time.perf_counter()
    for features, edges, labels, counted in steps:
        classifier_step(network, optimizer, features, edges, labels, 2.0, counted, precision=precision)
    return (time.perf_counter() - start) / len(steps) * 1e3


def check_particles(parser: argparse.ArgumentParser, path: Path | None) -> None:
    """Read the particle table of ``--particles`` now, so a bad one is a one-line error before any work."""
    from trackserve.errors import TrackserveError
    from trackserve.events.trackml import read_particles

    if path is None:
        return
    if not path.is_file():
        parser.error(f"argument --particles: {path} is not a file (give a TrackML particle table, "
                     "event...-particles.csv)")
    try:
        read_particles(path)
    except (TrackserveError, OSError) as error:
        parser.error(f"argument --particles: {one_line(error)}")


def main() -> int:
    """Time the steps, print the table and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=Path, default=DEFAULT_TABLE if DEFAULT_TABLE.exists() else None,
                        help="particle table of the event (default: TrackML event 21139's, when ../shared has it; "
                             "otherwise 8,500 random particles)")
    parser.add_argument("--gnn-steps", type=positive_int, default=FULL["gnn_steps"],
                        help=f"GNN steps per round (default {FULL['gnn_steps']})")
    parser.add_argument("--filter-steps", type=positive_int, default=FULL["filter_steps"],
                        help=f"filter steps per round (default {FULL['filter_steps']})")
    parser.add_argument("--rounds", type=positive_int, default=FULL["rounds"],
                        help=f"rounds, each with new steps (default {FULL['rounds']})")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch threads, as trackserve train --threads (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args()
    check_particles(parser, args.particles)

    import torch

    from trackserve.export.bundle_networks import load_torch_network
    from trackserve.export.inference_forms import factored_form
    from trackserve.train.config import FilterSettings
    from trackserve.train.precision import bfloat16_cpu_flags, pad_hits

    torch.set_num_threads(args.threads)
    found = bfloat16_cpu_flags()
    flags = "unknown" if found is None else ", ".join(found) or "none"
    watch = LoadWatch()  # before the benchmark's own work raises the load
    rng = np.random.default_rng(0)
    source, event, graph, pruned = event_graphs(args.particles, seed=1)
    batch_edges = FilterSettings().batch_edges
    networks = {"gnn": factored_form(load_torch_network(ROOT / "models" / "default", "gnn"), training=True),
                "filter": load_torch_network(ROOT / "models" / "default", "filter")}
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[str, list[int]] = {"gnn": [], "filter": []}
    event_padded = pad_hits(event.features)
    for _ in range(args.rounds):
        rounds = {"gnn": gnn_steps(event, pruned, args.gnn_steps, rng),
                  "filter": filter_steps(event, graph, args.filter_steps, batch_edges, rng)}
        for name, steps in rounds.items():
            sizes[name] += [step[1].shape[1] for step in steps]
            for way in WAYS:
                # The same start for every way: each way's steps change the weights they train.
                network = copy.deepcopy(networks[name])
                times.setdefault((name, way), []).append(time_steps(network, steps, way, event.features,
                                                                            event_padded))

    watch.finish()
    names = {"gnn_steps": "GNN steps per round", "filter_steps": "filter steps per round", "rounds": "rounds"}
    reduced = reduced_run_note([f"{getattr(args, key)} {names[key]} instead of {value}"
                                for key, value in FULL.items() if getattr(args, key) < value])
    lines = [
        f"Machine: {machine_description()}; bfloat16 instructions: {flags}. Threads: torch "
        f"{args.threads} (`trackserve train --threads {args.threads}`). {watch.note()}",
        "",
        *([reduced, ""] if reduced else []),
        f"Event: simulated from {source.describe()} (seed 1), {event.num_hits:,} hits; the default bundle's radius "
        f"graph {graph.shape[1]:,} edges, its pruner's graph {pruned.shape[1]:,}. Networks: the default bundle's "
        f"filter and second GNN (their weights, trained on). GNN steps: sectors of 1/{SECTORS} of the azimuth with "
        f"{HALO} sector of halo each side (median {int(statistics.median(sizes['gnn'])):,} edges); filter steps: "
        f"batches of {batch_edges:,} edges less the soft particles' (median {int(statistics.median(sizes['filter'])):,}). "
        f"{args.rounds} rounds of {args.gnn_steps} GNN and {args.filter_steps} filter steps, new steps each round, "
        "the three ways in turn on the same steps; medians of the rounds.",
        "",
        "| network | way | ms per step | float32 / this |",
        "| --- | --- | ---: | ---: |",
    ]
    for name in ("gnn", "filter"):
        base = statistics.median(times[(name, "float32")])
        for way in WAYS:
            value = statistics.median(times[(name, way)])
            lines.append(f"| {name} | {way} | {value:.1f} | {base / value:.2f}x |")
    lines += ["", "Rerun: `python benchmarks/bench_training_precision.py"
              + "".join(f" {shlex.quote(arg)}" for arg in sys.argv[1:] if arg != "--no-write") + "`."]
    publish("training_precision", "bench_training_precision.py", lines, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
