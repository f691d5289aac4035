"""Settings of the runtime: thread pools, edge chunking and the memory limit.

Every pool the runtime uses is sized here, explicitly. The stages of one event run one
after the other, so each pool may use all the cores given to that event without
oversubscription: the network stage's parts (single-threaded ONNX Runtime calls) while
a network runs, the graph builder's threads while the graph is built, never both at once. With ``event_workers``
above 1, :meth:`~trackserve.runtime.pipeline.Pipeline.run_many` keeps that many events
in flight at once, and the default pools shrink so that workers times threads stays
within the cores.
"""

from __future__ import annotations

import math

import numbers
import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..values import shown
from .vertex_shifts import validate_vertex_shifts

#: The devices this runtime supports (the GPU issue adds "cuda").
DEVICES = ("cpu",)


def require_device(device: str) -> None:
    """Raise :class:`InputError` unless ``device`` is one of :data:`DEVICES`."""
    if device not in DEVICES:
        raise InputError(f"device {device!r} is not supported by this runtime; choose one of {', '.join(DEVICES)}")


#: Edges per filter call: about 100 MB of float32 activations for a 64-wide filter.
DEFAULT_EDGE_CHUNK_SIZE = 400_000
#: Memory an event may need, by the runtime's estimate, before it is refused.
DEFAULT_MEMORY_LIMIT_BYTES = 8 * 2**30
#: The largest memory limit: an int64 of bytes (8 EiB, beyond any machine's memory), so that
#: every limit a served model's config carries reads back as one.
MAX_MEMORY_LIMIT_BYTES = 2**63 - 1
#: The most events in flight :func:`automatic_event_workers` chooses: the count measured
#: (on 2 cores, ``benchmarks/RESULTS.md``); more is for the user to set and measure.
AUTOMATIC_MAX_EVENT_WORKERS = 2
#: Where the events in flight run (:attr:`RuntimeConfig.event_executor`).
EVENT_EXECUTORS = ("threads", "processes")


#: The most threads a pool of one event may have: each thread holds a session of every
#: network open, so a typo (``intra_op_threads=1_000_000``) would fill the memory before anything ran.
MAX_THREADS = 1024


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def automatic_event_workers(num_events: int, cores: int | None = None) -> int:
    """Events in flight for a run of ``num_events`` events when neither the events in
    flight nor the threads were set: one per core, at most
    :data:`AUTOMATIC_MAX_EVENT_WORKERS`, never more than the events (1 for a single event).

    Why: on this project's 2-core machine two events in flight with one thread each ran
    the published benchmark events (1.3k hits) 1.37 times, simulated events of 10k hits
    1.52 times and of 100k hits 1.22 times as fast as one event at a time on both cores
    (parts of each event), with the same labels (``benchmarks/bench_event_workers.py``;
    1.23, 1.50 and 1.12 times in a second run with another bundle of the same sizes);
    each event's own time is longer, so a single event keeps every core. ``cores``
    defaults to :func:`available_cores`."""
    if isinstance(num_events, bool) or not isinstance(num_events, int) or num_events < 0:
        raise InputError(f"num_events must be an integer >= 0; got {num_events!r}")
    cores = available_cores() if cores is None else cores
    return max(1, min(num_events, cores, AUTOMATIC_MAX_EVENT_WORKERS))


@dataclass(frozen=True)
class RuntimeConfig:
    """How the pipeline uses the machine.

    ``intra_op_threads``: threads of each network stage of one event, at most
    :data:`MAX_THREADS` (default: the cores divided among the event workers, at least 1); the stage runs that many
    single-threaded ONNX Runtime calls on parts of the event at once
    (:mod:`trackserve.runtime.network_steps`).
    ``graph_threads``: threads of the graph builder (same default).
    ``event_workers``: events :meth:`~trackserve.runtime.pipeline.Pipeline.run_many` runs
    at once (default 1: one event at a time with every core). Many small events go
    faster with one worker per core and one thread each: the per-operator and Python
    costs of one event then overlap with another's work. With several workers, the workers,
    and workers times threads, may not exceed the cores; the defaults never do, and threads set for
    one event at a time are taken as given (a layout meant for a machine with more cores
    runs, slower, on fewer).
    ``event_executor``: how the events in flight run when ``event_workers`` is above 1:
    ``"threads"`` (default) on threads of this process, ``"processes"`` in worker
    processes with a pipeline each (:mod:`~trackserve.runtime.event_processes`: a little
    faster on small events, whose Python steps hold the interpreter lock, once started,
    which takes about a second; they start with ``spawn``, so a script must run them
    under ``if __name__ == "__main__":``).
    ``edge_chunk_size``: edges the filter scores at once (cut into a part per thread,
    each part in calls of at most ``network_steps.FILTER_BLOCK_EDGES`` edges); the filter
    scores each edge from its two hits only, so chunking changes only the peak memory and,
    in the last float32 bits, some scores (ONNX Runtime's kernels block a call's rows by its
    size; labels were identical in every comparison made). The GNN passes messages
    over the whole graph and always runs on all the filtered edges at once.
    ``memory_limit_bytes``: an event whose estimated working memory exceeds this is
    refused with an :class:`~trackserve.errors.InputError` before the stage that would
    need it (graph building's own pairs cannot be counted before it finds them: its graph
    is checked once built); with several event workers each event in flight gets an equal share
    (:attr:`memory_limit_per_event`).
    ``vertex_shifts``: positions along the beam (mm) to run each event's network stages
    and graph at, merged edge by edge before the tracks are built
    (:mod:`~trackserve.runtime.vertex_shifts`; needs features ``r`` and ``z``; kept
    sorted); ``(0,)``: one pass at the centre; None (default): the bundle's
    ``stages.vertex_shifts``, one pass for a bundle without them. Each shift costs about a
    whole event's time, and finds more of the particles produced far from the centre.
    """

    intra_op_threads: int | None = None
    graph_threads: int | None = None
    edge_chunk_size: int = DEFAULT_EDGE_CHUNK_SIZE
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
    event_workers: int = 1
    event_executor: str = "threads"
    vertex_shifts: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "vertex_shifts", validate_vertex_shifts(self.vertex_shifts))
        for name in ("intra_op_threads", "graph_threads", "edge_chunk_size", "memory_limit_bytes", "event_workers"):
            value = getattr(self, name)  # numpy integers (np.int64(2)) are integers too
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
                object.__setattr__(self, name, int(value))
        for name in ("intra_op_threads", "graph_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS):
                raise InputError(f"{name} must be an integer in 1..{MAX_THREADS} or None (all cores); got {shown(value)}")
        workers = self.event_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"event_workers must be an integer >= 1; got {shown(workers)}")
        if workers > 1:
            cores = available_cores()
            if workers > cores:
                raise InputError(f"event_workers={workers} would run more events at once than the {cores} cores this "
                                 f"process may use (each needs one at least); give at most {cores}")
            for name in ("intra_op_threads", "graph_threads"):
                threads = getattr(self, name)
                if threads is not None and workers * threads > cores:
                    raise InputError(
                        f"event_workers={workers} with {name}={threads} would run {workers * threads} threads on "
                        f"{cores} cores; lower one of them (--event-workers, --threads) or leave {name} unset to share the cores"
                    )
        if self.event_executor not in EVENT_EXECUTORS:
            raise InputError(f"event_executor must be one of {', '.join(EVENT_EXECUTORS)}; got {self.event_executor!r}")
        if isinstance(self.edge_chunk_size, bool) or not isinstance(self.edge_chunk_size, int) or self.edge_chunk_size < 1:
            raise InputError(f"edge_chunk_size must be an integer >= 1; got {self.edge_chunk_size!r}")
        if (
            isinstance(self.memory_limit_bytes, bool)
            or not isinstance(self.memory_limit_bytes, int)
            or not 1 <= self.memory_limit_bytes <= MAX_MEMORY_LIMIT_BYTES
        ):
            raise InputError(f"memory_limit_bytes must be an integer from 1 to 2**63 - 1; got "
                             f"{shown(self.memory_limit_bytes)}")

    @property
    def _cores_per_worker(self) -> int:
        return max(1, available_cores() // self.event_workers)

    @property
    def resolved_intra_op_threads(self) -> int:
        """The ONNX Runtime pool size this config gives."""
        return self.intra_op_threads or self._cores_per_worker

    @property
    def resolved_graph_threads(self) -> int:
        """The graph builder's thread count this config gives."""
        return self.graph_threads or self._cores_per_worker

    @property
    def memory_limit_per_event(self) -> int:
        """The share of ``memory_limit_bytes`` each event in flight may use."""
        return max(1, self.memory_limit_bytes // self.event_workers)


def memory_limit_from_gib(value: float, option: str = "--memory-limit-gb") -> int:
    """The memory limit in bytes of the command-line ``option`` given in GiB (2**30 bytes);
    InputError naming the option for a value that is not positive, not finite or under a byte."""
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"{option} must be a positive number (GiB), got {value}")
    if value > MAX_MEMORY_LIMIT_BYTES / 2**30:  # (1e300 overflowed to an infinity int() cannot take)
        raise InputError(f"{option} {value:g} is more than {MAX_MEMORY_LIMIT_BYTES / 2**30:,.0f} GiB (2**63 bytes, "
                         "beyond any memory): give the memory the events may use")
    limit = int(value * 2**30)
    if limit < 1:
        raise InputError(f"{option} {value} is less than one byte")
    return limit
