"""Validation figures of each stage: edge efficiency and purity of a graph, track metrics of labels."""

from __future__ import annotations

import numpy as np

from ..events.metrics import event_particle_pt, track_metrics
from .data import TrainingEvent


def graph_figures(event: TrainingEvent, edges: np.ndarray, min_pt: float) -> dict:
    """Efficiency and purity of ``edges [2, M]`` against the event's truth graph.

    ``efficiency``: fraction of truth-graph edges present (undirected); ``efficiency_high_pt``:
    the same over the truth edges of particles with ``pT >= min_pt``; ``purity``: fraction
    of edges joining two hits of one particle; ``num_edges``.
    """
    n = event.num_hits
    truth = event.truth_edges
    if edges.shape[1]:
        keys = np.unique(np.minimum(edges[0], edges[1]) * n + np.maximum(edges[0], edges[1]))
    else:
        keys = np.zeros(0, dtype=np.int64)
    truth_keys = np.minimum(truth[0], truth[1]) * n + np.maximum(truth[0], truth[1])
    found = np.isin(truth_keys, keys)
    high = event.hit_pt[truth[0]] >= min_pt
    same = (event.particle_ids[edges[0]] == event.particle_ids[edges[1]]) & (event.particle_ids[edges[0]] != 0)
    return {
        "efficiency": _mean(found),
        "efficiency_high_pt": _mean(found[high]),
        "purity": _mean(same),
        "num_edges": int(edges.shape[1]),
    }


def track_figures(event: TrainingEvent, labels: np.ndarray, min_pt: float, min_hits: int) -> dict:
    """Double-majority track efficiency (``pT >= min_pt``, ``>= min_hits`` hits), fake and duplicate rates."""
    metrics = track_metrics(
        event.particle_ids, labels, particle_pt=event_particle_pt(event.event), min_pt=min_pt, min_hits=min_hits,
    )
    return {
        "track_efficiency": metrics.efficiency,
        "fake_rate": metrics.fake_rate,
        "duplicate_rate": metrics.duplicate_rate,
        "num_reconstructable": metrics.num_reconstructable,
        "num_candidate_tracks": metrics.num_candidate_tracks,
    }


def track_labels(num_hits: int, edges: np.ndarray, logits: np.ndarray, cut: float, method: str = "components",
                 hit_order: np.ndarray | None = None) -> np.ndarray:
    """Track label per hit: connected components (undirected) of the edges with ``sigmoid(logit) > cut``.

    The same partition as the runtime's track builder; computed here with scipy directly so
    that validation depends only on the definition. ``method="best_edges"`` first keeps each
    hit's best inward and outward edge (:func:`~trackserve.runtime.track_building.best_edges`,
    ``hit_order`` the hits' distances from the origin).
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    from ..runtime.cuts import passes_cut
    from ..runtime.track_building import best_edges

    passing = passes_cut(logits, cut)  # in float64, as the runtime decides
    kept = edges[:, passing]
    if method == "best_edges" and kept.shape[1]:
        kept = kept[:, best_edges(kept, logits[passing], hit_order)]
    graph = coo_array((np.ones(kept.shape[1]), (kept[0], kept[1])), shape=(num_hits, num_hits))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def format_figures(figures: dict) -> str:
    """``key=value`` pairs of a figures dict, floats with 4 digits."""
    return ", ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in figures.items())
