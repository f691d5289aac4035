"""Write a bundle of randomly initialised networks on the published service's 3 features.

The published ExaTrkX service's 100 benchmark events are feature files on its features
(r/3000, φ/π, z/400). The shipped default bundle reads 4 features (it adds η), so it
cannot run them; the runtime-versus-baseline comparison on those events uses this
bundle instead: fresh networks of realistic sizes (embedding 3→128×4→8, filter
128×4, interaction GNN hidden 64 with 6 iterations), the radius chosen to give about
15 neighbours per hit, cuts 0.5. Throughput depends on the sizes and on the graph,
not on what the weights learned, and both sides of the comparison run the same weights.

Usage: ``python benchmarks/make_random_bundle.py OUTPUT_DIR [--seed S]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LRT_EVENTS = REPO.parent / "shared" / "data" / "exatrkx_service" / "lrt_events"


def main() -> int:
    """Build the networks, choose the radius on the benchmark events, write the bundle."""
    import torch
    from scipy.spatial import cKDTree

    from trackserve.bundle import StageParameters, make_bundle
    from trackserve.events.features import EXATRKX_SERVICE
    from trackserve.events.trackml import read_feature_csv
    from trackserve.export.embedding import EmbeddingNetwork
    from trackserve.export.filter import EdgeFilter
    from trackserve.export.interaction_gnn import InteractionGNN

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="bundle directory to write")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    embedding = EmbeddingNetwork(in_channels=3, emb_hidden=128, nb_layer=4, emb_dim=8).eval()
    edge_filter = EdgeFilter(in_channels=3, hidden=128, nb_layer=4).eval()
    gnn = InteractionGNN(in_channels=3, hidden=64, n_graph_iters=6, nb_node_layer=2, nb_edge_layer=2).eval()
    events = [read_feature_csv(LRT_EVENTS / f"evt_{i}.csv", 3) for i in range(10)]
    with torch.no_grad():
        points = [embedding(torch.from_numpy(x)).numpy() for x in events]
    sixteenth = np.concatenate([cKDTree(p).query(p, k=16)[0][:, 15] for p in points])
    radius = float(np.format_float_positional(np.median(sixteenth), precision=5, unique=True, fractional=False))
    make_bundle(
        args.output,
        {"embedding": embedding, "filter": edge_filter, "gnn": gnn},
        features=EXATRKX_SERVICE,
        stages=StageParameters(radius=radius, max_neighbours=256, filter_cut=0.5, gnn_cut=0.5, edge_direction="i>j"),
        provenance={"data": f"random weights (seed {args.seed}), realistic sizes, for throughput benchmarks only"},
    )
    print(f"wrote {args.output} (radius {radius})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
