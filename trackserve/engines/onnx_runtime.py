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

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

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
    execution, all graph optimisations, warnings and errors only.

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
    options.log_severity_level = 3
    return options


class OnnxNetwork:
    """One ONNX network run by ONNX Runtime on the CPU (or another provider given explicitly).

    ``run(**inputs)`` returns the first output as a numpy array; ``last_seconds`` holds the
    wall time of the latest call.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        intra_op_threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        name: str | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as error:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailableError(
                "onnxruntime is not installed; install it with `pip install onnxruntime`"
            ) from error
        self.path = Path(path)
        self.name = name or self.path.stem
        if not self.path.is_file():
            raise BundleError(f"network file {self.path} does not exist")
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
        self._options, self._providers = options, list(providers)
        self.session = self._open_session(options, self._providers)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._idle.put(self.session)
        self._sessions = 1
        self._opening = threading.Lock()
        self.inputs = tuple(self._info(i) for i in self.session.get_inputs())
        self.outputs = tuple(self._info(o) for o in self.session.get_outputs())
        self.last_seconds = 0.0

    def _open_session(self, options, providers: list[str]):
        """The ONNX Runtime session :meth:`run` uses: the network file as it is."""
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise BundleError(f"ONNX Runtime cannot load {self.path}: {error}") from error

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

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`InputError` unless ``inputs`` match the model's names, ranks, dtypes and fixed dims."""
        expected = set(self.input_names)
        given = set(inputs)
        if given != expected:
            raise InputError(
                f"network '{self.name}' takes inputs {sorted(expected)}, got {sorted(given)}"
            )
        for info in self.inputs:
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

    @property
    def session_count(self) -> int:
        """How many sessions of the network are open (the most calls seen at once, or reserved)."""
        return self._sessions

    def reserve(self, calls: int) -> None:
        """Open sessions until ``calls`` calls at once each find one of their own."""
        with self._opening:
            while self._sessions < calls:
                self._idle.put(self._open_session(self._options, self._providers))
                self._sessions += 1

    def _run_session(self, output_names: list[str], inputs: Mapping[str, np.ndarray]) -> list:
        """``session.run`` on an idle session of this network (a new one when all are busy)."""
        try:
            session = self._idle.get_nowait()
        except queue.Empty:
            session = self._open_session(self._options, self._providers)
            with self._opening:
                self._sessions += 1
        try:
            return session.run(output_names, inputs)
        finally:
            self._idle.put(session)

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        """Check the inputs, run the network and return its first output (safe to call from
        several threads at once: each call runs in a session of its own).

        A failure ONNX Runtime finds only while running (an edge index outside the hits,
        say) is an :class:`InputError` naming the network."""
        self.check_inputs(inputs)
        start = time.perf_counter()
        try:
            output = self._run_session([self.outputs[0].name], inputs)[0]
        except Exception as error:  # onnxruntime raises its own exception types
            raise InputError(f"network '{self.name}' cannot run on these inputs: {error}") from error
        self.last_seconds = time.perf_counter() - start
        return output
