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
