"""Validation of the arrays handed to the runtime, with errors that say what is wrong."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def validate_features(features, num_features: int) -> np.ndarray:
    """Return ``features`` as a C-contiguous float32 ``[N, num_features]`` array, or raise InputError.

    Refused: anything that is not a numpy array, a dtype other than float32 (convert
    with ``features.astype(np.float32)``; the runtime does not guess), a shape other than
    ``[N, num_features]``, and NaN or infinite values (the first bad hit is named).
    Zero hits are valid.
    """
    if not isinstance(features, np.ndarray):
        raise InputError(f"features must be a numpy array of shape [N, {num_features}], got {type(features).__name__}")
    if features.dtype != np.float32:
        raise InputError(
            f"features must be float32, got {features.dtype}; convert with features.astype(numpy.float32)"
        )
    if features.ndim != 2 or features.shape[1] != num_features:
        raise InputError(
            f"features must have shape [N, {num_features}] (the bundle's {num_features} features per hit), "
            f"got shape {list(features.shape)}"
        )
    finite = np.isfinite(features)
    if not finite.all():
        row, column = (int(i) for i in np.argwhere(~finite)[0])
        count = int(features.shape[0] - np.count_nonzero(finite.all(axis=1)))
        raise InputError(
            f"features of hit {row} (0-based) hold {features[row, column]} in column {column}; "
            f"{count} hit(s) have NaN or infinite features"
        )
    return np.ascontiguousarray(features)


def scaled_columns(features: np.ndarray, names, scales, wanted, purpose: str) -> list[np.ndarray]:
    """The feature columns ``wanted`` (names) times their scales, float64: the physical
    quantities (mm, rad) of a bundle's features. Raises InputError naming ``purpose`` when
    the features lack one of them."""
    names = list(names)
    if any(name not in names for name in wanted):
        raise InputError(f"{purpose} needs the features {_listed(wanted)}; these features are {names}")
    return [features[:, names.index(name)].astype(np.float64) * float(scales[names.index(name)]) for name in wanted]


def _listed(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
