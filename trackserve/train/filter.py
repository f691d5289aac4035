"""The edge filter: trained on the embedding's radius graphs, batches of random edges.

The graphs are built with the runtime's :func:`~trackserve.runtime.graph_building.build_graph`
(same radius, cap and edge direction as the bundle), so the filter trains on exactly the
edges it will see at inference.
"""

from __future__ import annotations

import time

import numpy as np

from .classifier import classifier_step, cut_for_efficiency, passing, score_edges, training_targets
from .config import FilterSettings, TrainingConfig
from .data import TrainingEvent
from .embedding import embed
from .pairs import pair_labels
from .precision import pad_hits, pad_step
from .progress import progress, report
from .schedule import check_finite_loss, check_trained, one_cycle
from .validation import format_figures, graph_figures

#: Edges scored at once when the filter runs on a whole graph.
SCORE_CHUNK = 262_144


def radius_graph(embedding_network, event: TrainingEvent, radius: float, config: TrainingConfig) -> np.ndarray:
    """The event's graph as the pipeline builds it: pairs closer than ``radius`` in the embedding."""
    from ..runtime.graph_building import build_graph

    return build_graph(embed(embedding_network, event.features), radius, config.max_neighbours,
                       direction=config.edge_direction, threads=config.threads)


def build_filter_network(settings: FilterSettings, num_features: int, periodic_features=(), derived_eta=None,
                         pair_geometry=None, period: float = 2.0):
    """A fresh :class:`~trackserve.export.filter.EdgeFilter` of these settings (``period``:
    that of the ``periodic_features`` columns, 2π over φ's scale)."""
    from ..export.filter import EdgeFilter

    return EdgeFilter(in_channels=num_features, hidden=settings.hidden, nb_layer=settings.layers,
                      activation=settings.activation, layer_norm=True, edge_differences=settings.edge_differences,
                      periodic_features=list(periodic_features), period=period,
                      difference_scale=settings.difference_scale, derived_eta=derived_eta, pair_geometry=pair_geometry)


def validate_filter(network, event: TrainingEvent, graph: np.ndarray, config: TrainingConfig) -> dict:
    """The cut keeping the target fraction of the graph's true edges, and the figures of the edges it keeps."""
    logits = score_edges(network, event.features, graph, SCORE_CHUNK)
    selected = pair_labels(graph, event.particle_ids) & (event.hit_pt[graph[0]] >= config.min_pt)
    cut = cut_for_efficiency(logits, selected, config.filter.target_efficiency)
    return {"cut": cut, **graph_figures(event, graph[:, passing(logits, cut)], config.min_pt)}


def train_filter(events: list[TrainingEvent], graphs: list[np.ndarray], validation: TrainingEvent,
                 validation_graph: np.ndarray, config: TrainingConfig, rng: np.random.Generator,
                 *, show_progress: bool = True):
    """Train the filter on ``graphs`` (one per event); return ``(network, cut, history)``."""
    import torch

    settings = config.filter
    network = build_filter_network(settings, events[0].features.shape[1], config.periodic_features,
                                   config.eta_columns, config.geometry_columns, period=config.phi_period)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    labels, counted = training_targets(events, graphs, config)
    counts = [max(1, -(-graph.shape[1] // settings.batch_edges)) for graph in graphs]
    scheduler = one_cycle(optimizer, settings.learning_rate, settings.epochs * sum(counts))
    history, cut, taken = [], 0.5, 0
    # Each event's hits padded once for bfloat16 steps (every step reads the whole table).
    padded_hits = [pad_hits(event.features) if config.precision == "bfloat16" else None for event in events]
    for epoch in range(settings.epochs):
        start, losses = time.perf_counter(), []
        batches = [(k, b) for k in range(len(events)) for b in range(counts[k])]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        orders = {k: rng.permutation(graph.shape[1]) for k, graph in enumerate(graphs)}
        network.train()
        for k, b in progress(batches, f"filter epoch {epoch + 1}/{settings.epochs}", enabled=show_progress):
            chosen = orders[k][b * settings.batch_edges:(b + 1) * settings.batch_edges]
            if counted[k] is not None:  # the filter scores each edge alone: left out of the loss, out of the batch
                chosen = chosen[counted[k][chosen]]
            if chosen.size == 0:
                scheduler.step()
                continue
            step = (events[k].features, graphs[k][:, chosen], labels[k][chosen], None)
            if config.precision == "bfloat16":  # shapes that repeat (see trackserve.train.precision)
                step = pad_step(*step, hits=padded_hits[k])
            losses.append(classifier_step(network, optimizer, *step[:3], settings.positive_weight, step[3],
                                          precision=config.precision))
            check_finite_loss(losses[-1], "filter", len(losses), settings.learning_rate)
            scheduler.step()
        network.eval()
        taken += len(losses)
        figures = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "seconds": time.perf_counter() - start,
                   **validate_filter(network, validation, validation_graph, config)}
        cut = figures["cut"]
        history.append(figures)
        report(f"filter epoch {epoch + 1}: {format_figures(figures)}", enabled=show_progress)
    check_trained("filter", taken, graphs)
    return network, cut, history


def filtered_graph(network, event: TrainingEvent, graph: np.ndarray, cut: float) -> np.ndarray:
    """The edges of ``graph`` whose filter score passes ``cut``."""
    logits = score_edges(network, event.features, graph, SCORE_CHUNK)
    return np.ascontiguousarray(graph[:, passing(logits, cut)])
