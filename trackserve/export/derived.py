"""Features a network computes from its own inputs: the pseudorapidity of a hit from r and z.

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


def check_derived_eta(value: Any, in_channels: int, architecture: str) -> dict | None:
    """``value`` validated as a ``derived_eta`` config (None or the dict above); a clear error otherwise."""
    if value is None:
        return None
    keys = {"r", "z", "r_scale", "z_scale"}
    if not isinstance(value, dict) or set(value) != keys:
        raise CheckpointImportError(
            f"{architecture} config: derived_eta must be null or an object with exactly the keys "
            f"r, z, r_scale, z_scale, got {value!r}"
        )
    for name in ("r", "z"):
        column = value[name]
        if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < in_channels:
            raise CheckpointImportError(
                f"{architecture} config: derived_eta.{name} must be a feature column in [0, {in_channels}), got {column!r}"
            )
    if value["r"] == value["z"]:
        raise CheckpointImportError(f"{architecture} config: derived_eta.r and .z are the same column {value['r']}")
    for name in ("r_scale", "z_scale"):
        scale = value[name]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not float(scale) > 0:
            raise CheckpointImportError(f"{architecture} config: derived_eta.{name} must be a number > 0, got {scale!r}")
    return {"r": int(value["r"]), "z": int(value["z"]), "r_scale": float(value["r_scale"]),
            "z_scale": float(value["z_scale"])}


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
    names = list(names)
    missing = [name for name in ("r", "z") if name not in names]
    if missing:
        raise InputError(
            f"deriving eta needs the features r and z, the feature spec has {names} (missing {', '.join(missing)})"
        )
    if "eta" in names:
        raise InputError(f"the feature spec {names} already has eta: do not ask the networks to derive it too")
    return {"r": names.index("r"), "z": names.index("z"), "r_scale": float(scales[names.index("r")]),
            "z_scale": float(scales[names.index("z")])}
