"""The part of an event a message-passing GNN needs: the hits that some edge touches.

A message-passing GNN (``InteractionGNN``, ``ResAGNN``) updates a hit only from the
edges that reach it, and scores an edge only from its two hits, so a hit that no edge
touches never influences any score. Running the GNN on the touched hits alone, with
the edges renumbered onto them (in the same order, so every scatter adds in the same
order), gives the same scores and skips the node networks of the untouched hits: on
small events after the filter, most of the GNN's work.
"""

from __future__ import annotations

import numpy as np

#: GNN architectures (the ``architecture`` a bundle records) whose scores depend on the
#: touched hits only: no global pooling, no normalisation across hits.
LOCAL_GNN_ARCHITECTURES = frozenset({"InteractionGNN", "ResAGNN"})


def touched_subgraph(features: np.ndarray, edge_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(features[touched], edges renumbered onto touched)`` for the hits ``edge_index`` touches.

    ``features`` is ``[N, F]``, ``edge_index`` an int64 ``[2, M]`` of indices in ``[0, N)``
    (already validated). The touched hits keep their relative order, the edges their
    order; when every hit is touched the inputs are returned as they are.
    """
    num_hits = features.shape[0]
    touched = np.zeros(num_hits, dtype=np.bool_)
    touched[edge_index.ravel()] = True
    nodes = np.flatnonzero(touched)
    if nodes.size == num_hits:
        return features, edge_index
    new_index = np.empty(num_hits, dtype=np.int64)
    new_index[nodes] = np.arange(nodes.size, dtype=np.int64)
    return features[nodes], new_index[edge_index]


def halo_hops(architecture: str | None, config: dict) -> int | None:
    """How many hops around an edge's hits its GNN score can depend on: ``h`` such that the
    score is exact on any subgraph holding every edge both of whose hits lie within ``h``
    hops of the edge's hits. None for an architecture or config it does not know.

    By the update rules: in ``InteractionGNN`` a hit's state after step ``k`` needs all
    of its edges' states after step ``k - 1``, and an edge's state needs its hits' states
    after step ``k - 1`` (or ``k`` with ``edge_update_uses_new_nodes``), so the reach grows
    by one hop every step or every other step; in ``ResAGNN`` a hit's state needs its
    neighbours' previous states, one hop per step. The score reads both hits' and (for
    the interaction network) the edge's final states.
    """
    iterations = config.get("n_graph_iters")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        return None
    if architecture == "ResAGNN":
        return iterations
    if architecture != "InteractionGNN":
        return None
    # Levels: -1 needs nothing beyond the edge itself; L >= 0 needs every edge of every
    # hit within L hops of the edge's hits. A hit's state needs its own previous state,
    # all of its edges, and each of those edges' previous state (one hop further out).
    node, edge = -1, -1
    new_nodes = bool(config.get("edge_update_uses_new_nodes", False))
    for _ in range(iterations):
        previous_node = node
        node = max(node, edge + 1, 0)
        edge = max(node if new_nodes else previous_node, edge)
    # Every edge of the hits within L hops has both of its hits within L + 1 hops.
    return max(node, edge) + 1
