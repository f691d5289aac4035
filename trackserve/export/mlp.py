"""The multi-layer perceptron of the ExaTrkX and ACORN codebases, layer for layer.

``make_mlp`` builds the same ``nn.Sequential`` as ``make_mlp`` in ExaTrkX
(``LightningModules/.../utils.py``) and ACORN (``acorn/utils/ml_utils.py``), so that a
state dict written by their training code loads into it key for key. The layout is::

    for each hidden layer:  Linear, [LayerNorm], hidden activation
    final layer:            Linear, and when an output activation is given: [LayerNorm], output activation

(the output's LayerNorm: ExaTrkX's whenever the hidden layers have them, ACORN's only with
``output_layer_norm``; ``make_mlp``'s ``output_layer_norm`` chooses).

ExaTrkX's LayerNorms carry an affine weight and bias; ACORN's are built with
``elementwise_affine=False`` (no parameters): ``layer_norm_affine`` chooses.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointImportError

#: Activation names accepted in network configs (``torch.nn`` class names, as the
#: ExaTrkX/ACORN configs write them); all of them export to ONNX.
ACTIVATIONS: tuple[str, ...] = ("ReLU", "Tanh", "SiLU", "GELU", "LeakyReLU", "Sigmoid", "ELU")


def activation_module(name: str) -> nn.Module:
    """A fresh ``torch.nn`` activation module from its class name (``"ReLU"``, ``"Tanh"``, ...)."""
    if name not in ACTIVATIONS:
        raise CheckpointImportError(
            f"unsupported activation {name!r}: use one of {', '.join(ACTIVATIONS)}"
        )
    return getattr(nn, name)()


def make_mlp(
    input_size: int,
    sizes: list[int],
    hidden_activation: str = "ReLU",
    output_activation: str | None = None,
    layer_norm: bool = False,
    layer_norm_affine: bool = True,
    output_layer_norm: bool | None = None,
) -> nn.Sequential:
    """An MLP ``input_size -> sizes[0] -> ... -> sizes[-1]`` in the ExaTrkX/ACORN layout.

    ``hidden_activation`` and ``output_activation`` are ``torch.nn`` class names; with
    ``output_activation=None`` the last layer is a bare ``Linear`` (and has no LayerNorm).
    ``layer_norm`` inserts a ``LayerNorm`` between each ``Linear`` and its activation;
    ``output_layer_norm`` decides for the output activation alone (None: as ``layer_norm``,
    ExaTrkX's rule; ACORN's make_mlp adds none there unless asked).
    """
    if input_size < 1 or not sizes or any(int(size) < 1 for size in sizes):
        raise CheckpointImportError(
            f"an MLP needs a positive input size and at least one positive layer size, got {input_size} -> {sizes}"
        )
    for name in (hidden_activation, output_activation):
        if name is not None:
            activation_module(name)  # validates the name even where the layer count never uses it
    widths = [int(input_size)] + [int(size) for size in sizes]
    layers: list[nn.Module] = []
    for index in range(len(sizes) - 1):
        layers.append(nn.Linear(widths[index], widths[index + 1]))
        if layer_norm:
            layers.append(nn.LayerNorm(widths[index + 1], elementwise_affine=layer_norm_affine))
        layers.append(activation_module(hidden_activation))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    if output_activation is not None:
        if layer_norm if output_layer_norm is None else output_layer_norm:
            layers.append(nn.LayerNorm(widths[-1], elementwise_affine=layer_norm_affine))
        layers.append(activation_module(output_activation))
    return nn.Sequential(*layers)


def mlp_linear_count(mlp: nn.Sequential) -> int:
    """The number of ``Linear`` layers of an MLP (its depth)."""
    return sum(isinstance(module, nn.Linear) for module in mlp)


def gather_pair(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """``cat([x[start], x[end]], dim=1)``: the features of both hits of every edge, ``[E, 2F]``."""
    return torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=1)


def pair_differences(x: torch.Tensor, edge_index: torch.Tensor, periodic: list[int], period: float,
                     scale: float) -> torch.Tensor:
    """``scale * (x[end] - x[start])`` per edge, ``[E, F]``; the ``periodic`` columns wrapped into
    ``[-period/2, period/2]`` (for φ/π, period 2), so an edge across φ = ±π has a small difference.

    Consecutive hits of a track differ by about 1e-3 of the feature range in φ: handing the
    networks the differences directly (scaled up) spares them learning a subtraction to
    that precision. Exports to ONNX with Sub, Div, Round and Mul only.
    """
    difference = x[edge_index[1]] - x[edge_index[0]]
    if periodic:
        # The period in the periodic columns, 0 elsewhere: the wrap as one product, the
        # same values bit for bit as a choice between wrapped and plain columns (whose
        # ONNX ``Where`` cost ONNX Runtime on the CPU more than the rest of the wrap).
        shift = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        shift[periodic] = period
        difference = difference - torch.round(difference / period) * shift
    return difference * scale
