"""Vertex shifts: the network stages run once per position along the beam, merged edge by edge.

The networks read each hit's position (and the filter and GNN each edge's pointing in r-z)
as seen from the centre of the detector. Trained on events whose collisions spread along
the beam (TrackML's spread, about 55 mm), they still find fewer of the particles produced
far from the centre: in the barrel their hits point elsewhere than the central particles'
that most of the training edges come from (``models/default/README.md``, "Quality").

A pass with every hit's ``z`` moved by ``-shift`` (and its ``eta``, when the networks
read one, computed again) shows the networks the particles produced near ``z = shift``
as central ones. The runtime takes the shifts from ``RuntimeConfig.vertex_shifts``, else
from the bundle's ``stages.vertex_shifts``. :func:`merge_by_intercept` then gives each
edge the logit of the pass whose shift lies nearest the edge's own intercept with the
beam line (where the straight line through its two hits in the r-z plane meets r = 0,
clipped to the shifts' range), among the passes whose filtered graph holds the edge;
equally near passes go by their order in the shifts. Tracks are built once, on the
merged edges, from the hits' own positions.

Cost: every network stage and the graph run once per shift. Measured on full-size
simulated events (``benchmarks/RESULTS.md``, section ``default_bundle_vertex_shifts``).
"""

from __future__ import annotations

import numbers
import re
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..values import finite_real, shown
from .inputs import unmasked, validate_edges, validate_num_hits, validate_per_hit

#: The most passes one event may be run in.
MAX_VERTEX_SHIFTS = 16
#: The largest shift (mm) taken: the barrel's half-length is about a metre, collisions lie within a few hundred mm.
MAX_VERTEX_SHIFT_MM = 500.0
#: A decimal number as the command line takes it (no ``1_0``, ``inf`` or ``nan``).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: The features a shifted run needs: ``z`` to shift, ``r`` and ``z`` for each edge's intercept.
SHIFT_FEATURES = ("r", "z")


def validate_vertex_shifts(shifts, name: str = "vertex_shifts") -> tuple[float, ...] | None:
    """The shifts (mm along the beam) as a sorted tuple of floats, or None for none given.

    ``(0.0,)`` is one pass at the centre, the same as none. InputError naming the problem
    for anything but 1 to :data:`MAX_VERTEX_SHIFTS` distinct finite numbers within
    :data:`MAX_VERTEX_SHIFT_MM` of the centre; ``name`` is what the messages call the value."""
    if shifts is None:
        return None
    if isinstance(shifts, np.ndarray) and shifts.ndim != 1:
        raise InputError(f"{name} must be a sequence of numbers (mm along the beam); got a {shifts.ndim}-d array")
    if isinstance(shifts, (str, bytes)) or not isinstance(shifts, Sequence) and not isinstance(shifts, np.ndarray):
        raise InputError(f"{name} must be a sequence of numbers (mm along the beam, e.g. (-100, -50, 0, 50, "
                         f"100)) or None; got {shifts!r}")
    values = list(shifts)
    if not 1 <= len(values) <= MAX_VERTEX_SHIFTS:
        raise InputError(f"{name} must hold 1 to {MAX_VERTEX_SHIFTS} shifts (one pass each); got {len(values)}")
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise InputError(f"{name} must be numbers (mm along the beam); got {shown(value)}")
        if not finite_real(value) or abs(float(value)) > MAX_VERTEX_SHIFT_MM:
            raise InputError(f"vertex shift {shown(value)} mm is not a finite number within {MAX_VERTEX_SHIFT_MM:g} mm of the "
                             "centre")
    result = tuple(sorted(float(value) for value in values))
    repeated = sorted({value for value in result if result.count(value) > 1})
    if repeated:
        raise InputError(f"{name} repeat {', '.join(f'{value:g}' for value in repeated)} mm: each shift runs "
                         "the whole event once, give each once")
    return result


def parse_vertex_shifts(text: str, source: str = "--vertex-shifts") -> tuple[float, ...]:
    """The shifts of a command-line or model-parameter value (``source`` names it in errors):
    comma-separated mm (``-100,-50,0,50,100``), or ``0`` / ``none`` for one pass at the
    centre. InputError naming the problem otherwise."""
    if text.strip().lower() in ("none", "0"):
        return (0.0,)
    values = []
    for part in text.split(","):
        try:
            if not _NUMBER.fullmatch(part.strip()):
                raise ValueError(part)
            values.append(float(part))
        except ValueError:
            example = "--vertex-shifts=-100,-50,0,50,100" if source.startswith("--") else "-100,-50,0,50,100"
            raise InputError(f"{source} takes comma-separated numbers of mm along the beam (write it {example}), or "
                             f"none; {part.strip()!r} is not a number") from None
    try:
        return validate_vertex_shifts(values, source)
    except InputError as error:  # every message names the option or parameter the shifts came from
        if str(error).startswith(source):
            raise
        raise InputError(f"{source}: {error}") from None


def shifts_text(shifts: tuple[float, ...]) -> str:
    """The comma-separated form :func:`parse_vertex_shifts` reads back exactly (``-100.0,0.0,100.0``)."""
    return ",".join(repr(float(shift)) for shift in shifts)


def missing_shift_features(names) -> list[str]:
    """The features among :data:`SHIFT_FEATURES` that ``names`` (a bundle's features) lacks."""
    return [name for name in SHIFT_FEATURES if name not in names]


def passes_in_words(shifts) -> str:
    """``one pass at vertex shift 50 mm`` or ``5 passes at vertex shifts -100, ..., 100 mm``."""
    if len(shifts) == 1:
        return f"one pass at vertex shift {shifts_in_words(shifts)}"
    return f"{len(shifts)} passes at vertex shifts {shifts_in_words(shifts)}"


def shifts_in_words(shifts) -> str:
    """``-100, -50, 0, 50, 100 mm``: the shifts as messages and reports give them."""
    return f"{', '.join(f'{shift:g}' for shift in shifts)} mm"


def is_shifted(shifts: tuple[float, ...] | None) -> bool:
    """Whether ``shifts`` (validated) asks for more than the one central pass."""
    return shifts is not None and shifts != (0.0,)


def shifted_features(features: np.ndarray, names: Sequence[str], scales: Sequence[float], shift: float) -> np.ndarray:
    """A copy of features ``[N, F]`` (columns ``names``, each divided by its ``scales`` entry)
    with every hit moved by ``-shift`` mm along the beam: ``z`` moved, and ``eta``, which
    depends on it, computed again from the moved ``z`` and ``r``; the features themselves for
    shift 0. Needs ``r`` and ``z`` among ``names`` (:data:`SHIFT_FEATURES`)."""
    if shift == 0.0:
        return features
    names = list(names)
    r_column, z_column = (names.index(name) for name in SHIFT_FEATURES)
    moved = features.copy()
    moved[:, z_column] -= np.float32(shift / scales[z_column])
    if "eta" in names:
        z = moved[:, z_column].astype(np.float64) * scales[z_column]
        r = features[:, r_column].astype(np.float64) * scales[r_column]
        with np.errstate(divide="ignore", invalid="ignore"):  # a hit on the beam line: as hit_features computes it
            eta = np.arcsinh(z / r)
        eta_column = names.index("eta")
        moved[:, eta_column] = eta / scales[eta_column]
    return moved


def edge_intercepts(edge_index: np.ndarray, r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``[M]`` float64: where the straight line through each edge's two hits in the r-z plane
    meets the beam line (``z`` at ``r = 0``, mm); NaN for an edge whose hits lie at one
    radius (no such line)."""
    r0, r1 = r[edge_index[0]], r[edge_index[1]]
    z0, z1 = z[edge_index[0]], z[edge_index[1]]
    dr = r1 - r0
    with np.errstate(divide="ignore", invalid="ignore"):
        intercept = z0 - r0 * (z1 - z0) / dr
    intercept[dr == 0] = np.nan
    return intercept


def merge_by_intercept(num_hits: int, shifts: Sequence[float], edges: Sequence[np.ndarray],
                       logits: Sequence[np.ndarray], r: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_index [2, M], logits [M])``: every edge of the passes once, ordered by its
    two hits, with the logit of the pass (``shifts[k]``, ``edges[k]``, ``logits[k]``) whose
    shift lies nearest the edge's intercept with the beam line (:func:`edge_intercepts`
    from the hits' positions ``r`` and ``z`` in mm, clipped to the shifts' range) among
    the passes that hold the edge; equally near passes by their order in ``shifts``, an
    edge with no intercept (both hits at one radius) from its earliest pass."""
    for given, what in ((edges, "edge sets"), (logits, "logit arrays")):
        if not isinstance(given, (list, tuple)):
            raise InputError(f"merge_by_intercept takes a list of {what}, one per shift; got {type(given).__name__}")
    num_hits = validate_num_hits(num_hits)
    if not (len(shifts) == len(edges) == len(logits)) or len(shifts) == 0:
        raise InputError(f"merge_by_intercept needs one edge set and one logit array per shift; got {len(shifts)} "
                         f"shifts, {len(edges)} edge sets, {len(logits)} logit arrays")
    shifts = list(shifts)
    validate_vertex_shifts(shifts)  # distinct finite shifts (in any order: ties go by it)
    passes = len(shifts)
    if num_hits * num_hits * passes >= 2**63:  # each edge's sort key
        raise InputError(f"merge_by_intercept: {num_hits:,} hits in {passes} passes are too many to merge in one "
                         "call; split the event")
    r, z = (validate_per_hit(values, name, (num_hits,), " (mm, one per hit)") for values, name in ((r, "r"), (z, "z")))
    edge_sets, logit_sets = [], []
    for shift, edge_index, pass_logits in zip(shifts, edges, logits):
        edge_index = validate_edges(edge_index, num_hits, f"the edges of the pass at {shift:g} mm")
        pass_logits = np.asarray(unmasked(pass_logits, f"the logits of the pass at {shift:g} mm"))
        if pass_logits.dtype.kind not in "fiu":
            raise InputError(f"the logits of the pass at {shift:g} mm must be numbers, got dtype {pass_logits.dtype}")
        if pass_logits.shape != (edge_index.shape[1],):
            raise InputError(f"the pass at {shift:g} mm has {edge_index.shape[1]} edges but logits of shape "
                             f"{list(pass_logits.shape)}: give one logit per edge, [M]")
        if pass_logits.dtype.kind == "f" and np.isnan(pass_logits).any():
            raise InputError(f"the logits of the pass at {shift:g} mm hold {int(np.count_nonzero(np.isnan(pass_logits)))} "
                             "NaN value(s): a GNN logit is a number")
        with np.errstate(over="ignore"):
            as_float32 = pass_logits.astype(np.float32, copy=False)
        beyond = np.isinf(as_float32) & ~np.isinf(pass_logits)
        if beyond.any():  # the merged logits are float32, as the GNN gives them
            raise InputError(f"the logits of the pass at {shift:g} mm hold {int(np.count_nonzero(beyond))} finite "
                             f"value(s) beyond float32 (such as {pass_logits[beyond][0]!r}): give the GNN's logits")
        edge_sets.append(edge_index)
        logit_sets.append(as_float32)
    every = np.concatenate(edge_sets, axis=1)
    scores = np.concatenate(logit_sets)
    which = np.repeat(np.arange(passes), [e.shape[1] for e in edge_sets])
    centres = np.asarray(shifts, dtype=np.float64)
    intercept = np.clip(edge_intercepts(every, r, z), centres.min(), centres.max())
    # The rank of each row's pass among the passes by distance to its edge's intercept
    # (ties by pass order). An edge with no intercept compares NaNs: every row ranks 0 and
    # the stable sort below keeps its earliest pass.
    own = np.abs(intercept - centres[which])
    rank = np.zeros(which.shape[0], dtype=np.int64)
    for k, centre in enumerate(centres):
        distance = np.abs(intercept - centre)
        rank += (distance < own) | ((distance == own) & (k < which))
    key = (every[0] * num_hits + every[1]) * passes + rank
    order = np.argsort(key, kind="stable")
    edge_key = key[order] // passes
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = edge_key[1:] != edge_key[:-1]
    chosen = order[first]
    return np.ascontiguousarray(every[:, chosen]), scores[chosen]
