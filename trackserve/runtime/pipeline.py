"""The lean pipeline: features -> embedding -> radius graph -> filter -> GNN -> tracks.

Only numpy, scipy and onnxruntime are used, so the same code runs in a script, in
``trackserve run`` and inside a Triton Python-backend model. Each stage is also callable
alone on arrays (:meth:`Pipeline.embed`, :meth:`Pipeline.build_graph`,
:meth:`Pipeline.filter_edges`, :meth:`Pipeline.classify_edges`,
:meth:`Pipeline.build_tracks`), and :meth:`Pipeline.run` records the wall time of every
stage of every call in :class:`PipelineResult.timings`. In :meth:`Pipeline.run` a
message-passing GNN sees only the hits that some filtered edge touches
(:mod:`trackserve.runtime.subgraph`): the same scores for less work (to float32 rounding:
a call of another size rounds its last rows its own way).

The cores an event may use (``config.intra_op_threads``) work on parts of it at once
(:mod:`trackserve.runtime.parallel`): the embedding on slices of the hits, the filter on
slices of each chunk of edges, the GNN on groups of whole connected components of the
filtered graph, each part in a single-threaded ONNX Runtime call.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..bundle import EDGE_DIRECTIONS, PIPELINE_FILE, Bundle, StageParameters, load_bundle
from ..bundle.loading import bundle_error, bundle_problems
from ..engines.onnx_runtime import OnnxNetwork
from ..errors import BundleError, GraphConventionWarning, HitOrderWarning, InputError, MemoryLimitError
from ..events.event import Event
from ..events.features import hit_features
from .config import RuntimeConfig, require_device
from .event_processes import EventProcesses
from .graph_building import build_graph
from .inputs import graph_convention_problems, validate_edges, validate_embedding, validate_features
from .memory import MemoryModel, memory_limit_error
from .network_steps import NetworkSteps
from .cuts import passes_cut
from .track_building import build_tracks, bundle_track_options
from .vertex_shifts import (SHIFT_FEATURES, is_shifted, merge_by_intercept, missing_shift_features, shifted_features,
                            shifts_in_words)

#: How often (seconds) waiting for an event in a worker process checks that the workers live.
WORKER_CHECK_SECONDS = 1.0
#: Stage names in execution order, as they appear in :attr:`PipelineResult.timings`.
STAGES = ("embed", "graph", "filter", "gnn", "tracks")


@dataclass
class PipelineResult:
    """What one event produced: a label per hit, the seconds of every stage and the graph sizes.

    ``labels[i]`` is the track of hit ``i`` (compact, ``0 .. num_tracks-1``; a hit no kept
    edge reaches is a track of its own). ``timings`` maps each name of :data:`STAGES`
    and ``"total"`` to seconds. ``num_edges`` gives the edges after ``graph``,
    ``filter`` and ``gnn`` (the edges that passed the GNN cut); with vertex shifts
    (:attr:`Pipeline.vertex_shifts`) the stage times and the ``graph`` and ``filter``
    counts are summed over the passes, ``merged`` counts the distinct filtered edges the
    tracks are built from, and ``gnn`` those of them passing the cut.
    """

    labels: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    num_edges: dict[str, int] = field(default_factory=dict)

    @property
    def num_hits(self) -> int:
        """Number of hits of the event."""
        return int(self.labels.shape[0])

    @property
    def num_tracks(self) -> int:
        """Number of distinct labels (tracks, single-hit ones included)."""
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def num_tracks_with(self, min_hits: int) -> int:
        """Number of tracks with at least ``min_hits`` hits."""
        if not self.labels.size:
            return 0
        return int(np.count_nonzero(np.bincount(self.labels) >= min_hits))


class Pipeline:
    """A bundle loaded for one device, ready to run events.

    ``Pipeline(bundle_or_path, device="cpu", config=RuntimeConfig())`` loads and validates
    the bundle and opens one ONNX Runtime session per network with the configured pool.
    """

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "cpu", config: RuntimeConfig | None = None):
        require_device(device)
        if config is not None and not isinstance(config, RuntimeConfig):
            raise InputError(f"config must be a RuntimeConfig (e.g. RuntimeConfig(intra_op_threads=2)), "
                             f"got {type(config).__name__}")
        if not isinstance(bundle, (Bundle, str, Path)):
            raise InputError(f"bundle must be a bundle directory (a path) or a loaded Bundle, got {type(bundle).__name__}")
        if isinstance(bundle, Bundle):
            problems = bundle_problems(bundle)  # (a bundle read from disk passed them; one changed in memory may not)
            if problems:
                where = "made in memory" if bundle.directory is None else f"{bundle.directory} as changed in memory"
                raise bundle_error(f"({where})", problems)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.device = device
        self.config = config or RuntimeConfig()
        self.feature_spec = self.bundle.feature_spec
        self._forks = _AFTER_FORK.forks  # the process whose thread pools and sessions these are
        self._steps_here = NetworkSteps(self.bundle, self.config)
        self.networks: dict[str, OnnxNetwork] = self._steps_here.networks
        self.stages = self.bundle.stages
        self.memory = MemoryModel.for_bundle(self.bundle)
        # The runtime's shifts, else the bundle's (a bundle whose cuts were tuned for them).
        shifts = self.config.vertex_shifts if self.config.vertex_shifts is not None else self.stages.vertex_shifts
        self._vertex_shifts = shifts if is_shifted(shifts) else None
        if self._vertex_shifts is not None:
            missing = missing_shift_features(self.feature_spec.names)
            if missing:
                raise InputError(f"vertex_shifts move the hits along the beam and merge edges by their r-z intercept, "
                                 f"which needs the features {', '.join(SHIFT_FEATURES)}; this bundle reads "
                                 f"{', '.join(self.feature_spec.names)} (no {', '.join(missing)})")
        # One-worker pipeline for events too large for a worker's share of the memory (run_many).
        self._alone: Pipeline | None = None
        # Worker processes of run_many with event_executor="processes", started on first use.
        self._processes: EventProcesses | None = None
        self._processes_lock = threading.Lock()

    @property
    def _steps(self) -> NetworkSteps:
        """The network steps of this process (opened again in a forked child: see :meth:`_own_process`)."""
        self._own_process()
        return self._steps_here

    def _own_process(self) -> None:
        """In a child forked after this pipeline was made, open again what a fork does not carry
        over: the thread pool of the event's parts and the ONNX Runtime sessions (whose threads
        stay in the parent: a child using them waited for ever), and forget the parent's
        worker processes and its lock (the child starts its own when it needs them). Once,
        whichever of the child's threads comes first; the others wait for it."""
        if self._forks == _AFTER_FORK.forks:
            return
        with _AFTER_FORK.lock:
            if self._forks == _AFTER_FORK.forks:
                return
            self._processes_lock = threading.Lock()
            self._processes = None  # the parent's: their clean-up does nothing in this process
            self._alone = None
            self._steps_here = NetworkSteps(self.bundle, self.config)
            self.networks = self._steps_here.networks
            self._forks = _AFTER_FORK.forks  # last: no thread may take the parent's steps for this process's

    @property
    def vertex_shifts(self) -> tuple[float, ...] | None:
        """The shifts (mm, sorted) each event runs at: ``config.vertex_shifts``, else the bundle's
        ``stages.vertex_shifts``; None for one pass at the centre."""
        return self._vertex_shifts

    @property
    def num_features(self) -> int:
        """Number of node features the bundle's networks take."""
        return self.bundle.num_features

    # -- stages, each callable alone -------------------------------------------------
    # Each public stage checks its inputs (InputError naming the problem); run() checks the
    # event's features once and calls the stages' unchecked forms (_graph, _filtered, ...).
    def embed(self, features: np.ndarray) -> np.ndarray:
        """Embedding ``[N, D]`` float32 of features ``[N, F]`` float32 (checked)."""
        return self._embedded(validate_features(features, self.num_features))

    def _embedded(self, features: np.ndarray) -> np.ndarray:
        """The embedding of checked features; InputError when the network's output is not finite."""
        return self._steps.embed(features)

    def build_graph(self, embedding: np.ndarray) -> np.ndarray:
        """Edges ``[2, M]`` int64: pairs closer than the bundle's radius, capped and directed as it says.
        ``embedding``: ``[N, D]`` with the bundle's embedding width D."""
        return self._graph(validate_embedding(embedding, self._steps.embedding_dim))

    def _graph(self, embedding: np.ndarray) -> np.ndarray:
        return build_graph(
            embedding,
            self.stages.radius,
            self.stages.max_neighbours,
            direction=self.stages.edge_direction,
            threads=self.config.resolved_graph_threads,
            memory_limit=self.config.memory_limit_per_event,
            memory_held=self.memory.hits_bytes(embedding.shape[0]),
        )

    def _checked(self, features, edge_index) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[N, F]`` float32 and edges ``[2, M]`` of hit indices in ``[0, N)``, checked;
        a :class:`~trackserve.errors.GraphConventionWarning` when the edges are not a graph the
        bundle's graph stage builds (another direction, self-loops, repeated edges)."""
        features = validate_features(features, self.num_features)
        edge_index = validate_edges(edge_index, features.shape[0])
        problems = graph_convention_problems(edge_index, self.stages.edge_direction, features.shape[0])
        if problems:
            warnings.warn(
                f"edge_index is not a graph this bundle's graph stage builds ({EDGE_DIRECTIONS[self.stages.edge_direction]}, "
                f"no self-loops): it has "
                f"{'; '.join(problems)}. The networks score it as given, but they were trained on the bundle's "
                "convention, so their scores and the tracks differ from what run() gives; build the edges with "
                "build_graph(), or orient them as the bundle's stages.edge_direction says",
                GraphConventionWarning, stacklevel=3)
        return features, edge_index

    def classify_edges(self, network: str, features: np.ndarray, edge_index: np.ndarray, *, chunked: bool) -> np.ndarray:
        """Logits ``[M]`` of edge classifier ``network`` (``"filter"``, ``"gnn"``, or a bundle's
        ``"pruner"``) on ``edge_index``.

        With ``chunked`` the edges go through in chunks of ``config.edge_chunk_size``, each
        cut into parts for the event's threads (right only for networks that score each
        edge from its own two hits: the filter); otherwise all at once in one call. For a
        bundle with a pruner, ``"gnn"`` unchunked is the whole GNN step (:meth:`gnn_logits`:
        the GNN sees only the edges the pruner keeps), never the GNN on edges it was not
        trained to see.
        """
        classifiers = [name for name in ("filter", "pruner", "gnn") if name in self.networks]
        if network not in classifiers:
            raise InputError(f"{network!r} is not an edge classifier of this bundle: give one of {', '.join(classifiers)}")
        if not isinstance(chunked, (bool, np.bool_)):
            raise InputError(f"chunked must be True or False; got {chunked!r}")
        if chunked and network != "filter":
            raise InputError(f"chunked=True cuts the edges into parts scored apart, right only for the filter; the "
                             f"{network} passes messages over the whole graph: call it with chunked=False")
        features, edge_index = self._checked(features, edge_index)
        if network == "gnn" and not chunked and "pruner" in self.bundle.networks:
            return self._steps.gnn_logits(features, edge_index)
        return self._steps.edge_logits(network, features, edge_index, chunked=chunked)

    def gnn_logits(self, features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
        """The GNN step's logits ``[M]`` of the filtered edges ``edge_index`` (valid hit indices), as
        :meth:`run` computes them: on the hits the edges touch, on the event's threads, and,
        with a bundle's ``pruner``, the GNN only on the edges whose pruner score passes
        ``stages.prune_cut`` (the others keep the pruner's logit)."""
        return self._steps.gnn_logits(*self._checked(features, edge_index))

    def pruned_edges(self, features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
        """The filtered edges ``edge_index`` (valid hit indices) whose pruner score passes
        ``stages.prune_cut``: those the GNN scores. InputError for a bundle without a pruner."""
        if self.stages.prune_cut is None:
            raise InputError("this bundle has no pruner: its GNN scores every filtered edge")
        features, edge_index = self._checked(features, edge_index)
        return np.ascontiguousarray(edge_index[:, self._steps.prune(features, edge_index)[1]])

    def filter_edges(self, features: np.ndarray, edge_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the filter in chunks; return ``(kept_edges [2, M'], filter_logits [M])``."""
        return self._filtered(*self._checked(features, edge_index))

    def _filtered(self, features: np.ndarray, edge_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = self._steps.edge_logits("filter", features, edge_index, chunked=True)
        kept = passes_cut(logits, self.stages.filter_cut)
        return np.ascontiguousarray(edge_index[:, kept]), logits

    def build_tracks(self, num_hits: int, edge_index: np.ndarray, gnn_logits: np.ndarray,
                     features: np.ndarray | None = None) -> np.ndarray:
        """Track label per hit: connected components of the edges whose GNN score passes the cut,
        by the bundle's ``track_building`` method (``best_edges`` reads the hits' r and z from
        ``features``, which it then needs), its ``gap_cut`` and its ``join_pieces`` when it
        has them (joining reads r, phi and z)."""
        if features is not None:
            features = validate_features(features, self.num_features)
            if features.shape[0] != num_hits:
                raise InputError(f"features hold {features.shape[0]} hits but num_hits is {num_hits}: give the "
                                 "event's features, one row per hit")
        return self._tracks(num_hits, edge_index, gnn_logits, features)

    def _tracks(self, num_hits: int, edge_index: np.ndarray, gnn_logits: np.ndarray, features) -> np.ndarray:
        return build_tracks(num_hits, edge_index, gnn_logits, self.stages.gnn_cut,
                            **bundle_track_options(self.bundle, features))

    # -- whole events ----------------------------------------------------------------
    def run(self, features: np.ndarray) -> PipelineResult:
        """Run every stage on one event's features ``[N, F]`` float32 and return its labels and timings.

        With ``config.vertex_shifts`` the stages up to the GNN run once per shift, each
        stage's time summed over the passes, the passes' edges merged
        (:func:`~trackserve.runtime.vertex_shifts.merge_by_intercept`, timed with the
        tracks) and ``num_edges`` of the graph and the filter summed over them."""
        features = self._event_features_checked(features)
        num_hits = features.shape[0]
        self.memory.check_hits(num_hits, self.config.memory_limit_per_event)
        timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        start = time.perf_counter()
        passes, filtered, gnn_logits = self._scored(features, timings)
        mark = time.perf_counter()
        labels = self._tracks(num_hits, filtered, gnn_logits, features)
        timings["tracks"] += time.perf_counter() - mark
        timings["total"] = time.perf_counter() - start
        passed = int(np.count_nonzero(passes_cut(gnn_logits, self.stages.gnn_cut)))
        num_edges = {"graph": sum(graph for graph, _, _ in passes), "filter": sum(f.shape[1] for _, f, _ in passes),
                     "gnn": passed}
        if self._vertex_shifts is not None:  # (one shift away from the centre: one pass, nothing to merge)
            num_edges["merged"] = int(filtered.shape[1])
        return PipelineResult(labels=labels, timings=timings, num_edges=num_edges)

    def scored_edges(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(edge_index [2, M], GNN logits [M])`` of an event's features ``[N, F]``, the edges
        track building takes, as :meth:`run` computes them: the filtered edges of one pass, or
        with ``config.vertex_shifts`` the passes merged edge by edge."""
        features = self._event_features_checked(features)
        self.memory.check_hits(features.shape[0], self.config.memory_limit_per_event)
        _, edges, logits = self._scored(features, dict.fromkeys(STAGES, 0.0))
        return edges, logits

    def _scored(self, features: np.ndarray, timings: dict) -> tuple[list, np.ndarray, np.ndarray]:
        """``(passes, edges, GNN logits)`` of checked features: each pass's ``(graph edges, filtered
        edges, logits)``, and the edges track building takes with their logits (the one pass's,
        or the passes merged, the merge's seconds added to ``timings["tracks"]``)."""
        passes = [self._scored_pass(features, shift, timings) for shift in self._vertex_shifts or (0.0,)]
        if len(passes) == 1:
            return passes, passes[0][1], passes[0][2]
        mark = time.perf_counter()
        rows = sum(filtered.shape[1] for _, filtered, _ in passes)
        self.memory.check_merged_edges(features.shape[0], rows, self.config.memory_limit_per_event)
        edges, logits = self._merged(features, [filtered for _, filtered, _ in passes], [l for _, _, l in passes])
        timings["tracks"] += time.perf_counter() - mark
        return passes, edges, logits

    def _scored_pass(self, features: np.ndarray, shift: float, timings: dict) -> tuple[int, np.ndarray, np.ndarray]:
        """``(graph edges, filtered edges, GNN logits)`` of checked features with the hits moved by
        ``-shift`` mm along the beam (as they are for 0), each stage's seconds added to ``timings``."""
        num_hits = features.shape[0]
        limit = self.config.memory_limit_per_event
        mark = time.perf_counter()  # the hits moved for the pass are timed with the embedding
        if shift:
            features = shifted_features(features, self.feature_spec.names, self.feature_spec.scales, shift)
        embedding = self._embedded(features)
        timings["embed"] += time.perf_counter() - mark
        mark = time.perf_counter()
        edges = self._graph(embedding)
        timings["graph"] += time.perf_counter() - mark
        self.memory.check_edges(num_hits, edges.shape[1], limit, self.config.edge_chunk_size)
        mark = time.perf_counter()
        filtered, _ = self._filtered(features, edges)
        timings["filter"] += time.perf_counter() - mark
        self.memory.check_gnn_edges(num_hits, filtered.shape[1], limit)
        mark = time.perf_counter()
        gnn_logits = self._steps.gnn_logits(features, filtered)
        timings["gnn"] += time.perf_counter() - mark
        return int(edges.shape[1]), filtered, gnn_logits

    def merge_vertex_shifts(self, features: np.ndarray, edges: list, logits: list) -> tuple[np.ndarray, np.ndarray]:
        """``(edge_index, logits)`` of the passes at :attr:`vertex_shifts` (one filtered edge set
        ``[2, M_k]`` and its GNN logits ``[M_k]`` per shift, in the order of :attr:`vertex_shifts`,
        which is sorted whatever order the config gave) merged edge by edge
        (:func:`~trackserve.runtime.vertex_shifts.merge_by_intercept`) by the hits' own
        positions in ``features`` ``[N, F]``. Checks its inputs (InputError naming the problem;
        a :class:`~trackserve.errors.GraphConventionWarning` for edges not in the bundle's
        convention, as the other stages give)."""
        if self._vertex_shifts is None:
            raise InputError("this pipeline runs one pass at the centre: give RuntimeConfig(vertex_shifts=...) to merge "
                             "passes")
        features = validate_features(features, self.num_features)
        for given, what in ((edges, "edge sets"), (logits, "logit arrays")):
            if not isinstance(given, (list, tuple)):
                raise InputError(f"merge_vertex_shifts takes a list of {what}, one per vertex shift in the order "
                                 f"{shifts_in_words(self._vertex_shifts)}; got {type(given).__name__}")
        if not (len(edges) == len(logits) == len(self._vertex_shifts)):
            raise InputError(f"give one edge set and one logit array per vertex shift, in the order "
                             f"{shifts_in_words(self._vertex_shifts)} (pipeline.vertex_shifts); "
                             f"got {len(edges)} edge sets and {len(logits)} logit arrays")
        edges = [self._checked(features, validate_edges(edge_index, features.shape[0],
                                                        f"the edges of the pass at {shift:g} mm"))[1]
                 for edge_index, shift in zip(edges, self._vertex_shifts)]
        return self._merged(features, edges, logits)

    def _merged(self, features: np.ndarray, edges: list, logits: list) -> tuple[np.ndarray, np.ndarray]:
        r_column, z_column = (self.feature_spec.names.index(name) for name in SHIFT_FEATURES)
        r = features[:, r_column].astype(np.float64) * self.feature_spec.scales[r_column]
        z = features[:, z_column].astype(np.float64) * self.feature_spec.scales[z_column]
        return merge_by_intercept(features.shape[0], self._vertex_shifts, edges, logits, r, z)

    def event_features(self, event: Event) -> np.ndarray:
        """The bundle's node features of a TrackML event's hits, one row per hit in the event's
        row order. The networks expect hits in ``hit_id`` order (as ``read_event`` reads them):
        for an event whose rows are in another order a :class:`HitOrderWarning` says so
        (:meth:`run_event` takes care of it; for :meth:`run`, take ``event.in_hit_id_order()``)."""
        self._require_event(event, "event_features")
        if event.hit_id_order() is not None:
            warnings.warn(HitOrderWarning(
                f"event {event.name}: its hits are not in hit_id order, which the bundle's networks and edge direction "
                "were trained on; these features follow the event's rows (run_event reorders by itself; for run(), "
                "take event.in_hit_id_order())"), stacklevel=2)
        _warn_hit_numbering(event, stacklevel=3)
        return hit_features(event.hits, self.feature_spec)

    @staticmethod
    def _require_event(event, method: str) -> None:
        """InputError unless ``event`` is a TrackML :class:`Event` (a path or an array is a common slip)."""
        if not isinstance(event, Event):
            raise InputError(f"{method} takes a TrackML Event (trackserve.events.read_event(path) reads one); got "
                             f"{type(event).__name__}" + (f" {event!r}" if isinstance(event, (str, Path)) else ""))

    def run_event(self, event: Event) -> PipelineResult:
        """Compute the bundle's features of a TrackML event and run :meth:`run` on them; hits
        whose rows are not in ``hit_id`` order are run in that order, and the labels come back
        in the event's own row order."""
        self._require_event(event, "run_event")
        _warn_hit_numbering(event, stacklevel=3)
        order = event.hit_id_order()
        if order is None:
            return self.run(hit_features(event.hits, self.feature_spec))
        result = self.run(hit_features({name: np.asarray(column)[order] for name, column in event.hits.items()},
                                       self.feature_spec))
        labels = np.empty_like(result.labels)
        labels[order] = result.labels
        return replace(result, labels=labels)

    def run_many(self, events: Iterable[np.ndarray], *, yield_errors: bool = False) -> Iterator[PipelineResult]:
        """Run events (feature arrays) and yield their results in the order given.

        With ``config.event_workers`` above 1, that many events are in flight at once on
        a thread pool (ONNX Runtime, numpy and scipy release the interpreter lock while
        they work), or with ``config.event_executor="processes"`` in as many worker
        processes (:mod:`~trackserve.runtime.event_processes`; they stay up for later
        calls until :meth:`close`); ``events`` is read only as far as the pool needs (one
        event more than the workers, handed over ahead). Each event in flight
        may use its share of the memory limit (:attr:`RuntimeConfig.memory_limit_per_event`);
        one refused only for its share, whose estimate fits the whole limit, runs again
        when its turn comes, alone: the events in flight finish first, then it runs with
        one worker (all the configured cores unless the threads were set), so nothing a
        one-worker run would take is refused. An event that fails raises its error when
        its turn to be yielded comes, after the events before it; with ``yield_errors``
        an event refused as input (:class:`~trackserve.errors.InputError`: bad features,
        too large for the memory limit) is yielded as that error in its place instead, and
        the events after it still run. A worker process that died raises either way. One
        event's features (a 2-D array) or an Event given instead of an iterable of events is
        refused at once (a 3-D array is events of equal size, one per row)."""
        if isinstance(events, Event) or (isinstance(events, np.ndarray) and events.ndim != 3):
            what = "Event" if isinstance(events, Event) else f"{events.ndim}-D array"
            raise InputError(f"run_many takes an iterable of events' feature arrays, got one {what}: use run() for "
                             "one event's features, run_event() for one Event, or give a list")
        return self._results_of(events, yield_errors)

    def _results_of(self, events: Iterable[np.ndarray], yield_errors: bool) -> Iterator[PipelineResult]:
        """The generator :meth:`run_many` returns, once its arguments are checked."""
        workers = self.config.event_workers
        if workers == 1:
            for features in events:
                yield self._outcome(lambda: self.run(features), yield_errors)
            return
        # One event more than the workers is handed over ahead, so that a worker that finishes
        # takes the next at once instead of waiting for the caller to take the oldest result
        # and hand over another (the queued event holds only its features: it starts when a
        # worker is free, so no more events run at once than there are workers). On threads,
        # the 100 published benchmark events on the project's 2-core Intel machine ran 9.64
        # ms an event against 10.81 with no event ahead (medians of 7 alternating passes).
        window = workers + 1
        if self.config.event_executor == "processes":
            # Workers in processes of their own, kept for later calls (close() stops them).
            yield from self._in_flight(events, self._submit_to_processes, window, yield_errors)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trackserve-event") as pool:
            yield from self._in_flight(events, lambda features: pool.submit(self.run, features), window,
                                       yield_errors)

    @staticmethod
    def _outcome(compute, yield_errors: bool):
        """``compute()``, or with ``yield_errors`` the InputError it raises."""
        if not yield_errors:
            return compute()
        try:
            return compute()
        except InputError as error:
            return error

    def _in_flight(self, events: Iterable[np.ndarray], submit, window: int,
                   yield_errors: bool = False) -> Iterator[PipelineResult]:
        """Results of ``events`` in order, with at most ``window`` of them submitted (``submit(features)``
        returns a future) and not yet yielded."""
        pending: deque = deque()  # (features, future) of the events in flight, oldest first
        source = iter(events)
        source_error = None
        try:
            while True:
                try:
                    features = next(source)
                except StopIteration:
                    break
                except Exception as error:  # the events' source failed: the events before it still count
                    source_error = error
                    break
                pending.append((features, submit(features)))
                if len(pending) >= window:
                    yield self._outcome(lambda: self._oldest_result(pending), yield_errors)
            while pending:
                yield self._outcome(lambda: self._oldest_result(pending), yield_errors)
            if source_error is not None:
                raise source_error
        finally:
            for _features, future in pending:
                future.cancel()

    def _event_features_checked(self, features) -> np.ndarray:
        """An event's features as :meth:`run` takes them (checked), or InputError; an Event
        given instead is named as such."""
        if isinstance(features, Event):
            raise InputError("run() takes an event's features array [N, F]; for an Event use run_event(event), "
                             "or pipeline.event_features(event) for its features")
        return validate_features(features, self.num_features)

    def _submit_to_processes(self, features: np.ndarray):
        """Start one event in the worker processes (started on first use: each runs one event at
        a time with this config's threads per event and its memory share); after a worker died,
        the next call starts new ones. Features run() refuses are refused here, in a future that
        raises in the event's turn, since pickling them for a worker can change them (a
        big-endian array arrives in the machine's order)."""
        try:
            self._event_features_checked(features)
        except InputError as error:
            refused = Future()
            refused.set_exception(error)
            return refused
        self._own_process()
        with self._processes_lock:  # one pool, whichever thread starts it
            return self._submit_locked(features)

    def _submit_locked(self, features: np.ndarray):
        if self._processes is not None and not self._processes.busy() and self._processes.a_worker_died():
            # A worker died while idle (nothing of this pipeline in flight): new workers, rather than
            # an event handed to a pool that can run nothing and then reported lost.
            self._processes.close(wait=False)
            self._processes = None
        if self._processes is None:
            config = self.config
            one_event = replace(config, event_workers=1, event_executor="threads",
                                intra_op_threads=config.resolved_intra_op_threads,
                                graph_threads=config.resolved_graph_threads,
                                memory_limit_bytes=config.memory_limit_per_event)
            self._processes = EventProcesses(self.bundle.directory, self.device, one_event, config.event_workers,
                                             self._stages_in_memory())
        try:
            return self._processes.submit(features)
        except BrokenProcessPool:
            # A worker died before this event was handed over (while idle, or with events in
            # flight, whose results raise WorkerError in their turn): this event goes to new workers.
            self._processes.close()
            self._processes = None
            return self._submit_locked(features)

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker processes of :meth:`run_many`, if it started any (they are started
        again when needed): after the events they are running, or with ``wait=False`` at once.
        Also done when the pipeline is garbage-collected or at exit (of a multiprocessing
        child too, before it waits for its own children)."""
        if self._forks != _AFTER_FORK.forks:  # a forked child's copy: the workers are its parent's
            self._processes = None
            return
        with self._processes_lock:
            if self._processes is not None:
                self._processes.close(wait=wait)
                self._processes = None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(wait=exc_type is None)  # on an error or Ctrl-C the worker processes stop at once

    def __reduce__(self):
        # Pickled as what rebuilds it (the bundle's directory, the device, the config, and
        # stages changed in memory): ONNX Runtime sessions and worker processes do not
        # travel; the copy opens its own.
        return (opened_pipeline, (str(Path(self.bundle.directory).resolve()), self.device, self.config,
                                  self._stages_in_memory()))

    def _stages_in_memory(self) -> dict | None:
        """The bundle's stages when they are not its directory's (a Bundle changed with
        ``dataclasses.replace``), which a pipeline opened again from the directory needs."""
        try:  # only the stages of pipeline.json: the networks are checked when the copy opens them
            data = json.loads((Path(self.bundle.directory) / PIPELINE_FILE).read_text())
            on_disk = StageParameters.from_dict(data["stages"])
        except (BundleError, OSError, ValueError, KeyError, TypeError):  # changed or gone: hand over what this runs
            on_disk = None
        return None if on_disk == self.stages else self.stages.to_dict()

    def _result_of(self, future: Future) -> PipelineResult:
        """``future.result()``; for an event in a worker process, checking while it waits that
        the workers live: one that died while sending a result leaves the future waiting for
        ever, which is then a ``BrokenProcessPool`` like any other death of a worker."""
        processes = self._processes
        if processes is None:
            return future.result()
        while True:
            try:
                return future.result(timeout=WORKER_CHECK_SECONDS)
            except FutureTimeoutError:  # (the built-in TimeoutError only from Python 3.11)
                if processes.a_worker_died():
                    try:  # the pool's own notice of the death, if it comes
                        return future.result(timeout=WORKER_CHECK_SECONDS)
                    except FutureTimeoutError:
                        self.close(wait=False)  # ends the reader stuck on half a message
                        raise BrokenProcessPool("a worker process died while handing back a result") from None

    def _oldest_result(self, pending: deque) -> PipelineResult:
        """The result of the oldest event in flight (see :meth:`run_many`); re-raises its error,
        except a refusal for its share of the memory limit that the whole limit allows."""
        features, future = pending.popleft()
        try:
            return self._result_of(future)
        except MemoryLimitError as error:
            if error.needed > self.config.memory_limit_bytes:
                # refused for the whole limit too: say so, not the share it had in flight
                whole = self.config.memory_limit_bytes
                raise (error if error.subject is None else memory_limit_error(error.subject, error.needed, whole))
        except BrokenProcessPool as error:
            self.close()
            raise EventProcesses.broken(error) from error
        wait([other for _features, other in pending])
        if self._alone is None:
            self._alone = Pipeline(self.bundle, device=self.device, config=replace(self.config, event_workers=1))
        return self._alone.run(features)


class _AfterFork:
    """How many forks led to this process (``forks``: a pipeline made before the last one is a
    forked copy, told without a system call on the event's path) and the lock of
    :meth:`Pipeline._own_process`, made anew in a forked child (the parent's may have been held
    by a thread that does not exist there)."""

    def __init__(self):
        self.forks = 0
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self.forks += 1
        self.lock = threading.Lock()


_AFTER_FORK = _AfterFork()


def opened_pipeline(bundle_directory: str, device: str, config: RuntimeConfig, stages: dict | None = None) -> Pipeline:
    """A pipeline opened again from its bundle's directory (unpickled, or in a worker process),
    with ``stages`` (a ``pipeline.json`` ``stages`` object) instead of the directory's when given."""
    bundle = load_bundle(bundle_directory)
    if stages is not None:
        bundle = replace(bundle, stages=StageParameters.from_dict(stages))
    return Pipeline(bundle, device=device, config=config)


def _warn_hit_numbering(event: Event, stacklevel: int) -> None:
    """A :class:`HitOrderWarning` when the event's hit ids are not TrackML's numbering
    (:func:`~trackserve.events.event.hit_numbering_problem`), which no row order mends."""
    problem = event.hit_numbering_problem()
    if problem is not None:
        warnings.warn(HitOrderWarning(f"event {event.name}: {problem}"), stacklevel=stacklevel)
