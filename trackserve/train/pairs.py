"""The hit pairs metric learning trains on: true pairs, random pairs and hard negatives.

All functions return int64 arrays ``[2, P]`` of hit rows; :func:`pair_labels` says which
pairs join two hits of one particle (noise never does). Hard negatives are the nearest
neighbours of the anchors in the current embedding, found with a k-d tree query capped at
``k`` neighbours per anchor, so memory stays ``anchors x k`` however poor the embedding.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def true_pairs(truth_edges: np.ndarray, anchors: np.ndarray, num_hits: int) -> np.ndarray:
    """The truth-graph edges ``[2, M]`` that touch at least one of the ``anchors``."""
    is_anchor = np.zeros(num_hits, dtype=bool)
    is_anchor[anchors] = True
    touching = is_anchor[truth_edges[0]] | is_anchor[truth_edges[1]]
    return truth_edges[:, touching]


def random_pairs(anchors: np.ndarray, num_hits: int, per_anchor: int, rng: np.random.Generator) -> np.ndarray:
    """``per_anchor`` pairs per anchor with partners drawn uniformly among the hits (self-pairs dropped)."""
    if per_anchor == 0 or num_hits < 2:
        return np.zeros((2, 0), dtype=np.int64)
    first = np.repeat(anchors.astype(np.int64), per_anchor)
    second = rng.integers(0, num_hits, first.shape[0])
    keep = first != second
    return np.stack([first[keep], second[keep]])


def neighbour_pairs(tree: cKDTree, embedding: np.ndarray, anchors: np.ndarray, k: int, radius: float) -> np.ndarray:
    """Pairs (anchor, neighbour) for the ``k`` nearest neighbours of each anchor closer than ``radius``.

    ``tree`` indexes ``embedding`` (all hits of the event); the anchor itself is skipped.
    """
    if k == 0 or len(anchors) == 0:
        return np.zeros((2, 0), dtype=np.int64)
    count = min(k + 1, tree.n)
    _, neighbours = tree.query(embedding[anchors], k=count, distance_upper_bound=radius)
    neighbours = neighbours.reshape(len(anchors), count)
    first = np.repeat(anchors.astype(np.int64), count)
    second = neighbours.reshape(-1).astype(np.int64)
    keep = (second < tree.n) & (second != first)
    return np.stack([first[keep], second[keep]])


def pair_labels(pairs: np.ndarray, particle_ids: np.ndarray) -> np.ndarray:
    """Whether each pair joins two hits of the same non-noise particle, bool ``[P]``."""
    first, second = particle_ids[pairs[0]], particle_ids[pairs[1]]
    return (first == second) & (first != 0)


def edge_targets(pairs: np.ndarray, particle_ids: np.ndarray, hit_pt: np.ndarray, min_pt: float,
                 ignore_soft: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """What the filter and the GNN train on: ``(labels, counted)`` for the ``pairs [2, P]``.

    ``labels`` (bool ``[P]``): the pair joins two hits of one particle with pT >= ``min_pt``
    (GeV). With ``min_pt > 0`` the edges of softer particles count as wrong edges, so the
    networks learn to keep the tracks the bundle is meant for and to cut the curling low-pT
    ones that otherwise merge tracks in the connected components. ``min_pt = 0`` gives
    :func:`pair_labels`.

    ``counted`` (bool ``[P]``, or None for every pair): which pairs the loss counts. With
    ``ignore_soft`` (and ``min_pt > 0``) the pairs joining two hits of one particle softer
    than ``min_pt`` are left out: neither taught as edges to keep nor as wrong edges, so the
    network spends its capacity on the tracks above ``min_pt`` without learning that a real
    (curling) track segment is wrong.
    """
    same = pair_labels(pairs, particle_ids)
    if min_pt <= 0:
        return same, None
    hard = hit_pt[pairs[0]] >= min_pt
    return same & hard, (~(same & ~hard) if ignore_soft else None)


def signal_labels(pairs: np.ndarray, particle_ids: np.ndarray, hit_pt: np.ndarray, min_pt: float) -> np.ndarray:
    """The ``labels`` of :func:`edge_targets`, bool ``[P]``."""
    return edge_targets(pairs, particle_ids, hit_pt, min_pt)[0]


def loss_mask(pairs: np.ndarray, particle_ids: np.ndarray, hit_pt: np.ndarray, min_pt: float,
              ignore_soft: bool) -> np.ndarray | None:
    """The ``counted`` of :func:`edge_targets`: which pairs the loss counts, or None for all."""
    return edge_targets(pairs, particle_ids, hit_pt, min_pt, ignore_soft)[1]


#: Production distance (mm) at which a true edge's weight stops growing (:func:`displaced_weights`).
DISPLACED_CAP_MM = 200.0
#: Production distance (mm) over which a true edge's extra weight grows by ``weight`` (:func:`displaced_weights`).
DISPLACED_SCALE_MM = 100.0


def displaced_weights(labels: np.ndarray, first_hit_vz: np.ndarray, weight: float) -> np.ndarray:
    """Loss weights ``[P]`` float32 that favour the true edges of particles produced away from the centre.

    ``labels`` (bool ``[P]``): the true edges (:func:`edge_targets`); ``first_hit_vz``: the
    ``|vz|`` (mm) of each pair's first hit's particle (:attr:`TrainingEvent.hit_vz`). A true
    edge weighs ``1 + weight * min(|vz|, DISPLACED_CAP_MM) / DISPLACED_SCALE_MM`` (with
    ``weight`` 2: 3 at 100 mm, 5 from 200 mm on); every other edge weighs 1. Such particles'
    hits, seen from the origin, drift in direction along the track, and the networks learn
    central collisions first (models/default/README.md).
    """
    if weight < 0:
        raise ValueError(f"displaced_weights: weight must be >= 0, got {weight}")
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != np.shape(first_hit_vz):
        raise ValueError(f"displaced_weights: labels {labels.shape} and vz {np.shape(first_hit_vz)} differ in shape")
    extra = weight * np.minimum(np.abs(first_hit_vz), DISPLACED_CAP_MM) / DISPLACED_SCALE_MM
    return np.where(labels, 1.0 + extra, 1.0).astype(np.float32)


def knn_graph(embedding: np.ndarray, radius: float, k: int) -> np.ndarray:
    """Pairs ``i < j`` closer than ``radius`` where either hit has the other among its ``k`` nearest.

    The same rule as :func:`trackserve.runtime.graph_building.build_graph` up to ties at
    equal distance, with memory bounded by ``N x k`` whatever the embedding: used to
    follow the graph during training, when the embedding may still be poor.
    """
    n = embedding.shape[0]
    if n < 2:
        return np.zeros((2, 0), dtype=np.int64)
    tree = cKDTree(embedding)
    pairs = neighbour_pairs(tree, embedding, np.arange(n), k, radius)
    low, high = np.minimum(pairs[0], pairs[1]), np.maximum(pairs[0], pairs[1])
    keys = np.unique(low * n + high)
    return np.stack([keys // n, keys % n])
