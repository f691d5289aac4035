"""The number type of the training steps: float32, or bfloat16 matrix products (mixed precision).

``trackserve train --precision bfloat16`` runs the forward pass of every filter and GNN
training step under ``torch.autocast`` on the CPU with bfloat16: the matrix products (the
linear layers) compute in bfloat16, while the weights, the optimiser's state, the loss and
its reduction and LayerNorm stay in float32. The row sums of message passing and their
gradients (:mod:`trackserve.export.training_rows`, ``index_add_``) see bfloat16 rows;
PyTorch's CPU kernel adds them up in float32 and rounds each sum once, so a hit's sum of
thousands of messages is as exact as a bfloat16 number can hold (a plain bfloat16 running
sum would stop growing at 256 ones). On a CPU with bfloat16
instructions (AVX512-BF16, AMX) the products run several times faster; the whole step
less so, since the gathers, sums and norms around them do not change. Validation, the
cut choices and the exported networks are float32 whatever the training precision.

The embedding's steps stay float32: its hinge loss compares distances between outputs
with the margin, and bfloat16's 8-bit mantissa would round those outputs at about a
hundredth of their size, the scale of the neighbourhoods the radius graph then keeps.
"""

from __future__ import annotations

import contextlib

#: The training precisions: ``float32`` (plain) and ``bfloat16`` (mixed: bfloat16 products).
TRAINING_PRECISIONS = ("float32", "bfloat16")


def step_precision(precision: str):
    """The context a training step's forward pass runs in for ``precision`` (one of :data:`TRAINING_PRECISIONS`).

    ``float32``: no change; ``bfloat16``: ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    Compute the loss from the outputs as float32, outside the context.
    """
    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"unknown training precision {precision!r}: use one of {', '.join(TRAINING_PRECISIONS)}")
