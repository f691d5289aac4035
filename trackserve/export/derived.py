"""Features a network computes from its own inputs: a hit's pseudorapidity, an edge's geometry.

The published ExaTrkX service feeds its networks three features per hit (r/3000, φ/π,
z/400), and its clients send exactly those. A network that also wants η (which tells the
tracks apart along the beam far better than z/r at small scales) can compute it inside
itself, so its bundle keeps the service's three-feature interface::

    eta = asinh(z_mm / max(r_mm, 1e-3))    with r_mm = features[:, r] * r_scale, z_mm likewise

and the network's layers see ``[features, eta]`` (one column more). The option is the
network config key ``derived_eta``: ``None`` (off) or ``{"r": column, "z": column,
"r_scale": mm per unit, "z_scale": mm per unit}``. It has no parameters, so state dicts
are unchanged; it exports to ONNX as Gather, Mul, Max, Div, Abs, Sqrt, Log and Sign.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CheckpointImportError, InputError

#: Smallest transverse radius (mm) used in the η formula: hits never sit on the beam line,
#: and the floor keeps η finite for any input.
MIN_RADIUS_MM = 1e-3

#: Unit (mm) of an edge's z intercept on the beam line, and the clamp of the scaled value:
#: collisions spread over about ±20 cm along the beam; ±5 units keeps ±1 m.
INTERCEPT_UNIT_MM = 200.0
INTERCEPT_CLAMP = 5.0

#: Clamp of an edge's outward slope dz/d (d its transverse length) before its asinh, the
#: segment's own pseudorapidity: ±100 keeps |η| up to 5.3, past the detector's 4.
DIRECTION_SLOPE_CLAMP = 100.0


def _check_column_config(option: str, value: Any, features: tuple[str, ...], in_channels: int,
                         architecture: str) -> dict | None:
    """``value`` validated as a config naming a column and a scale for each of ``features``."""
    if value is None:
        return None
    keys = set(features) | {f"{name}_scale" for name in features}
    if not isinstance(value, dict) or set(value) != keys:
        raise CheckpointImportError(
            f"{architecture} config: {option} must be null or an object with exactly the keys "
            f"{', '.join(sorted(keys))}, got {value!r}"
        )
    for name in features:
        column = value[name]
        if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < in_channels:
            raise CheckpointImportError(
                f"{architecture} config: {option}.{name} must be a feature column in [0, {in_channels}), got {column!r}"
            )
    for first, second in ((x, y) for i, x in enumerate(features) for y in features[i + 1:]):
        if value[first] == value[second]:
            raise CheckpointImportError(
                f"{architecture} config: {option} columns {', '.join(features)} must differ: {option}.{first} and "
                f".{second} are the same column {value[first]}"
            )
    for name in features:
        scale = value[f"{name}_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not float(scale) > 0:
            raise CheckpointImportError(f"{architecture} config: {option}.{name}_scale must be a number > 0, got {scale!r}")
    return {**{name: int(value[name]) for name in features}, **{f"{name}_scale": float(value[f"{name}_scale"])
                                                                  for name in features}}


def _column_config(names, scales, features: tuple[str, ...], purpose: str) -> dict:
    """The column and scale of each of ``features`` in a feature spec (``names``, ``scales``)."""
    names = list(names)
    missing = [name for name in features if name not in names]
    if missing:
        raise InputError(f"{purpose} needs the features {', '.join(features)}; the feature spec has {names} "
                         f"(missing {', '.join(missing)})")
    return {**{name: names.index(name) for name in features},
            **{f"{name}_scale": float(scales[names.index(name)]) for name in features}}


def check_derived_eta(value: Any, in_channels: int, architecture: str) -> dict | None:
    """``value`` validated as a ``derived_eta`` config (None or the dict above); a clear error otherwise."""
    return _check_column_config("derived_eta", value, ("r", "z"), in_channels, architecture)


class DerivedEta(nn.Module):
    """Appends η (from the r and z columns) to the features, or passes them through when off."""

    def __init__(self, spec: dict | None):
        super().__init__()
        self.spec = spec

    def width(self, in_channels: int) -> int:
        """Columns the network's layers see for ``in_channels`` input features."""
        return in_channels + (1 if self.spec is not None else 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features [N, F]`` -> ``[N, F + 1]`` with η last (``[N, F]`` unchanged when off)."""
        if self.spec is None:
            return features
        r = features[:, self.spec["r"]] * self.spec["r_scale"]
        z = features[:, self.spec["z"]] * self.spec["z_scale"]
        ratio = z / torch.clamp(r, min=MIN_RADIUS_MM)
        # asinh written out (odd, so no cancellation for negative z): the TorchScript ONNX
        # exporter has no asinh; both sides of the export compute this same formula.
        size = ratio.abs()
        eta = torch.sign(ratio) * torch.log(size + torch.sqrt(size * size + 1.0))
        return torch.cat([features, eta.unsqueeze(1)], dim=1)


def eta_spec_for(names: list[str] | tuple[str, ...], scales: list[float] | tuple[float, ...]) -> dict:
    """The ``derived_eta`` config for a feature spec with ``r`` and ``z`` columns (names and scales)."""
    if "eta" in names:
        raise InputError(f"the feature spec {list(names)} already has eta: do not ask the networks to derive it too")
    return _column_config(names, scales, ("r", "z"), "deriving eta")


class PairGeometry(nn.Module):
    """Two numbers per edge that say whether its hits can lie on one track from the collision.

    From the r, φ, z features (times their scales: mm and radians) of the edge's two hits:

    * ``curvature``: the signed curvature (1/m) of the circle through the beam line and
      the two hits in the transverse plane, ``2 sin(φ2 - φ1) / d`` with ``d`` their
      transverse distance (floored at 1e-3 mm): about ``0.3 B / pT``, 0.6 for 1 GeV in 2 T;
      clamped to [-20, 20]. ``d² = (r2 - r1)² + 4 r1 r2 sin²((φ2 - φ1) / 2)`` from the
      feature differences, which float32 computes to its own precision even for hits a
      fraction of a millimetre apart (the law of cosines would cancel there).
    * ``pointing``: the sine of the angle, in the r-z plane, between the segment joining
      the hits and the direction from the origin to its midpoint, times 10: 0 for a
      segment pointing back at the origin, larger the farther its line passes from it.
    * ``intercept`` (only with ``"intercept": true`` in the config): where the segment's
      line crosses the beam line, ``z0 = z1 - r1 (z2 - z1) / (r2 - r1)``, in units of
      :data:`INTERCEPT_UNIT_MM` and clamped to ±:data:`INTERCEPT_CLAMP` (``|r2 - r1|``
      floored at 1 mm, so hits on one layer give a large value, not a division by zero).
      Unlike ``pointing`` it is the same for a track wherever along the beam its
      collision happened, so a network can keep tracks from displaced collisions.
    * ``direction`` (only with ``"direction": true``): the segment's own pseudorapidity,
      ``asinh(s)`` with ``s = ±(z2 - z1) / d`` its slope along the beam per transverse
      length, signed so that it follows the segment outward (the sign of ``r2 - r1``; the
      same value whichever hit comes first) and clamped to ±:data:`DIRECTION_SLOPE_CLAMP`.
      For the segments of a track it is the particle's η wherever its collision happened,
      where each hit's own η (seen from the origin) changes along a track from a
      displaced collision, most in the barrel's inner layers.

    Config (``pair_geometry``): ``None`` (off) or the columns and scales of r, φ and z as
    ``{"r": i, "phi": j, "z": k, "r_scale": mm, "phi_scale": rad, "z_scale": mm}``, plus
    optionally ``"intercept": true`` and ``"direction": true`` (columns in that order after
    curvature and pointing). Exports with Gather, Sub, Mul, Sin, Sqrt, Div, Max, Min,
    Where, Clip, Abs, Log and Sign.
    """

    WIDTH = 2

    def __init__(self, spec: dict | None):
        super().__init__()
        self.spec = spec
        self.intercept = bool(spec is not None and spec.get("intercept", False))
        self.direction = bool(spec is not None and spec.get("direction", False))

    def width(self) -> int:
        """Columns added to each edge's input (0 when off)."""
        if self.spec is None:
            return 0
        return self.WIDTH + (1 if self.intercept else 0) + (1 if self.direction else 0)

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``[E, width()]``: curvature, pointing (then intercept, direction when on) of the edges ``edge_index [2, E]``."""
        spec = self.spec
        start, end = edge_index[0], edge_index[1]
        r_in, phi_in, z_in = features[:, spec["r"]], features[:, spec["phi"]], features[:, spec["z"]]
        r1, r2 = r_in[start] * spec["r_scale"], r_in[end] * spec["r_scale"]
        z1, z2 = z_in[start] * spec["z_scale"], z_in[end] * spec["z_scale"]
        # Differences of the features before scaling (exact for close hits), and the
        # transverse distance without the cancellation of r1² + r2² - 2 r1 r2 cos Δφ:
        # hits a fraction of a mm apart a metre from the beam keep their true distance.
        dphi = (phi_in[end] - phi_in[start]) * spec["phi_scale"]
        dr = (r_in[end] - r_in[start]) * spec["r_scale"]
        dz = (z_in[end] - z_in[start]) * spec["z_scale"]
        half = torch.sin(0.5 * dphi)
        transverse = torch.sqrt(dr * dr + 4.0 * r1 * r2 * half * half)
        curvature = torch.clamp(2000.0 * torch.sin(dphi) / torch.clamp(transverse, min=MIN_RADIUS_MM), -20.0, 20.0)
        mr, mz = 0.5 * (r1 + r2), 0.5 * (z1 + z2)
        length = torch.sqrt(dr * dr + dz * dz) * torch.sqrt(mr * mr + mz * mz)
        pointing = 10.0 * (dr * mz - dz * mr) / torch.clamp(length, min=MIN_RADIUS_MM)
        columns = [curvature, pointing]
        if self.intercept:
            run = torch.where(dr >= 0, torch.clamp(dr, min=1.0), torch.clamp(dr, max=-1.0))
            columns.append(torch.clamp((z1 - r1 * (dz / run)) / INTERCEPT_UNIT_MM, -INTERCEPT_CLAMP, INTERCEPT_CLAMP))
        if self.direction:
            outward = torch.where(dr >= 0, dz, -dz)
            slope = torch.clamp(outward / torch.clamp(transverse, min=MIN_RADIUS_MM), -DIRECTION_SLOPE_CLAMP,
                                DIRECTION_SLOPE_CLAMP)
            size = slope.abs()
            columns.append(torch.sign(slope) * torch.log(size + torch.sqrt(size * size + 1.0)))
        return torch.stack(columns, dim=1)


#: Optional columns of the edge geometry, each switched on by its key set to true.
GEOMETRY_FLAGS = ("intercept", "direction")


def check_pair_geometry(value: Any, in_channels: int, architecture: str) -> dict | None:
    """``value`` validated as a ``pair_geometry`` config (None or the dict above); a clear error otherwise."""
    flags = {}
    if isinstance(value, dict):
        for flag in GEOMETRY_FLAGS:
            if flag in value:
                if not isinstance(value[flag], bool):
                    raise CheckpointImportError(f"{architecture} config: pair_geometry.{flag} must be true or false, "
                                                f"got {value[flag]!r}")
                flags[flag] = value[flag]
        value = {key: item for key, item in value.items() if key not in GEOMETRY_FLAGS}
    checked = _check_column_config("pair_geometry", value, ("r", "phi", "z"), in_channels, architecture)
    if checked is None:
        return None
    return {**checked, **{flag: True for flag, on in flags.items() if on}}


def geometry_spec_for(names, scales, *, intercept: bool = False, direction: bool = False) -> dict:
    """The ``pair_geometry`` config for a feature spec with ``r``, ``phi`` and ``z`` columns
    (``intercept``: also each edge's z intercept on the beam line; ``direction``: also the
    segment's own pseudorapidity)."""
    spec = _column_config(names, scales, ("r", "phi", "z"), "pair geometry")
    return {**spec, **({"intercept": True} if intercept else {}), **({"direction": True} if direction else {})}
