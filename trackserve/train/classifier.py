"""What the filter and the GNN share: one weighted-BCE step, scoring a graph, cuts from scores.

Both networks take ``(features [N, F], edge_index [2, E])`` and return a logit per edge;
an edge's label is whether it joins two hits of one particle.
"""

from __future__ import annotations

import numpy as np

from .losses import weighted_bce
from .pairs import displaced_weights, edge_targets


def training_targets(events, graphs: list[np.ndarray], config) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Labels and counted edges (:func:`~trackserve.train.pairs.edge_targets`) of each event's graph,
    by the config's ``signal_min_pt`` and ``ignore_soft_edges``: ``(labels, counted)``, one entry per event."""
    targets = [edge_targets(graph, event.particle_ids, event.hit_pt, config.signal_min_pt, config.ignore_soft_edges)
               for event, graph in zip(events, graphs)]
    return [labels for labels, _ in targets], [counted for _, counted in targets]


def classifier_step(network, optimizer, features: np.ndarray, edges: np.ndarray, labels: np.ndarray,
                    positive_weight: float, counted: np.ndarray | None = None, precision: str = "float32",
                    edge_weights: np.ndarray | None = None) -> float:
    """One optimiser step of weighted BCE on the edges ``[2, E]`` with boolean ``labels [E]``; the loss.

    ``counted`` (bool ``[E]``, optional): only these edges enter the loss; every edge is
    still part of the graph the network sees (a GNN passes messages along all of them).
    ``precision`` (:data:`~trackserve.train.precision.TRAINING_PRECISIONS`): the forward
    pass's number type (:func:`~trackserve.train.precision.step_precision`); the loss is
    computed in float32 either way. ``edge_weights`` (float ``[E]``, optional): each edge's
    weight in the loss (:func:`~trackserve.train.pairs.displaced_weights`).
    """
    import torch

    from .precision import step_precision

    with step_precision(precision):
        logits = network(torch.from_numpy(features), torch.from_numpy(np.ascontiguousarray(edges)))
    logits = logits.float()
    targets = torch.from_numpy(labels)
    weights = None if edge_weights is None else torch.from_numpy(np.asarray(edge_weights, dtype=np.float32))
    if counted is not None:
        keep = torch.from_numpy(np.asarray(counted, dtype=bool))
        logits, targets = logits[keep], targets[keep]
        weights = None if weights is None else weights[keep]
    loss = weighted_bce(logits, targets, positive_weight, weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def training_weights(events, graphs: list[np.ndarray], labels: list[np.ndarray], config) -> list[np.ndarray | None]:
    """Each event's per-edge loss weights for the GNNs: :func:`~trackserve.train.pairs.displaced_weights`
    of its labels with the config's ``displaced_weight``; None for every event when that is 0."""
    if config.displaced_weight == 0:
        return [None] * len(events)
    return [displaced_weights(event_labels, event.hit_vz[graph[0]], config.displaced_weight)
            for event, graph, event_labels in zip(events, graphs, labels)]


def score_edges(network, features: np.ndarray, edges: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Logits ``[E]`` float32 of ``edges`` (no gradient); ``chunk`` edges at a time when given (filter only)."""
    import torch

    if edges.shape[1] == 0:
        return np.zeros(0, dtype=np.float32)
    step = edges.shape[1] if chunk is None else chunk
    out = np.empty(edges.shape[1], dtype=np.float32)
    x = torch.from_numpy(features)
    with torch.no_grad():
        for begin in range(0, edges.shape[1], step):
            part = torch.from_numpy(np.ascontiguousarray(edges[:, begin:begin + step]))
            out[begin:begin + step] = network(x, part).numpy()
    return out


def cut_for_efficiency(logits: np.ndarray, labels: np.ndarray, efficiency: float) -> float:
    """The cut (a probability) keeping at least a fraction ``efficiency`` of the true edges.

    An edge passes when ``sigmoid(logit) > cut``; the cut sits just below the sigmoid of
    the true-edge logit quantile ``1 - efficiency``. Rounded down to 1e-4 so it can be
    written as a short number.
    """
    true_logits = logits[labels]
    if true_logits.size == 0:
        return 0.5
    quantile = float(np.quantile(true_logits.astype(np.float64), 1.0 - efficiency, method="lower"))
    probability = 1.0 / (1.0 + np.exp(-quantile))
    return float(max(0.0, np.floor(probability * 1e4 - 1) / 1e4))


def passing(logits: np.ndarray, cut: float) -> np.ndarray:
    """Which edges pass ``sigmoid(logit) > cut`` (decided on the logit, as the runtime does)."""
    from ..runtime.cuts import passes_cut

    return passes_cut(logits, cut)
