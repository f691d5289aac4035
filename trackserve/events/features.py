"""Node features of hits: cylindrical coordinates divided by fixed scales.

A :class:`FeatureSpec` names the features, in order, and the scale each is divided by:
feature ``i`` of a hit is ``value(names[i]) / scales[i]``. The networks of a bundle are
trained on one spec, stored in its ``pipeline.json`` with :meth:`FeatureSpec.to_dict`.

Known feature names (hit positions in mm): ``r`` = sqrt(x² + y²) (the cylindrical
radius, not the 3-D distance), ``phi`` = atan2(y, x) in (-π, π], ``z``, ``x``, ``y``,
``eta`` = asinh(z / r) (the pseudorapidity seen from the origin).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import BundleError, EventFormatError, InputError
from .event import Table, table_length
from .stable_math import arctan2


def _r(x, y, z):
    return np.hypot(x, y)


def _eta(x, y, z):
    return np.arcsinh(z / np.hypot(x, y))


_FEATURES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "r": _r,
    "phi": lambda x, y, z: arctan2(y, x),
    "z": lambda x, y, z: z,
    "x": lambda x, y, z: x,
    "y": lambda x, y, z: y,
    "eta": _eta,
}
#: Feature names :func:`hit_features` can compute.
KNOWN_FEATURES: tuple[str, ...] = tuple(_FEATURES)

#: Ten times as far as hits of the TrackML detector reach in each length feature (mm; the
#: detector ends near r = 1,030 and |z| = 3,000), the full circle in phi (rad) and twice the
#: hits' |eta|: feature values beyond were most likely not divided by the bundle's scales
#: (e.g. r in mm where the bundle expects r / 3000 gives 3 million), while another
#: convention of scales still passes (the published service's events give r up to 3,076).
DETECTOR_REACH: dict[str, float] = {"r": 10_000.0, "x": 10_000.0, "y": 10_000.0, "z": 30_000.0,
                                    "phi": math.pi * 1.001, "eta": 12.0}


#: Features that are never negative (a value below 0 in their column is another quantity).
NON_NEGATIVE_FEATURES = ("r",)


def beyond_detector(features: np.ndarray, spec: "FeatureSpec") -> str | None:
    """Which features of ``features [N, F]`` (a feature file's rows, in ``spec``'s order and
    scales) put hits far beyond the TrackML detector (:data:`DETECTOR_REACH`) or below zero
    where they cannot be (:data:`NON_NEGATIVE_FEATURES`), as one line naming each with its
    extreme value (NaN values are named too); None when all lie within reach. An
    :class:`InputError` for a ``spec`` that is not a :class:`FeatureSpec` or features that
    are not a numeric ``[N, len(spec.names)]`` array."""
    if not isinstance(spec, FeatureSpec):
        raise InputError(f"beyond_detector needs a FeatureSpec (e.g. trackserve.events.EXATRKX_SERVICE), "
                         f"not {type(spec).__name__} {spec!r:.80}")
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[1] != spec.num_features or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"beyond_detector needs features as a numeric [N, {spec.num_features}] array "
                         f"({', '.join(spec.names)}); got shape {array.shape}, dtype {array.dtype}")
    found = []
    for column, (name, scale) in enumerate(zip(spec.names, spec.scales)):
        if array.shape[0] == 0:
            break
        values = array[:, column].astype(np.float64)
        missing = np.isnan(values)
        if missing.any():
            found.append(f"{name} is NaN for {int(np.count_nonzero(missing)):,} hit(s)")
            values = values[~missing]
            if values.size == 0:
                continue
        largest = float(np.max(np.abs(values))) * abs(scale)
        if largest > DETECTOR_REACH[name]:
            found.append(f"|{name}| up to {largest:.4g} (at most {DETECTOR_REACH[name]:.4g} expected)")
        if name in NON_NEGATIVE_FEATURES and scale > 0 and values.min() < 0:
            # r is a distance: a negative one is another quantity in its column (columns out of order)
            found.append(f"{name} down to {float(values.min()) * scale:.4g} (it is never negative)")
    if not found:
        return None
    scales = ", ".join(f"{name} / {scale:g}" for name, scale in zip(spec.names, spec.scales))
    return f"hits outside the TrackML detector: {'; '.join(found)}; the bundle expects the features {scales}"


_DEFAULT_NAMES = ("r", "phi", "z")


@dataclass(frozen=True)
class FeatureSpec:
    """Which hit features a pipeline uses, in order, and the scale each is divided by.

    ``names`` are among :data:`KNOWN_FEATURES`, without repeats; ``scales`` are finite
    and positive (as a bundle requires), one per name. Construction raises ``ValueError`` otherwise.
    """

    names: tuple[str, ...]
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or isinstance(self.scales, str):
            raise ValueError(f"feature names and scales must be sequences, such as ('r', 'phi', 'z') and (3000, "
                             f"3.14159, 400), not a string: got {self.names!r} and {self.scales!r}")
        try:
            object.__setattr__(self, "names", tuple(str(name) for name in self.names))
            object.__setattr__(self, "scales", tuple(float(scale) for scale in self.scales))
        except (TypeError, ValueError):
            raise ValueError(f"a feature spec needs a sequence of names and a sequence of numbers (one scale per "
                             f"name), got names {self.names!r} and scales {self.scales!r}") from None
        if not self.names:
            raise ValueError("a feature spec needs at least one feature")
        if len(self.names) != len(self.scales):
            raise ValueError(f"{len(self.names)} feature names {self.names} but {len(self.scales)} scales {self.scales}")
        unknown = [name for name in self.names if name not in _FEATURES]
        if unknown:
            raise ValueError(f"unknown feature name(s) {unknown}; known: {list(KNOWN_FEATURES)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"feature names repeat: {self.names}")
        bad = [scale for scale in self.scales if not math.isfinite(scale) or scale <= 0.0]
        if bad:
            raise ValueError(f"feature scales must be finite and positive, got {self.scales}")

    @property
    def num_features(self) -> int:
        """Number of features per hit."""
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"names": [...], "scales": [...]}``."""
        return {"names": list(self.names), "scales": list(self.scales)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        """The spec stored by :meth:`to_dict`; a malformed entry raises :class:`BundleError`."""
        if not isinstance(data, Mapping) or set(data) != {"names", "scales"}:
            raise BundleError(f"the features entry must be an object with keys 'names' and 'scales', got {data!r}")
        names, scales = data["names"], data["scales"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise BundleError(f"features.names must be a list of strings, got {names!r}")
        if not isinstance(scales, list) or not all(
            isinstance(scale, (int, float)) and not isinstance(scale, bool) for scale in scales
        ):
            raise BundleError(f"features.scales must be a list of numbers, got {scales!r}")
        try:
            return cls(tuple(names), tuple(scales))
        except ValueError as exc:
            raise BundleError(f"invalid features entry: {exc}") from None


#: The published ExaTrkX service's features (its LRT events and reference event):
#: r / 3000 mm, φ / π, z / 400 mm.
EXATRKX_SERVICE = FeatureSpec(("r", "phi", "z"), (3000.0, math.pi, 400.0))
#: The usual TrackML ExaTrkX features: r / 1000 mm, φ / π, z / 1000 mm.
TRACKML_1000 = FeatureSpec(("r", "phi", "z"), (1000.0, math.pi, 1000.0))
#: Presets by the name the command line uses.
FEATURE_PRESETS: dict[str, FeatureSpec] = {
    "exatrkx-service": EXATRKX_SERVICE,
    "trackml-1000": TRACKML_1000,
}


def _parse_scale(text: str) -> float:
    text = text.strip().lower()
    if text.lstrip("+-") in ("pi", "π") and len(text) <= len(text.lstrip("+-")) + 1:
        return -math.pi if text.startswith("-") else math.pi  # (-pi then refused as not positive, as -1 is)
    return float(text)


def feature_spec(name_or_scales: str | FeatureSpec) -> FeatureSpec:
    """A spec from a command-line value: a preset name or a list of scales.

    Accepted forms: a key of :data:`FEATURE_PRESETS` (``exatrkx-service``, ``trackml-1000``;
    ``_`` may stand for ``-``); ``3000,pi,400`` (scales of r, φ, z); ``r:3000,phi:pi,z:400``
    (names and scales). ``pi`` means π. A bad value raises :class:`InputError`.
    """
    if isinstance(name_or_scales, FeatureSpec):
        return name_or_scales
    text = str(name_or_scales).strip()
    key = text.lower().replace("_", "-")
    if key in FEATURE_PRESETS:
        return FEATURE_PRESETS[key]
    items = [item.strip() for item in text.split(",")]
    try:
        if len(items) > 1 and "" in items:
            raise ValueError(f"item {items.index('') + 1} of {len(items)} is empty (a stray comma?)")
        if all(":" in item for item in items):
            pairs = [item.split(":", 1) for item in items]
            return FeatureSpec(tuple(name.strip() for name, _ in pairs), tuple(_parse_scale(s) for _, s in pairs))
        if any(":" in item for item in items):
            raise ValueError("give a name for every scale or for none")
        scales = tuple(_parse_scale(item) for item in items)
        if len(scales) != len(_DEFAULT_NAMES):
            raise ValueError(f"{len(scales)} scales given without names; without names give 3 (r, phi, z)")
        return FeatureSpec(_DEFAULT_NAMES, scales)
    except ValueError as exc:
        raise InputError(
            f"invalid feature spec {text!r}: {exc}. Use a preset ({', '.join(FEATURE_PRESETS)}), "
            "scales of r, phi, z such as '3000,pi,400', or 'r:3000,phi:pi,z:400'"
        ) from None


def hit_features(hits: Table, spec: FeatureSpec = EXATRKX_SERVICE) -> np.ndarray:
    """The features of each hit as float32 ``[N, spec.num_features]``, in ``spec.names`` order.

    ``hits`` needs columns ``x``, ``y``, ``z`` (mm). Values are computed in float64, then
    divided by the scales and cast to float32. A hit at r = 0 has φ = 0 and an infinite
    ``eta``; a non-finite feature raises :class:`EventFormatError` naming the feature and
    the hit row (1-based).
    """
    if not isinstance(spec, FeatureSpec):
        raise InputError(f"spec must be a FeatureSpec, got {type(spec).__name__} {spec!r}: "
                         "trackserve.events.features.feature_spec(text) makes one from a preset name or scales")
    if isinstance(hits, np.ndarray) and hits.dtype.names:  # a structured array: its fields are the columns
        hits = {name: hits[name] for name in hits.dtype.names}
    if not (isinstance(hits, Mapping) or hasattr(hits, "columns")):
        raise InputError(f"hits must be a table: a dict of 1-D arrays (or a pandas DataFrame) with columns x, y, z; "
                         f"got {type(hits).__name__}")
    missing = [name for name in ("x", "y", "z") if name not in hits]
    if missing:
        raise EventFormatError(f"the hits table has no column(s) {', '.join(missing)}; features need x, y, z")
    n = table_length(hits)
    for name in ("x", "y", "z"):  # a conversion to float64 would take text and drop imaginary parts in silence
        column = np.asarray(hits[name])
        if column.dtype.kind not in "biufO":
            raise EventFormatError(f"the hits' x, y and z must be real numbers, not {column.dtype} values", column=name)
        if column.dtype.kind == "O":  # (a pandas column of objects: text read from a file, say)
            odd = [value for value in column.ravel() if isinstance(value, (str, bytes, bool, np.bool_))
                   or not isinstance(value, numbers.Real)][:1]
            if odd:
                raise EventFormatError(f"the hits' x, y and z must be real numbers, not {type(odd[0]).__name__} "
                                       f"values such as {odd[0]!r:.40}", column=name)
    try:
        x, y, z = (np.asarray(hits[name], dtype=np.float64) for name in ("x", "y", "z"))
    except (TypeError, ValueError) as error:  # objects that are no real numbers
        raise EventFormatError(f"the hits' x, y and z must be real numbers ({error})") from None
    for name, column in zip("xyz", (x, y, z)):
        if column.shape != (n,):
            raise EventFormatError(f"column {name} of the hits table has shape {list(column.shape)}; every column "
                                   f"must be 1-D with one value per hit ({n} hits)", column=name)
    features = np.empty((n, spec.num_features), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite features are named below
        for column, (name, scale) in enumerate(zip(spec.names, spec.scales)):
            features[:, column] = _FEATURES[name](x, y, z) / scale
    bad = ~np.isfinite(features)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        name = spec.names[column]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            wide = _FEATURES[name](x[row:row + 1], y[row:row + 1], z[row:row + 1])[0] / spec.scales[column]
        what = (f"feature {name} is {features[row, column]} (from x={x[row]:g}, y={y[row]:g}, z={z[row]:g} mm"
                f"{f': {wide:g}, beyond float32' if np.isfinite(wide) else ''})")
        if "hit_id" in hits:  # a TrackML hits table: its rows may be in another order than the file's
            raise EventFormatError(f"the hit with hit_id {np.asarray(hits['hit_id'])[row]}: {what}")
        raise EventFormatError(what, row=row + 1)
    return features
