"""Events in flight in worker processes, each with a pipeline of its own.

:meth:`~trackserve.runtime.pipeline.Pipeline.run_many` keeps ``config.event_workers``
events in flight. On a thread pool (``event_executor="threads"``) the events share one
interpreter: ONNX Runtime, numpy and scipy release its lock while they work, but the
many small numpy and Python steps of graph and track building do not, so on small events
the workers wait on each other. With ``event_executor="processes"`` each worker is a
process of its own (started with ``spawn``: nothing of this process's thread pools is
inherited), loads the bundle once and runs whole events; only the feature arrays go to
it and the :class:`~trackserve.runtime.pipeline.PipelineResult` comes back. Measured on
the project's 2-core Intel machine with the default bundle on the 100 published
benchmark events (``benchmarks/RESULTS.md``, sections event_workers and
runtime_vs_baseline, 2026-11-30 14:11-14:18 UTC): 108.2 events/s in two processes against
105.4 on two threads (each with one event handed over ahead; before threads had it,
98.5 against 86.4), the same labels; on simulated events of 10k and 100k hits, whose
time is mostly ONNX Runtime's, both ways ran about as fast.

Like any use of :mod:`multiprocessing` with ``spawn``, a script that runs events this way
must start them under ``if __name__ == "__main__":``; ``trackserve run`` does. Starting
the workers takes about a second (each imports trackserve and opens the bundle's
sessions); the pool stays up for the pipeline's later calls until
:meth:`EventProcesses.close` (or the pipeline's ``close``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import WorkerError

#: The pipeline of this worker process (set once by :func:`_start_worker`).
_worker_pipeline = None


#: How often (seconds) a worker checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 1.0


def _start_worker(bundle_directory: str, device: str, config, stages: dict | None = None) -> None:
    """Worker initializer: open the bundle's pipeline once for every event this process runs.

    Ctrl-C reaches every process of the terminal's group: the workers ignore it, and the
    process that started them stops them (:meth:`EventProcesses.close`). A worker whose
    parent is gone (killed without its clean-up) exits within :data:`PARENT_CHECK_SECONDS`
    instead of living on with no one to serve."""
    global _worker_pipeline
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="trackserve-parent-watch",
                     daemon=True).start()
    from .pipeline import opened_pipeline

    _worker_pipeline = opened_pipeline(bundle_directory, device, config, stages)


def _exit_with_parent(parent: int) -> None:
    """Exit this worker process at once when its parent process ``parent`` is gone (it was
    given to another parent, usually init)."""
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def _run_event(features: np.ndarray):
    """Worker task: one event through the worker's pipeline."""
    return _worker_pipeline.run(features)


def _has_ended(process) -> bool:
    """Whether the worker ``process`` has ended, read from its sentinel (which becomes ready
    when the process exits, whoever reaps it). Its ``exitcode`` can stay None for a moment
    after it died: the pool's manager thread reaps a dead worker too, and while that thread
    has reaped it but not yet recorded its status, ``exitcode`` asked from another thread
    finds no child left to wait for and says None."""
    try:
        return bool(multiprocessing.connection.wait([process.sentinel], timeout=0))
    except (OSError, ValueError):  # the sentinel was closed with the process object: it had ended
        return True


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool``'s workers at once (the events they run are lost) and then the pool."""
    processes = list((pool._processes or {}).values())  # (no public way before Python 3.14)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=10)
    # A worker killed while sending its result leaves half a message in the result pipe,
    # and the pool's manager thread waits for the rest for ever (shutdown joins it). With
    # the workers gone, closing this process's own end for writing gives that read its end.
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    if writer is not None:
        writer.close()
    pool.shutdown(wait=True, cancel_futures=True)


class EventProcesses:
    """``workers`` processes, each running whole events through a pipeline of the bundle at
    ``bundle_directory`` with ``config`` (one event at a time: give it the threads and the
    memory share of one event in flight), and ``stages`` (the ``stages`` of ``pipeline.json``)
    instead of the directory's when given (a bundle changed in memory)."""

    def __init__(self, bundle_directory: str | Path, device: str, config, workers: int, stages: dict | None = None):
        self._pool = ProcessPoolExecutor(
            max_workers=int(workers), mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(str(bundle_directory), device, config, stages),
        )
        # When the pipeline is garbage-collected, or its process ends with the workers still up:
        # not weakref.finalize, whose atexit hook a multiprocessing child never runs (it leaves
        # through os._exit after joining its children, and waited for these for ever); this runs
        # before that join, only in the process that started them. A process that ends stops
        # them at once (a graceful shutdown there waited for workers that never ended).
        self._finalizer = multiprocessing.util.Finalize(self, _stop_now, args=(self._pool,), exitpriority=10)
        self._unfinished: set[Future] = set()

    def submit(self, features: np.ndarray) -> Future:
        """Start one event (features ``[N, F]``) in a worker; the future gives its PipelineResult
        or raises its error (the same error :meth:`Pipeline.run` raises). Raises (and a
        future raises) ``BrokenProcessPool`` once a worker died: close these and start new ones."""
        # The pool starts its workers in submit, as it needs them: SIGINT blocked here is blocked in
        # them from their first instruction, so a Ctrl-C while one still starts (before
        # _start_worker ignores it) no longer kills it with a traceback from deep in its imports.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            future = self._pool.submit(_run_event, features)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._unfinished.add(future)
        future.add_done_callback(self._unfinished.discard)
        return future

    def busy(self) -> bool:
        """Whether an event handed to these workers has not finished yet."""
        return bool(self._unfinished)

    def a_worker_died(self) -> bool:
        """Whether one of the worker processes has ended (killed, out of memory, crashed): the
        pool then runs nothing more. Its futures usually raise ``BrokenProcessPool`` by
        themselves, but not when the worker died while sending a result, which leaves the
        pool's reader waiting for the rest of the message for ever; :meth:`Pipeline.run_many`
        asks this while it waits."""
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        return any(_has_ended(process) for process in processes)

    @staticmethod
    def broken(error: BaseException) -> WorkerError:
        """The error to raise when a worker process died (killed, out of memory, crashed)."""
        return WorkerError(
            f"an event worker process stopped unexpectedly ({error}); the events in flight were lost. "
            "If the machine ran out of memory, run fewer events at once (RuntimeConfig.event_workers, "
            "--event-workers) or lower the memory limit (RuntimeConfig.memory_limit_bytes, --memory-limit-gb); "
            "event_executor='threads' (--event-executor threads) runs them in this process instead"
        )

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers: after the events they are running, or with ``wait=False`` at
        once (those events are lost: on Ctrl-C, SIGTERM or an error of the caller)."""
        if not self._finalizer.still_active():
            return
        if not wait:
            self._finalizer()  # _stop_now
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._finalizer.cancel()  # only now: a Ctrl-C during the shutdown still lets close(wait=False) kill them
