"""Validation of the arrays handed to the runtime, with errors that say what is wrong."""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import InputError
from ..values import shown

#: The most hits one call takes (hit indices and hit pairs stay well inside int64, and an
#: event this large is far beyond any memory the runtime would allow it).
MAX_HITS = 2**31 - 1


def unmasked(array, what: str):
    """``array`` itself, or for a numpy masked array without masked values its data; InputError
    for one with masked values, which the runtime would otherwise read as if they were not
    masked (numpy's checks such as ``isfinite(...).all()`` skip them)."""
    if isinstance(array, np.ma.MaskedArray):
        masked = int(np.count_nonzero(np.ma.getmaskarray(array)))
        if masked:
            raise InputError(f"{what} is a masked array with {masked} masked value(s): the runtime reads every value, "
                             "masked or not; fill them (array.filled(...)) or leave those rows out")
        return array.data
    return array


def validate_features(features, num_features: int) -> np.ndarray:
    """Return ``features`` as a C-contiguous float32 ``[N, num_features]`` array, or raise InputError.

    Refused: anything that is not a numpy array, a dtype other than float32 (convert
    with ``features.astype(np.float32)``; the runtime does not guess; float32 of the other
    byte order is taken, converted), a shape other than
    ``[N, num_features]``, and NaN or infinite values (the first bad hit is named).
    Zero hits are valid.
    """
    features = unmasked(features, "features")
    if not isinstance(features, np.ndarray):
        raise InputError(f"features must be a numpy array of shape [N, {num_features}], got {type(features).__name__}")
    if features.dtype != np.float32:
        if features.dtype.kind != "f" or features.dtype.itemsize != 4:
            raise InputError(
                f"features must be float32, got {features.dtype}; convert with features.astype(numpy.float32)"
            )
        features = features.astype(np.float32)  # float32 of the other byte order: the same values, native
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


def validate_edges(edge_index, num_hits: int | None, what: str = "edge_index") -> np.ndarray:
    """Return ``edge_index`` as a C-contiguous int64 ``[2, M]`` array of hit indices in
    ``[0, num_hits)`` (any index when ``num_hits`` is None: a caller that does not know
    the event's hits), or raise InputError naming ``what``.

    Refused: anything but a numpy array of integers shaped ``[2, M]`` (an ``[M, 2]`` list
    of pairs is named as such), and any index outside the event: a negative index would
    otherwise count from the end (ONNX ``Gather``, numpy) and a too-large one reach past
    the hits (scipy's components write out of bounds).
    """
    edge_index = unmasked(edge_index, what)
    if not isinstance(edge_index, np.ndarray):
        raise InputError(f"{what} must be a numpy array of shape [2, M], got {type(edge_index).__name__}")
    if edge_index.dtype.kind not in "iu":
        raise InputError(f"{what} must hold integers (hit indices), got dtype {edge_index.dtype}")
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        pairs = " (pairs in rows: transpose it)" if edge_index.ndim == 2 and edge_index.shape[1] == 2 else ""
        raise InputError(f"{what} must have shape [2, M], got {list(edge_index.shape)}{pairs}")
    if num_hits is not None and edge_index.size:
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_hits:
            outside = (edge_index < 0) | (edge_index >= num_hits)
            bad = int(np.flatnonzero(outside.any(axis=0))[0])
            value = int(edge_index[:, bad][outside[:, bad]][0])
            raise InputError(f"{what} refers to hit {value}, but the event has {num_hits} hits: edge {bad} "
                             f"({int(edge_index[0, bad])} -> {int(edge_index[1, bad])}) refers to a hit outside "
                             f"0..{num_hits - 1}")
    return np.ascontiguousarray(edge_index, dtype=np.int64)


def graph_convention_problems(edge_index: np.ndarray, direction: str, num_hits: int) -> list[str]:
    """How edges ``[2, M]`` (checked to lie in ``[0, num_hits)``) differ from a graph the graph
    stage builds in ``direction`` (``"i<j"``, ``"i>j"``: each pair once that way; ``"both"``: each pair both ways): edges
    the other way, self-loops, repeated edges. Empty when they follow it. (For ``"both"``,
    a pair given one way only is not a difference: the filter keeps the two ways of a pair
    apart, so the edges handed on after it often hold one.) O(M) for edges in (i, j) order,
    as the graph stage and the filter hand them on; others' keys are sorted once (O(M log M))."""
    if edge_index.shape[1] == 0:
        return []
    first, second = edge_index[0], edge_index[1]
    problems = []
    loops = int(np.count_nonzero(first == second))
    if loops:
        problems.append(f"{loops} self-loop{'s' if loops != 1 else ''} (i -> i)")
    if direction in ("i<j", "i>j"):
        wrong = int(np.count_nonzero(first > second) if direction == "i<j" else np.count_nonzero(first < second))
        if wrong:
            way = "i > j" if direction == "i<j" else "i < j"
            problems.append(f"{wrong} edge{'s' if wrong != 1 else ''} (i, j) with {way}")
    keys = first.astype(np.int64) * max(num_hits, 1) + second  # indices checked in [0, num_hits)
    if not np.all(keys[1:] > keys[:-1]):  # the graph stage's edges (and the filter's) come in key order
        keys = np.sort(keys)
    repeated = int(np.count_nonzero(keys[1:] == keys[:-1]))
    if repeated:
        problems.append(f"{repeated} repeated edge{'s' if repeated != 1 else ''}")
    return problems


def validate_num_hits(num_hits) -> int:
    """``num_hits`` as an int when it is a whole number in ``0 .. MAX_HITS``; InputError otherwise."""
    if isinstance(num_hits, (bool, np.bool_)) or not isinstance(num_hits, numbers.Integral) or num_hits < 0:
        raise InputError(f"num_hits must be an integer >= 0; got {shown(num_hits)}")
    if num_hits > MAX_HITS:
        raise InputError(f"num_hits {shown(num_hits)} is more than the {MAX_HITS:,} hits one call takes; split the event")
    return int(num_hits)


def validate_scores(scores, m: int, scores_are_logits: bool = True) -> np.ndarray:
    """``scores`` ``[m]`` (one per edge) as a floating-point array without NaN (infinities are
    valid logits), each in ``[0, 1]`` for probabilities (``scores_are_logits=False``);
    InputError naming the problem otherwise. Zero edges give an empty float64 array."""
    if not isinstance(scores_are_logits, (bool, np.bool_)):
        raise InputError(f"scores_are_logits must be True or False; got {shown(scores_are_logits)}")
    values = np.asarray(unmasked(scores, "scores"))
    if values.ndim != 1 or values.shape[0] != m:
        raise InputError(f"scores must have shape [{m}] (one per edge); got {values.shape}")
    if m == 0:
        return np.zeros(0, dtype=np.float64)
    if values.dtype.kind != "f":
        raise InputError(f"scores must be floating-point; got dtype {values.dtype}")
    nan = np.isnan(values)
    if nan.any():
        raise InputError(f"score of edge {int(np.flatnonzero(nan)[0])} is NaN ({int(nan.sum())} NaN scores in all)")
    if not scores_are_logits and (values.min() < 0 or values.max() > 1):
        bad = int(np.flatnonzero((values < 0) | (values > 1))[0])
        raise InputError(f"score of edge {bad} is {values[bad]}, not a probability in [0, 1]; with logits leave "
                         "scores_are_logits at True")
    return values


def validate_per_hit(values, what: str, shape: tuple, meaning: str = "") -> np.ndarray:
    """``values`` (one row per hit) as float64 of ``shape``, every value finite; InputError naming
    ``what`` otherwise (``meaning`` says what a row holds)."""
    array = np.asarray(unmasked(values, what))
    if array.shape != shape or array.dtype.kind not in "fiu":
        raise InputError(f"{what} must be a real array of shape {list(shape)}{meaning}; got {array.dtype} "
                         f"{list(array.shape)}")
    array = array.astype(np.float64, copy=False)
    if array.size and not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array.reshape(shape[0], -1)).all(axis=1))[0])
        raise InputError(f"{what} of hit {row} is not finite ({array[row].tolist()})")
    return array


def validate_embedding(embedding, dim: int) -> np.ndarray:
    """Return ``embedding`` when it is a numpy array ``[N, dim]`` (the bundle's embedding
    width); InputError otherwise (the graph builder checks its values)."""
    embedding = unmasked(embedding, "embedding")
    if not isinstance(embedding, np.ndarray):
        raise InputError(f"embedding must be a numpy array of shape [N, {dim}], got {type(embedding).__name__}")
    if embedding.ndim != 2 or embedding.shape[1] != dim:
        raise InputError(f"embedding must have shape [N, {dim}] (the bundle's embedding has {dim} dimensions), "
                         f"got {list(embedding.shape)}")
    return embedding


def scaled_columns(features: np.ndarray, names, scales, wanted, purpose: str) -> list[np.ndarray]:
    """The feature columns ``wanted`` (names) times their scales, float64: the physical
    quantities (mm, rad) of a bundle's features. Raises InputError naming ``purpose`` when
    the features lack one of them."""
    names, features = list(names), np.asarray(features)
    if any(name not in names for name in wanted):
        raise InputError(f"{purpose} needs the features {_listed(wanted)}; these features are {names}")
    if len(scales) != len(names):
        raise InputError(f"{purpose}: {len(names)} feature names {names} but {len(scales)} scales")
    if features.ndim != 2 or features.shape[1] != len(names) or features.dtype.kind not in "fiu":
        raise InputError(f"{purpose} needs the features as a numeric [N, {len(names)}] array ({', '.join(names)}); "
                         f"got {features.dtype} {features.shape}")
    return [features[:, names.index(name)].astype(np.float64) * float(scales[names.index(name)]) for name in wanted]


def _listed(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
