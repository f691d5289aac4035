"""ONNX Runtime engine: one network of a bundle as an inference session.

The runner checks its inputs against the model's declared inputs (names, rank, dtype,
fixed dims) before running, so a wrong array is refused with a clear
:class:`~trackserve.errors.InputError` rather than an ONNX Runtime stack trace.
Thread counts are explicit: ``intra_op_threads`` is the size of the session's own
pool; ``inter_op_threads`` stays 1 because the networks are single chains.

Calls from several threads at once (the parts of one event, events in flight) each run
in a session of their own: the runner keeps its idle sessions and opens another when
all are busy, so there are never more than the most calls it saw at once
(:meth:`OnnxNetwork.reserve` opens them ahead). One session run by two threads at once
serialises part of the work: on this project's 2-core machine a 4-layer chain of
32-wide products with LayerNorm and ReLU on 100,000 rows, run as two halves at once,
took 12.9 ms in one shared session against 8.1 ms in two (one half alone: 7.6 ms).
"""

from __future__ import annotations

import numbers
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..errors import BackendUnavailableError, BundleError, InputError

_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape of one model input or output (``None`` or a name for a free dim)."""

    name: str
    dtype: type
    shape: tuple


def default_intra_op_threads() -> int:
    """The default ONNX Runtime pool size: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def session_options(intra_op_threads: int):
    """The ONNX Runtime session options of every network: ``intra_op_threads`` in the
    intra-op pool, one inter-op thread (the networks are single chains), sequential
    execution, all graph optimisations, and none of its log lines below fatal: every error it
    logs it also raises, and the caller turns that into an error naming the network (the log
    line would only repeat it, in red, on the user's terminal).

    The pool's threads block instead of spinning while they wait for work: a spinning
    worker keeps a core busy after each run, which on a shared machine (the pipeline's
    own numpy/scipy stages, the other Triton instances) slowed a 100-event pass of the
    whole pipeline about four-fold at 2 threads on 2 loaded cores. The results do not
    depend on it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    return options


class SessionPool:
    """Sessions of one model, one per call at once: a call takes an idle session, or opens
    a new one with ``open_session()`` when all are busy, and gives it back when done."""

    def __init__(self, open_session: Callable[[], object]):
        self._open_session = open_session
        self.first = open_session()
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._idle.put(self.first)
        self._count = 1
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """How many sessions are open."""
        return self._count

    def reserve(self, calls: int) -> None:
        """Open sessions until ``calls`` calls at once each find one of their own."""
        with self._lock:
            while self._count < calls:
                self._idle.put(self._open_session())
                self._count += 1

    def _take(self):
        """An idle session, or a new one when all are busy (given back by the caller)."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            session = self._open_session()
            with self._lock:
                self._count += 1
            return session

    def run(self, output_names, inputs: Mapping[str, np.ndarray]) -> list:
        """``session.run(output_names, inputs)`` on a session no other call is using."""
        session = self._take()
        try:
            return session.run(output_names, inputs)
        finally:
            self._idle.put(session)

    def run_into(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Run on a session no other call is using, writing each output into the C-contiguous
        array of that name in ``outputs`` (of the output's exact shape and dtype) instead
        of a new one."""
        session = self._take()
        try:
            binding = session.io_binding()
            for name, array in inputs.items():
                binding.bind_cpu_input(name, array)
            for name, array in outputs.items():
                binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            session.run_with_iobinding(binding)
        finally:
            self._idle.put(session)


class OnnxNetwork:
    """One ONNX network run by ONNX Runtime on the CPU (or another provider given explicitly).

    ``run(**inputs)`` returns the first output as a numpy array; ``last_seconds`` holds the
    wall time of the latest call. ``per_event``: inputs whose work alone is done once by
    :meth:`prepare`; ``model``: the file's ``onnx`` model, when the caller has read it
    already (so the file is not read again to cut it).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        intra_op_threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        name: str | None = None,
        per_event: tuple[str, ...] = (),
        model=None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as error:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailableError(
                "onnxruntime is not installed; install it with `pip install onnxruntime`"
            ) from error
        self.path = Path(path)
        self.name = name or self.path.stem
        if self.path.is_dir():
            raise BundleError(f"network file {self.path} is a directory; give the network's .onnx file (a bundle's "
                              "networks run through trackserve.runtime.pipeline.Pipeline(bundle_directory))")
        if not self.path.is_file():
            raise BundleError(f"network file {self.path} does not exist")
        if isinstance(providers, str):
            raise InputError(f"providers must be a sequence of ONNX Runtime provider names, e.g. ({providers!r},); "
                             f"got the string {providers!r}")
        if intra_op_threads is not None and (isinstance(intra_op_threads, (bool, np.bool_))
                                             or not isinstance(intra_op_threads, numbers.Integral)):
            raise InputError(f"intra_op_threads must be an integer >= 1 or None (all cores), got {intra_op_threads!r}")
        threads = default_intra_op_threads() if intra_op_threads is None else int(intra_op_threads)
        if threads < 1:
            raise InputError(f"intra_op_threads must be at least 1, got {threads}")
        options = session_options(threads)
        available = set(ort.get_available_providers())
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {missing} are not available here (available: {sorted(available)})"
            )
        self.intra_op_threads = threads
        self._pool = SessionPool(lambda: self._open_session(options, list(providers)))
        self.session = self._pool.first
        self.inputs = tuple(self._info(i) for i in self.session.get_inputs())
        self.outputs = tuple(self._info(o) for o in self.session.get_outputs())
        self.last_seconds = 0.0
        self.per_event = tuple(per_event)
        self._split = None
        if self.per_event:
            self._split = self._open_split(options, list(providers), model)

    def _open_session(self, options, providers: list[str]):
        """The ONNX Runtime session :meth:`run` uses: the network file as it is."""
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise BundleError(f"ONNX Runtime cannot load {self.path}: {error}") from error

    def _open_split(self, options, providers: list[str], model=None):
        """The prefix and rest session pools of the network cut after its per-event work
        (:mod:`trackserve.engines.per_event_prefix`), or None when it has none to hoist or
        ``onnx`` is not installed. ``model``: the file's ``onnx`` model when the caller has
        read it already (otherwise it is read here)."""
        try:
            import onnx
        except ImportError:
            return None
        import onnxruntime as ort

        from .per_event_prefix import split_per_event

        missing = [name for name in self.per_event if name not in self.input_names]
        if missing:
            raise InputError(f"network '{self.name}' has no inputs {missing} (inputs: {list(self.input_names)})")
        split = split_per_event(onnx.load(str(self.path)) if model is None else model, self.per_event)
        if split is None:
            return None

        def pool(model) -> SessionPool:
            serialized = model.SerializeToString()
            return SessionPool(lambda: ort.InferenceSession(serialized, sess_options=options, providers=providers))

        try:
            return split, pool(split.prefix), pool(split.rest)
        except Exception as error:  # onnxruntime raises its own exception types
            raise BundleError(f"ONNX Runtime cannot load the split of {self.path}: {error}") from error

    @staticmethod
    def _info(node) -> TensorInfo:
        dtype = _ONNX_TO_NUMPY.get(node.type)
        if dtype is None:
            raise BundleError(f"unsupported ONNX tensor type {node.type} for '{node.name}'")
        return TensorInfo(node.name, dtype, tuple(node.shape))

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the model inputs, in order."""
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the model outputs, in order."""
        return tuple(o.name for o in self.outputs)

    def check_inputs(self, inputs: Mapping[str, np.ndarray], names: tuple[str, ...] | None = None) -> None:
        """Raise :class:`InputError` unless ``inputs`` match the model's names, ranks, dtypes
        and fixed dims (of the inputs in ``names`` only, when given)."""
        expected = set(self.input_names if names is None else names)
        given = set(inputs)
        if given != expected:
            raise InputError(
                f"network '{self.name}' takes inputs {sorted(expected)}, got {sorted(given)}"
            )
        for info in self.inputs:
            if info.name not in expected:
                continue
            array = inputs[info.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input '{info.name}' of '{self.name}' must be a numpy array, got {type(array).__name__}")
            if array.dtype != info.dtype:
                raise InputError(
                    f"input '{info.name}' of '{self.name}' must have dtype {np.dtype(info.dtype).name}, got {array.dtype}"
                )
            if array.ndim != len(info.shape):
                raise InputError(
                    f"input '{info.name}' of '{self.name}' must have {len(info.shape)} dimensions {list(info.shape)}, "
                    f"got shape {list(array.shape)}"
                )
            for axis, (want, got) in enumerate(zip(info.shape, array.shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input '{info.name}' of '{self.name}' must have size {want} on axis {axis} "
                        f"(shape {list(info.shape)}), got shape {list(array.shape)}"
                    )

    def uses_one_thread(self, num_input_elements: int) -> bool:
        """Whether a call on inputs of this many elements in all runs on the calling thread
        alone (so that calls on separate threads never share a pool)."""
        return self.intra_op_threads == 1

    def runs_in_blocks(self, num_edges: int, threads: int) -> bool:
        """Whether a call on this many edges runs in blocks of rows (only a
        :class:`~trackserve.engines.scatter_split.ScatterSplitNetwork` does)."""
        return False

    def call_in_blocks(self, inputs: Mapping[str, np.ndarray]) -> bool:
        """Whether :meth:`run` on ``inputs`` runs in blocks of rows (never here)."""
        return False

    @property
    def session_count(self) -> int:
        """How many sessions of the whole network are open (the most calls seen at once, or reserved)."""
        return self._pool.count

    @property
    def is_split(self) -> bool:
        """Whether :meth:`prepare` does the network's per-event work once (see the module's
        ``per_event``); otherwise it only checks and keeps the per-event inputs."""
        return self._split is not None

    def reserve(self, calls: int) -> None:
        """Open sessions until ``calls`` calls at once each find one of their own."""
        self._pool.reserve(calls)
        if self._split is not None:
            self._split[2].reserve(calls)

    def _call(self, pool: SessionPool, output_names: list[str], inputs: Mapping[str, np.ndarray]) -> list:
        """Run ``pool``'s model; ONNX Runtime's own errors become an :class:`InputError` naming the network."""
        try:
            return pool.run(output_names, inputs)
        except BundleError:  # a further session that could not be opened
            raise
        except Exception as error:  # onnxruntime raises its own exception types
            outside = _edges_outside_hits(inputs)
            if outside:
                raise InputError(f"network '{self.name}' cannot run on these inputs: {outside}") from error
            raise InputError(f"network '{self.name}' cannot run on these inputs: {error}") from error

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        """Check the inputs, run the network and return its first output (safe to call from
        several threads at once: each call runs in a session of its own).

        A failure ONNX Runtime finds only while running (an edge index outside the hits,
        say) is an :class:`InputError` naming the network. Edge indices are read as ONNX
        ``Gather`` reads them: a negative one counts from the last hit (the blocked and
        split forms read them the same way); :class:`~trackserve.runtime.pipeline.Pipeline`'s
        stages refuse indices outside ``[0, N)`` before they get here."""
        self.check_inputs(inputs)
        start = time.perf_counter()
        output = self._call(self._pool, [self.outputs[0].name], inputs)[0]
        self.last_seconds = time.perf_counter() - start
        return output

    def prepare(self, **per_event_inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Check the per-event inputs (the constructor's ``per_event``, e.g. ``features``)
        and do the network's work on them alone, once: what :meth:`run_prepared` takes."""
        if not self.per_event:
            raise InputError(f"network '{self.name}' was opened without per-event inputs; use run()")
        self.check_inputs(per_event_inputs, self.per_event)
        if self._split is None:
            return dict(per_event_inputs)
        split, prefix, _ = self._split
        prepared = dict(zip(split.handed, self._call(prefix, list(split.handed), per_event_inputs)))
        prepared.update((name, per_event_inputs[name]) for name in split.passed)
        return prepared

    def run_prepared(self, prepared: Mapping[str, np.ndarray], **inputs: np.ndarray) -> np.ndarray:
        """The first output of the network on :meth:`prepare`'s result and the other inputs
        (``edge_index``): the same values as :meth:`run` on all of them, without redoing the
        per-event work (safe from several threads at once)."""
        others = tuple(name for name in self.input_names if name not in self.per_event)
        self.check_inputs(inputs, others)
        start = time.perf_counter()
        if self._split is None:
            output = self._call(self._pool, [self.outputs[0].name], {**prepared, **inputs})[0]
        else:
            output = self._call(self._split[2], [self.outputs[0].name], {**prepared, **inputs})[0]
        self.last_seconds = time.perf_counter() - start
        return output


def _edges_outside_hits(inputs: Mapping[str, np.ndarray]) -> str | None:
    """What is wrong with an ``edge_index`` naming hits outside ``[-N, N)`` of the ``features``
    given with it (the indices ONNX ``Gather`` reads), or None: said only after a failed call,
    in place of ONNX Runtime's own text."""
    edges, features = inputs.get("edge_index"), inputs.get("features")
    if not isinstance(edges, np.ndarray) or not isinstance(features, np.ndarray) or edges.size == 0 \
            or features.ndim == 0 or edges.dtype.kind not in "iu":
        return None
    num_hits = features.shape[0]
    bad = (edges < -num_hits) | (edges >= num_hits)
    if not bad.any():
        return None
    first = int(edges.reshape(-1)[np.argmax(bad.reshape(-1))])
    return (f"edge_index holds {int(np.count_nonzero(bad)):,} hit index(es) outside the {num_hits:,} hits "
            f"(first {first}; an index must lie in [-{num_hits}, {num_hits}), a negative one counting from the last hit)")
