"""The network steps of one event, on the cores the event may use: embedding, edge scores, GNN.

Shared by :class:`~trackserve.runtime.pipeline.Pipeline` (the custom model) and the
ensemble's stage models (:mod:`trackserve.serving.stages`), so both layouts run the
networks the same way:

* the embedding on slices of the hits (each slice in calls of at most
  :data:`EMBED_BLOCK_ROWS` hits), the filter on slices of each chunk of
  ``config.edge_chunk_size`` edges (each slice in calls of at most
  :data:`FILTER_BLOCK_EDGES` edges, its work on the hits alone done once per event),
  each call single-threaded in a session of its own, the slices of one event at once on
  ``config.intra_op_threads`` threads (:mod:`trackserve.runtime.parallel`);
* a message-passing GNN on the hits its edges touch only (:mod:`~trackserve.runtime.subgraph`),
  and, when the filtered graph falls apart into groups of connected components, on each
  group at once; a graph held together by one large component (dense events) runs in
  blocks of rows on all the threads (:mod:`~trackserve.engines.row_blocks`, from
  :data:`~trackserve.engines.scatter_split.BLOCKED_MIN_EDGES_PARALLEL` edges), or, for a
  network without that form, is cut by azimuth into overlapping parts, each computing its
  own edges with the halo of hops that exact message passing needs
  (:func:`~trackserve.runtime.subgraph.halo_hops`, :class:`~trackserve.runtime.parallel.HaloSplit`),
  from :data:`~trackserve.runtime.parallel.HALO_MIN_EDGES` edges; below that, one call of
  the GNN runner of :func:`~trackserve.engines.scatter_split.open_network` (in blocks of
  rows on the calling thread from :data:`~trackserve.engines.scatter_split.BLOCKED_MIN_EDGES`);
* with a bundle's ``pruner`` (:data:`~trackserve.bundle.OPTIONAL_NETWORKS`), the GNN step
  runs the pruner on the filtered edges first, then the GNN on the edges whose pruner
  score passes ``stages.prune_cut``; a pruned edge keeps the pruner's logit. When the
  filtered graph falls apart into component groups, each thread runs the pruner, its cut
  and the GNN on its group in one go (a kept edge's component lies within its component
  among all the edges, so each group stays whole components of the kept graph); otherwise
  the pruner and then the GNN run as above, each on its own layout.
"""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import InputError
from ..engines.onnx_runtime import OnnxNetwork
from ..engines.scatter_split import open_network
from .config import RuntimeConfig
from .cuts import passes_cut
from .parallel import HALO_MIN_EDGES, HaloSplit, PartRunner, component_groups, row_parts
from .subgraph import LOCAL_GNN_ARCHITECTURES, halo_hops, touched_subgraph

#: The networks of a bundle, in pipeline order (a bundle's optional ``pruner`` opens with the ``gnn``).
NETWORKS = ("embedding", "filter", "gnn")
#: The message-passing networks: the GNN and the optional pruner before it.
MESSAGE_PASSING = ("pruner", "gnn")

#: Hits per embedding call within one thread's slice: a block's activations stay in the
#: core's caches between layers. Measured on this project's 2-core machine on a 100k-hit
#: event: the default embedding took 29-48 ms in blocks of 1,024 against 49-66 ms in one
#: call per slice, an embedding of the published service's size (6 x 512) 1.35 s against
#: 1.68 s; the embedding is row-wise, and the results were the same bit for bit.
EMBED_BLOCK_ROWS = 1024

#: Edges per filter call within one thread's part of a chunk, for the same reason; the
#: filter's work on the hits alone (each hit's derived features) is done once per event
#: (``OnnxNetwork.prepare``), not once per call. Measured on this project's 2-core machine
#: with the default filter at 2 threads: 7.2 ms on a 10k-hit event's 53,852 edges (9.2 ms
#: in one call per part) and 224 ms on a 100k-hit event's 1.81 million (345 ms); blocks of
#: 4,096 and 16,384 edges took 2-9 % longer; the scores were the same bit for bit.
FILTER_BLOCK_EDGES = 8192


class NetworkSteps:
    """Runners for some of a bundle's networks (``names``, default all three; the bundle's
    ``pruner``, when it has one, comes with the ``gnn``) and the part runner of the event's
    threads (``config.intra_op_threads`` for each of ``config.event_workers`` events in flight)."""

    def __init__(self, bundle: Bundle, config: RuntimeConfig, names: tuple[str, ...] = NETWORKS):
        if "gnn" in names and "pruner" in bundle.networks and "pruner" not in names:
            names = tuple(names) + ("pruner",)
        threads = config.resolved_intra_op_threads
        self.parts = PartRunner(threads, config.event_workers)
        self.edge_chunk_size = config.edge_chunk_size
        # Single-threaded sessions, the parts in parallel; the GNN keeps the thread count
        # for the split form of a large graph on many cores (see scatter_split).
        self.networks: dict[str, OnnxNetwork] = {
            name: open_network(bundle.network_path(name), intra_op_threads=threads if name in MESSAGE_PASSING else 1,
                               name=name,
                               per_event=("features",) if name == "filter" else ())
            for name in names
        }
        # A session for every call that can run at once (the parts of each event in flight):
        # calls never share one (see trackserve.engines.onnx_runtime).
        for network in self.networks.values():
            network.reserve(threads * config.event_workers)
        self.embedding_dim = int(bundle.networks["embedding"].outputs[0].dims[-1])
        passing = [bundle.networks[name] for name in MESSAGE_PASSING if name in self.networks]
        self.is_local = {entry.name: entry.architecture in LOCAL_GNN_ARCHITECTURES for entry in passing}
        self.last_gnn_layout = "one call"
        # Hops of the halo a part of a dense graph needs (None: never cut such a graph).
        self.halo_hops = {entry.name: halo_hops(entry.architecture, entry.config) if "phi" in bundle.feature_names
                          else None for entry in passing}
        self.prune_cut = bundle.stages.prune_cut if "pruner" in self.networks else None
        if "phi" in bundle.feature_names:
            self.phi_column = list(bundle.feature_names).index("phi")

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Embedding ``[N, D]`` float32 of validated features ``[N, F]``."""
        runner = self.networks["embedding"]
        num_hits = features.shape[0]
        if num_hits == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        parts = row_parts(num_hits, self.parts.threads)
        if len(parts) == 1 and num_hits <= EMBED_BLOCK_ROWS:
            return _checked_embedding(runner.run(features=features), features)
        embedding = np.empty((num_hits, self.embedding_dim), dtype=np.float32)

        def embed_part(rows: slice) -> None:
            for begin in range(rows.start, rows.stop, EMBED_BLOCK_ROWS):
                block = slice(begin, min(begin + EMBED_BLOCK_ROWS, rows.stop))
                embedding[block] = runner.run(features=features[block])

        self.parts.map(embed_part, parts)
        return _checked_embedding(embedding, features)

    def edge_logits(self, network: str, features: np.ndarray, edge_index: np.ndarray, *, chunked: bool) -> np.ndarray:
        """Logits ``[M]`` of edge classifier ``network`` (``"filter"`` or ``"gnn"``) on ``edge_index``
        (:meth:`_edge_logits`); an InputError when the network gives NaN for an edge."""
        return _checked_logits(network, self._edge_logits(network, features, edge_index, chunked=chunked),
                               features, edge_index)

    def _edge_logits(self, network: str, features: np.ndarray, edge_index: np.ndarray, *, chunked: bool) -> np.ndarray:
        """Logits ``[M]`` of edge classifier ``network`` (``"filter"`` or ``"gnn"``) on ``edge_index``.

        With ``chunked`` the edges go through in chunks of ``edge_chunk_size``, each cut
        into parts for the event's threads (right only for networks that score each edge
        from its own two hits: the filter), each part in calls of at most
        :data:`FILTER_BLOCK_EDGES` edges on the hits prepared once (when the network's
        per-hit work could be cut off: ``is_split``); otherwise all at once in one call.
        """
        runner = self.networks[network]
        num_edges = edge_index.shape[1]
        if num_edges == 0:
            return np.zeros(0, dtype=np.float32)
        if not chunked:
            return runner.run(features=features, edge_index=edge_index)
        step = self.edge_chunk_size
        chunks = [[slice(begin + rows.start, begin + rows.stop)
                   for rows in row_parts(min(step, num_edges - begin), self.parts.threads)]
                  for begin in range(0, num_edges, step)]
        if len(chunks) == 1 and len(chunks[0]) == 1 and (num_edges <= FILTER_BLOCK_EDGES or not runner.is_split):
            return runner.run(features=features, edge_index=edge_index)
        scores = np.empty(num_edges, dtype=np.float32)
        # Blocks pay only where the per-hit work is done once (otherwise every block redoes it).
        if runner.is_split:
            prepared = runner.prepare(features=features)

            def score(columns: slice) -> None:
                for begin in range(columns.start, columns.stop, FILTER_BLOCK_EDGES):
                    block = slice(begin, min(begin + FILTER_BLOCK_EDGES, columns.stop))
                    scores[block] = runner.run_prepared(prepared, edge_index=np.ascontiguousarray(edge_index[:, block]))
        else:
            def score(columns: slice) -> None:
                scores[columns] = runner.run(features=features, edge_index=np.ascontiguousarray(edge_index[:, columns]))

        for parts in chunks:  # one chunk's parts at once, the chunks one after the other
            self.parts.map(score, parts)
        return scores

    def gnn_logits(self, features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
        """GNN logits of valid edges ``[2, M]`` (:meth:`_gnn_logits`); an InputError when the
        networks give NaN for an edge."""
        return _checked_logits("gnn", self._gnn_logits(features, edge_index), features, edge_index)

    def _gnn_logits(self, features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
        """GNN logits of valid edges ``[2, M]``, each message-passing network run as
        :meth:`message_passing_logits` runs it. With a pruner: the pruner on all the edges,
        then the GNN on those whose pruner score passes ``prune_cut``; the other edges keep
        the pruner's logit (at most the cut's). On component groups each thread does both
        on its group at once (:meth:`_pruned_in_groups`). How the latest call ran is in
        :attr:`last_gnn_layout`."""
        if self.prune_cut is None:
            logits, self.last_gnn_layout = self._message_passing("gnn", features, edge_index)
            return logits
        looked = all(self._splits(name, features, edge_index) for name in MESSAGE_PASSING)
        if looked:
            groups = component_groups(features.shape[0], edge_index, self.parts.threads)
            if groups is not None:
                return self._pruned_in_groups(features, edge_index, groups)
        first, pruner_layout = self._message_passing("pruner", features, edge_index, look_for_groups=not looked)
        keep = self._passes_prune_cut(first)
        kept = np.ascontiguousarray(edge_index[:, keep])
        logits = first.copy()
        logits[keep], layout = self._message_passing("gnn", features, kept)
        self.last_gnn_layout = f"pruner {pruner_layout}, GNN on {kept.shape[1]:,} edges {layout}"
        return logits

    def _pruned_in_groups(self, features: np.ndarray, edge_index: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
        """The pruned GNN step on component groups: each thread runs the pruner on its group's
        touched hits, its cut, and the GNN on the group's kept edges and the hits they touch,
        with no hand-over in between. The GNN's inputs are those it gets from the kept edges
        of the whole event split into the same groups. Measured on the project's 2-core
        machine (published benchmark events, one at a time): the GNN step 7.99 -> 7.40 ms an
        event against the pruner's groups then the GNN's, same labels."""
        pruner, gnn = self.networks["pruner"], self.networks["gnn"]

        def score(columns: np.ndarray) -> tuple[np.ndarray, int]:
            part_features, part_edges = touched_subgraph(features, edge_index[:, columns])
            part = pruner.run(features=part_features, edge_index=part_edges)
            keep = self._passes_prune_cut(part)
            if keep.any():
                kept_features, kept_edges = touched_subgraph(part_features, np.ascontiguousarray(part_edges[:, keep]))
                part[keep] = gnn.run(features=kept_features, edge_index=kept_edges)
            return part, int(np.count_nonzero(keep))

        logits = np.empty(edge_index.shape[1], dtype=np.float32)
        kept = 0
        for columns, (part, part_kept) in zip(groups, self.parts.map(score, groups)):
            logits[columns] = part
            kept += part_kept
        self.last_gnn_layout = f"pruner and GNN on {len(groups)} component groups (GNN on {kept:,} edges)"
        return logits

    def prune(self, features: np.ndarray, edge_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pruner logits [M], keep [M])`` of valid edges ``[2, M]``: which pass ``prune_cut``
        (the edges the GNN scores). Only for a bundle with a pruner."""
        first = self.message_passing_logits("pruner", features, edge_index)
        return first, self._passes_prune_cut(first)

    def _passes_prune_cut(self, logits: np.ndarray) -> np.ndarray:
        return passes_cut(logits, self.prune_cut)

    def message_passing_logits(self, name: str, features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
        """Logits of message-passing network ``name`` (``"gnn"`` or ``"pruner"``) on valid edges
        ``[2, M]``: on the touched hits when that is exact, and, when the threads allow, on
        groups of whole connected components at once or, for a large graph in one
        component, in blocks of rows on all the threads (azimuth slices with their halos
        for a network without that form). How the latest call ran is in
        :attr:`last_gnn_layout` (``"one call"``, ``"one call in blocks of rows"``, ``"N
        component groups"``, ``"blocks of rows on N threads"``, ``"N halo slices (H hops)"``)."""
        logits, self.last_gnn_layout = self._message_passing(name, features, edge_index)
        return _checked_logits(name, logits, features, edge_index)

    def _splits(self, name: str, features: np.ndarray, edge_index: np.ndarray) -> bool:
        """Whether network ``name`` may run on parts of these edges (component groups, halo
        slices): a local architecture, some edges, several threads, and calls on one thread."""
        return (self.is_local[name] and edge_index.shape[1] > 0 and self.parts.threads > 1
                and self.networks[name].uses_one_thread(features.size + edge_index.size))

    def _message_passing(self, name: str, features: np.ndarray, edge_index: np.ndarray,
                         look_for_groups: bool = True) -> tuple[np.ndarray, str]:
        """``(logits, layout)`` of :meth:`message_passing_logits`; ``look_for_groups=False``:
        the caller found these edges in no component groups already (so they are not looked
        for again). Keeps no state, so events in flight on threads can share it."""
        runner = self.networks[name]
        num_edges = edge_index.shape[1]

        def one_call(call_features: np.ndarray, call_edges: np.ndarray) -> tuple[np.ndarray, str]:
            logits = self._edge_logits(name, call_features, call_edges, chunked=False)  # checked by the caller
            blocked = runner.call_in_blocks({"features": call_features, "edge_index": call_edges})
            return logits, "one call in blocks of rows" if blocked else "one call"

        if not (self.is_local[name] and num_edges):
            return one_call(features, edge_index)
        if not self._splits(name, features, edge_index):
            return one_call(*touched_subgraph(features, edge_index))

        def score(columns: np.ndarray) -> np.ndarray:
            part_features, part_edges = touched_subgraph(features, edge_index[:, columns])
            return runner.run(features=part_features, edge_index=part_edges)

        logits = np.empty(edge_index.shape[1], dtype=np.float32)
        groups = component_groups(features.shape[0], edge_index, self.parts.threads) if look_for_groups else None
        if groups is not None:
            for columns, part in zip(groups, self.parts.map(score, groups)):
                logits[columns] = part
            return logits, f"{len(groups)} component groups"
        if runner.runs_in_blocks(num_edges, self.parts.threads):
            part_features, part_edges = touched_subgraph(features, edge_index)
            logits = runner.run_in_blocks(self.parts, features=part_features, edge_index=part_edges)
            return logits, f"blocks of rows on {self.parts.threads} threads"
        hops = self.halo_hops[name]
        if hops is None or num_edges < HALO_MIN_EDGES:
            return one_call(*touched_subgraph(features, edge_index))
        split = HaloSplit(features.shape[0], edge_index, self.parts.threads, hops, features[:, self.phi_column])

        def score_own(part: int) -> tuple[np.ndarray, np.ndarray]:
            columns, own = split.part(part)
            return columns[own], score(columns)[own]

        for columns, part in self.parts.map(score_own, split.parts):
            logits[columns] = part
        return logits, f"{len(split.parts)} halo slices ({hops} hops)"


#: What a network's output that is not a number says about its inputs, for the errors below.
_TOO_LARGE = "features this large are beyond what the network takes; were they divided by the bundle's scales?"


def _checked_embedding(embedding: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``embedding``, or an InputError naming the first hit whose embedding is NaN or infinite."""
    finite = np.isfinite(embedding)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise InputError(f"the embedding network gives NaN or infinite values for hit {row} (0-based; features "
                         f"{features[row].tolist()}): {_TOO_LARGE}")
    return embedding


def _checked_logits(network: str, logits: np.ndarray, features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
    """``logits`` of ``network``, or an InputError naming the first edge whose logit is NaN (it
    would pass no cut, its edge silently dropped; infinite logits are decided by the cuts)."""
    nan = np.isnan(logits)
    if nan.any():
        edge = int(np.flatnonzero(nan)[0])
        first, second = (int(hit) for hit in edge_index[:, edge])
        raise InputError(f"the {network} network gives NaN for {int(nan.sum()):,} edge(s), the first between hits "
                         f"{first} and {second} (0-based; features {features[first].tolist()} and "
                         f"{features[second].tolist()}): {_TOO_LARGE}")
    return logits
