"""The exceptions trackserve raises, one class per kind of problem.

Every error carries a message that says what is wrong and, where it can, what to do.
All derive from :class:`TrackserveError`, so a caller can catch them in one place;
the ``trackserve`` command prints their message and exits with status 2.
"""

from __future__ import annotations

import os


class TrackserveError(Exception):
    """Base class of every error raised on purpose by trackserve."""


class EventFormatError(TrackserveError, ValueError):
    """An event file is missing or malformed: missing column, bad value, duplicated id, inconsistent truth.

    The message names the file (or directory) and, where it applies, the column and the (1-based, header
    excluded) data row.
    """

    def __init__(self, message: str, *, path=None, column: str | None = None, row: int | None = None):
        self.path = None if path is None else str(path)
        self.column = column
        self.row = row
        #: The message without the place (file, column, row) it names first.
        self.reason = message
        where = []
        if self.path is not None:
            where.append(f"{'directory' if os.path.isdir(self.path) else 'file'} {self.path}")
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class GeometryError(TrackserveError, ValueError):
    """The detector geometry file is malformed or does not describe the expected layers."""


class BundleError(TrackserveError, ValueError):
    """A bundle (``pipeline.json`` and its network files) is missing, corrupt or inconsistent."""


class ExportParityError(TrackserveError):
    """An exported ONNX network does not compute what the PyTorch network computes.

    The message lists every output with its maximum difference and the tolerance.
    """


class ExportError(TrackserveError, ValueError):
    """A network cannot be exported to ONNX at all: its forward fails on its kind's inputs,
    it returns the wrong shape or dtype, its input size is unknown, or the exporter fails.
    """


class CheckpointImportError(TrackserveError, ValueError):
    """A checkpoint cannot be mapped onto one of trackserve's network definitions."""


class MissingHyperparameterError(CheckpointImportError):
    """A hyperparameter the weights cannot tell (iterations, activation) was given by no
    hyperparameter file: the message names the key to pass."""


class OutputError(TrackserveError, OSError):
    """A result file cannot be written (no space left, no permission, a read-only file system)."""


class InputError(TrackserveError, ValueError):
    """Invalid input arrays or options (shape, dtype, NaN, out-of-range settings, size limits)."""


class MemoryLimitError(InputError):
    """An event's estimated working memory exceeds the memory limit it was given.

    ``needed`` and ``limit`` are the estimate and that limit in bytes; with several
    events in flight the limit is the event's share of the runtime's memory limit.
    ``subject`` says what needed it (``"an event of 20,000 hits"``), when known.
    """

    def __init__(self, message: str, *, needed: float, limit: int, subject: str | None = None):
        self.needed = needed
        self.limit = limit
        self.subject = subject
        super().__init__(message)

    def __reduce__(self):
        # Keyword-only fields: rebuilt whole when the error comes back from an event worker process.
        return _memory_limit_error, (self.args[0], self.needed, self.limit, self.subject)


def _memory_limit_error(message: str, needed: float, limit: int, subject: str | None = None) -> MemoryLimitError:
    return MemoryLimitError(message, needed=needed, limit=limit, subject=subject)


class WorkerError(TrackserveError, RuntimeError):
    """A worker process of the runtime stopped unexpectedly (killed, out of memory, crashed)."""


class BackendUnavailableError(TrackserveError, RuntimeError):
    """An optional backend (torch, TensorRT, CuPy, FAISS, Triton) is not installed or has no device."""


class ServingError(TrackserveError, RuntimeError):
    """The Triton server cannot be started or stopped, died, or did not answer a request.

    The message names the server (binary, address, model) and, for a failed start, the
    last lines of the server's log.
    """


class GraphConventionWarning(UserWarning):
    """Edges handed to a network stage do not form a graph the bundle's graph stage could have
    built (another direction, self-loops, repeated pairs): the networks compute on them
    exactly, but they were trained on the bundle's convention, so the scores differ from
    what :meth:`~trackserve.runtime.pipeline.Pipeline.run` gives."""



class HitOrderWarning(UserWarning):
    """An event's hits are not in ``hit_id`` order, the order a bundle's networks and edge
    direction were trained on: features taken in the event's own row order give other edges
    and worse tracks (:meth:`trackserve.events.event.Event.in_hit_id_order` reorders)."""
