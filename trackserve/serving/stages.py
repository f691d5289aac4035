"""The ensemble's stage models as plain callables: named arrays in, named arrays out.

Each stage does what the matching step of :meth:`trackserve.runtime.pipeline.Pipeline.run`
does, with the runtime's own pieces (the network steps of
:class:`~trackserve.runtime.network_steps.NetworkSteps`, parts of the event on its threads included,
:func:`~trackserve.runtime.graph_building.build_graph`,
:func:`~trackserve.runtime.cuts.passes_cut`,
:func:`~trackserve.runtime.track_building.build_tracks`, the memory model), so the ensemble
gives the labels the custom model gives. A stage opens only the network it runs. The
Triton stage model (``triton_models/stage_model.py``) wraps one of these; tests chain them
in-process.
"""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import InputError
from ..runtime.config import RuntimeConfig
from ..runtime.cuts import passes_cut
from ..runtime.graph_building import build_graph
from ..runtime.inputs import validate_edges, validate_features
from ..runtime.memory import MemoryModel
from ..runtime.network_steps import NetworkSteps
from ..runtime.track_building import build_tracks, bundle_track_options
from .interface import FEATURES, LABELS, StageSpec, stage_spec


class EnsembleStage:
    """Base of the stage callables: ``stage(arrays) -> outputs``, both dicts of tensor name -> array."""

    #: The stage's name in :data:`~trackserve.serving.interface.ENSEMBLE_STAGES`.
    name = ""

    def __init__(self, bundle: Bundle, config: RuntimeConfig):
        self.bundle = bundle
        self.config = config
        self.stages = bundle.stages
        self.memory = MemoryModel.for_bundle(bundle)
        self.spec: StageSpec = stage_spec(self.name)

    def _steps(self, network: str) -> NetworkSteps:
        return NetworkSteps(self.bundle, self.config, (network,))

    def _features(self, arrays) -> np.ndarray:
        return validate_features(arrays[FEATURES], self.bundle.num_features)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the stage on its named inputs and return its named outputs."""
        raise NotImplementedError  # pragma: no cover - every registered stage overrides it


def _scores(array, num_edges: int, what: str) -> np.ndarray:
    """The scores ``array`` checked: one per edge and no NaN (which would pass no cut silently)."""
    if array.ndim != 1 or array.shape[0] != num_edges:
        raise InputError(f"{what} must have shape [{num_edges}] (one per edge); got {list(array.shape)}")
    nan = np.isnan(array)
    if nan.any():
        raise InputError(f"{what}: score of edge {int(np.flatnonzero(nan)[0])} is NaN ({int(nan.sum())} NaN scores "
                         "in all)")
    return array


class EmbedStage(EnsembleStage):
    """``FEATURES [N, F] -> EMBEDDING [N, D]``: the embedding network (features validated here)."""

    name = "embed"

    def __init__(self, bundle, config):
        super().__init__(bundle, config)
        self.steps = self._steps("embedding")

    def __call__(self, arrays):
        features = self._features(arrays)
        self.memory.check_hits(features.shape[0], self.config.memory_limit_bytes)
        return {"EMBEDDING": self.steps.embed(features)}


class GraphStage(EnsembleStage):
    """``EMBEDDING [N, D] -> EDGE_LIST [2, M]``: fixed-radius graph with the bundle's radius, cap and direction."""

    name = "frnn"

    def __call__(self, arrays):
        embedding = arrays["EMBEDDING"]
        edges = build_graph(
            embedding,
            self.stages.radius,
            self.stages.max_neighbours,
            direction=self.stages.edge_direction,
            threads=self.config.resolved_graph_threads,
            memory_limit=self.config.memory_limit_bytes,
            memory_held=self.memory.hits_bytes(embedding.shape[0]),
        )
        self.memory.check_edges(embedding.shape[0], edges.shape[1], self.config.memory_limit_bytes, self.config.edge_chunk_size)
        return {"EDGE_LIST": edges}


class FilterStage(EnsembleStage):
    """``FEATURES, EDGE_LIST -> FILTER_SCORES [M]``: filter logits, in chunks of ``config.edge_chunk_size`` edges."""

    name = "filter"

    def __init__(self, bundle, config):
        super().__init__(bundle, config)
        self.steps = self._steps("filter")

    def __call__(self, arrays):
        features = self._features(arrays)
        edges = validate_edges(arrays["EDGE_LIST"], features.shape[0], "EDGE_LIST")
        return {"FILTER_SCORES": self.steps.edge_logits("filter", features, edges, chunked=True)}


class ApplyFilterStage(EnsembleStage):
    """``EDGE_LIST, FILTER_SCORES -> EDGE_LIST_AFTER_FILTER``: the edges whose sigmoid(score) > filter_cut."""

    name = "applyfilter"

    def __call__(self, arrays):
        edges = validate_edges(arrays["EDGE_LIST"], None, "EDGE_LIST")
        scores = _scores(arrays["FILTER_SCORES"], edges.shape[1], "FILTER_SCORES")
        kept = passes_cut(scores, self.stages.filter_cut)  # in float64, as the custom model's pipeline
        return {"EDGE_LIST_AFTER_FILTER": np.ascontiguousarray(edges[:, kept])}


class GnnStage(EnsembleStage):
    """``FEATURES, EDGE_LIST_AFTER_FILTER -> GNN_SCORES``: GNN logits over the whole filtered graph at once.

    As in the custom model's :class:`~trackserve.runtime.pipeline.Pipeline`, a
    message-passing GNN runs on the hits the edges touch only and on groups of connected
    components at once (:meth:`~trackserve.runtime.network_steps.NetworkSteps.gnn_logits`),
    so both layouts do the same work.
    """

    name = "gnn"

    def __init__(self, bundle, config):
        super().__init__(bundle, config)
        self.steps = self._steps("gnn")

    def __call__(self, arrays):
        features = self._features(arrays)
        edges = validate_edges(arrays["EDGE_LIST_AFTER_FILTER"], features.shape[0], "EDGE_LIST_AFTER_FILTER")
        self.memory.check_gnn_edges(features.shape[0], edges.shape[1], self.config.memory_limit_bytes)
        if edges.shape[1] == 0:
            return {"GNN_SCORES": np.zeros(0, dtype=np.float32)}
        return {"GNN_SCORES": self.steps.gnn_logits(features, edges)}


class ComponentsStage(EnsembleStage):
    """``FEATURES, EDGE_LIST_AFTER_FILTER, GNN_SCORES -> LABELS [N]``: connected components over the edges passing gnn_cut.

    ``FEATURES`` gives the number of hits, so a hit no edge reaches still gets its label.
    """

    name = "wcc"

    def __call__(self, arrays):
        num_hits = int(arrays[FEATURES].shape[0])
        edges = validate_edges(arrays["EDGE_LIST_AFTER_FILTER"], None, "EDGE_LIST_AFTER_FILTER")
        scores = _scores(arrays["GNN_SCORES"], edges.shape[1], "GNN_SCORES")
        return {LABELS: build_tracks(num_hits, edges, scores, self.stages.gnn_cut,
                                     **bundle_track_options(self.bundle, arrays[FEATURES]))}


_STAGES = {cls.name: cls for cls in (EmbedStage, GraphStage, FilterStage, ApplyFilterStage, GnnStage, ComponentsStage)}


def make_stage(name: str, bundle: Bundle, config: RuntimeConfig | None = None) -> EnsembleStage:
    """The stage callable ``name`` (one of :data:`~trackserve.serving.interface.STAGE_NAMES`) for ``bundle``."""
    if name not in _STAGES:
        raise InputError(f"unknown ensemble stage {name!r}; the stages are {', '.join(_STAGES)}")
    return _STAGES[name](bundle, config or RuntimeConfig())


def run_stages(stages: list[EnsembleStage], features: np.ndarray) -> np.ndarray:
    """Chain stage callables as the ensemble does (every tensor produced is visible to later stages); return LABELS."""
    tensors: dict[str, np.ndarray] = {FEATURES: features}
    for stage in stages:
        tensors.update(stage({name: tensors[name] for name in stage.spec.inputs}))
    return tensors[LABELS]
