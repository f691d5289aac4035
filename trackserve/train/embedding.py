"""Metric learning of the embedding: true pairs pulled together, other pairs pushed beyond the margin.

Each step takes a batch of anchor hits of one event and builds its pairs
(:mod:`trackserve.train.pairs`): the truth edges touching the anchors, random partners,
and the nearest neighbours of the anchors in the current embedding within the margin,
which are the hard negatives when they belong to other particles. The embedding of the
whole event used to find neighbours is refreshed every ``_REFRESH_STEPS`` steps.
After training, :func:`choose_radius` picks the graph radius on the validation event.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.spatial import cKDTree

from .config import EmbeddingSettings, TrainingConfig
from .data import TrainingEvent
from .losses import hinge_loss
from .pairs import knn_graph, neighbour_pairs, pair_labels, random_pairs, true_pairs
from .progress import progress, report
from .schedule import check_finite_loss, one_cycle, stop_diverged
from .validation import format_figures, graph_figures

#: Steps between two refreshes of the whole-event embedding used for hard-negative mining.
_REFRESH_STEPS = 16


def build_embedding_network(settings: EmbeddingSettings, num_features: int, derived_eta: dict | None = None):
    """A fresh :class:`~trackserve.export.embedding.EmbeddingNetwork` of these settings."""
    from ..export.embedding import EmbeddingNetwork

    return EmbeddingNetwork(
        in_channels=num_features, emb_hidden=settings.hidden, nb_layer=settings.layers, emb_dim=settings.dim,
        activation=settings.activation, layer_norm=True, derived_eta=derived_eta,
    )


def embed(network, features: np.ndarray) -> np.ndarray:
    """The embedding ``[N, D]`` float32 of ``features`` (no gradient)."""
    import torch

    with torch.no_grad():
        return network(torch.from_numpy(features)).numpy()


def _step_pairs(event: TrainingEvent, true_edges: np.ndarray, anchors: np.ndarray, tree, embedding, settings,
                rng) -> np.ndarray:
    parts = [
        true_pairs(true_edges, anchors, event.num_hits),
        random_pairs(anchors, event.num_hits, settings.random_pairs, rng),
        neighbour_pairs(tree, embedding, anchors, settings.hard_negatives, settings.margin),
    ]
    return np.concatenate(parts, axis=1)


def _train_step(network, optimizer, event: TrainingEvent, pairs: np.ndarray, settings: EmbeddingSettings) -> float:
    import torch

    hits, inverse = np.unique(pairs.reshape(-1), return_inverse=True)
    local = torch.from_numpy(inverse.reshape(2, -1))
    output = network(torch.from_numpy(event.features[hits]))
    distances = (output[local[0]] - output[local[1]]).square().sum(dim=1).add(1e-12).sqrt()
    labels = torch.from_numpy(pair_labels(pairs, event.particle_ids))
    loss = hinge_loss(distances, labels, settings.margin, settings.positive_weight)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def radius_for_efficiency(embedding: np.ndarray, truth_edges: np.ndarray, efficiency: float) -> float:
    """The smallest radius keeping a fraction ``efficiency`` of the truth edges (their distance quantile)."""
    if truth_edges.shape[1] == 0:
        return 1.0
    distances = np.sort(np.linalg.norm(embedding[truth_edges[0]] - embedding[truth_edges[1]], axis=1))
    needed = max(1, int(np.ceil(efficiency * distances.size - 1e-9)))
    value = float(distances[needed - 1])
    return max(value * (1.0 + 1e-4), 1e-6)  # strictly above the quantile edge: the graph excludes d == r


def validate_embedding(network, event: TrainingEvent, config: TrainingConfig) -> dict:
    """The radius reaching the target efficiency on ``event`` and that graph's figures (k-d tree graph)."""
    embedding = embed(network, event.features)
    radius = radius_for_efficiency(embedding, event.truth_edges_above(config.min_pt), config.embedding.target_efficiency)
    edges = knn_graph(embedding, radius, config.max_neighbours)
    return {"radius": radius, **graph_figures(event, edges, config.min_pt)}


def train_embedding(events: list[TrainingEvent], validation: TrainingEvent, config: TrainingConfig,
                    rng: np.random.Generator, *, show_progress: bool = True):
    """Train the embedding network; return ``(network, history)`` (one figures dict per epoch)."""
    import torch

    settings = config.embedding
    network = build_embedding_network(settings, events[0].features.shape[1], config.eta_columns)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    steps_per_epoch = sum(-(-event.num_hits // settings.anchors) for event in events)
    total_steps = settings.epochs * steps_per_epoch
    scheduler = one_cycle(optimizer, settings.learning_rate, total_steps)
    true_edges = [event.truth_edges_above(settings.pair_min_pt) for event in events]
    history = []
    for epoch in range(settings.epochs):
        start, losses = time.perf_counter(), []
        batches = [(k, b) for k in rng.permutation(len(events)) for b in range(-(-events[k].num_hits // settings.anchors))]
        orders = {k: rng.permutation(events[k].num_hits) for k in range(len(events))}
        tree = current = None
        network.train()
        for step, (k, b) in enumerate(progress(batches, f"embedding epoch {epoch + 1}/{settings.epochs}", enabled=show_progress)):
            event = events[k]
            if current != k or step % _REFRESH_STEPS == 0:
                network.eval()
                embedding = embed(network, event.features)
                network.train()
                if not np.isfinite(embedding).all():
                    stop_diverged("embedding", step, settings.learning_rate, "its embedding of the hits is not finite")
                tree, current = cKDTree(embedding), k
            anchors = orders[k][b * settings.anchors:(b + 1) * settings.anchors]
            pairs = _step_pairs(event, true_edges[k], anchors, tree, embedding, settings, rng)
            losses.append(_train_step(network, optimizer, event, pairs, settings))
            check_finite_loss(losses[-1], "embedding", step + 1, settings.learning_rate)
            scheduler.step()
        network.eval()
        figures = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start,
                   **validate_embedding(network, validation, config)}
        history.append(figures)
        report(f"embedding epoch {epoch + 1}: {format_figures(figures)}", enabled=show_progress)
    return network, history
