"""The optional parts of trackserve a job needs, and the one-line error naming how to install them."""

from __future__ import annotations

import importlib

from .errors import BackendUnavailableError

#: How to install the export extra from a clone (torch first, pinned; see the README for its CPU build).
EXPORT_INSTALL = 'pip install torch==2.13.0 && pip install -e ".[export]"'


def require_export_extra(job: str) -> None:
    """Raise :class:`BackendUnavailableError` naming ``job`` (``"trackserve train"``) and the
    install command when torch or onnx, which exporting, importing and training need, is missing."""
    for module in ("torch", "onnx"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            raise BackendUnavailableError(
                f"{job} needs the export extra ({error}); install it from the clone with: {EXPORT_INSTALL}"
            ) from None
