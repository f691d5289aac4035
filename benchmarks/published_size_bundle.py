"""Write a bundle of randomly initialised networks with the published ExaTrkX service's sizes.

The published service's networks are far wider than this project's default bundle: its
hyperparameter files (``../shared/data/exatrkx_service/models/hparams_*.yaml``) give an
embedding of 6 layers of 512 (to 8 dimensions), a filter of 5 layers of 512 and a
residual attention GNN of width 64 with 8 iterations and 3-layer node and edge networks,
all with LayerNorm. Throughput and FLOP rate depend on these sizes and on the graph
sizes, not on what the weights learned, so ``benchmarks/bench_scaling.py`` times this
bundle next to the default one to show what the runtime achieves on networks of the
published width (only the service's GNN was published, as a TorchScript file; its
embedding and filter weights were not).

The stage parameters are chosen on a simulated random-particle event of about 10k hits
(features of the service: r/3000, φ/π, z/400): the radius gives the median hit 10
neighbours in the random embedding, the cap is the default bundle's (its
``max_neighbours``, read from ``models/default/pipeline.json``), the filter cut keeps a
third of that event's graph edges and the GNN cut is 0.5.

Usage: ``python benchmarks/published_size_bundle.py OUTPUT_DIR [--seed S]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import DEFAULT_BUNDLE_DIR, non_negative_int  # noqa: E402

#: The published service's sizes (its hparams_Embedding / _Filter / _GNN.yaml).
EMBEDDING = {"in_channels": 3, "emb_hidden": 512, "nb_layer": 6, "emb_dim": 8, "activation": "Tanh", "layer_norm": True}
FILTER = {"in_channels": 3, "hidden": 512, "nb_layer": 5, "activation": "Tanh", "layer_norm": True}
GNN = {"in_channels": 3, "hidden": 64, "n_graph_iters": 8, "nb_node_layer": 3, "nb_edge_layer": 3,
       "hidden_activation": "ReLU", "layer_norm": True}
#: Neighbours of the median hit within the radius on the calibration event.
NEIGHBOURS = 10
#: Hits of the calibration event (about; random particles on the full detector).
CALIBRATION_HITS = 10_000


def default_bundle_cap() -> int:
    """``max_neighbours`` of the checkout's default bundle (``models/default``), from its pipeline.json."""
    from trackserve.bundle import load_bundle

    return load_bundle(DEFAULT_BUNDLE_DIR, check_files=False).stages.max_neighbours


def write_published_size_bundle(output: str | Path, seed: int = 3):
    """Build the three networks (seeded), choose the stage parameters, write and return the bundle."""
    import torch
    from scipy.spatial import cKDTree

    from trackserve.bundle import StageParameters, make_bundle
    from trackserve.events.features import EXATRKX_SERVICE, hit_features
    from trackserve.events.geometry import load_geometry
    from trackserve.events.simulate import SimulationConfig, simulate_event
    from trackserve.export.embedding import EmbeddingNetwork
    from trackserve.export.filter import EdgeFilter
    from trackserve.export.resagnn import ResAGNN
    from trackserve.runtime.graph_building import build_graph

    cap = default_bundle_cap()
    torch.manual_seed(seed)
    embedding = EmbeddingNetwork(**EMBEDDING).eval()
    edge_filter = EdgeFilter(**FILTER).eval()
    gnn = ResAGNN(**GNN).eval()

    event = simulate_event(load_geometry(), SimulationConfig(num_particles=CALIBRATION_HITS // 13), seed=seed)
    features = hit_features(event.hits, EXATRKX_SERVICE)
    with torch.no_grad():
        points = embedding(torch.from_numpy(features)).numpy()
    distances, _ = cKDTree(points).query(points, k=NEIGHBOURS + 1)
    radius = float(np.format_float_positional(np.median(distances[:, -1]), precision=5, unique=True, fractional=False))
    edges = build_graph(points, radius, cap, direction="i<j")
    with torch.no_grad():
        logits = edge_filter(torch.from_numpy(features), torch.from_numpy(edges)).numpy().astype(np.float64)
    filter_cut = float(1.0 / (1.0 + np.exp(-np.quantile(logits, 2 / 3))))
    bundle = make_bundle(
        output,
        {"embedding": embedding, "filter": edge_filter, "gnn": gnn},
        features=EXATRKX_SERVICE,
        stages=StageParameters(radius=radius, max_neighbours=cap, filter_cut=filter_cut, gnn_cut=0.5,
                               edge_direction="i<j"),
        provenance={"data": f"random weights (seed {seed}) with the published ExaTrkX service's network sizes, "
                            "for throughput benchmarks only; finds no tracks"},
    )
    return bundle


def main() -> int:
    """Write the bundle to the directory given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="bundle directory to write")
    parser.add_argument("--seed", type=non_negative_int, default=3, help="seed of the weights and the calibration "
                        "event (default 3)")
    args = parser.parse_args()
    from trackserve.bundle_output import check_bundle_output
    from trackserve.errors import TrackserveError

    try:  # before any work: a folder of other files, the current directory, one that cannot be written
        check_bundle_output(args.output, overwrite=True, option="the output")
    except TrackserveError as error:
        parser.error(str(error))
    bundle = write_published_size_bundle(args.output, args.seed)
    stages = bundle.stages
    print(f"wrote {args.output} (radius {stages.radius}, cap {stages.max_neighbours}, filter cut "
          f"{stages.filter_cut:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
