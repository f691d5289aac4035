"""The training losses: a hinge loss for metric learning and a weighted binary cross-entropy.

Both return the mean over the pairs (or edges) given, so their scale does not depend on
the batch size. They are written out explicitly (no ``torch.nn`` loss object) so that
their definition is visible where it is used and tested on hand-built cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_loss(distances: torch.Tensor, positive: torch.Tensor, margin: float, positive_weight: float = 1.0) -> torch.Tensor:
    """Metric-learning hinge loss of pair ``distances [P]`` with boolean labels ``positive [P]``.

    A positive pair (two hits of one particle) costs ``positive_weight * d**2``: it is pulled
    together. A negative pair costs ``max(0, margin - d)**2``: it is pushed apart until it is
    ``margin`` away, then costs nothing. The loss is the sum over pairs divided by the number
    of pairs (0 for no pairs).
    """
    if distances.shape != positive.shape:
        raise ValueError(f"hinge_loss: distances {tuple(distances.shape)} and labels {tuple(positive.shape)} differ in shape")
    if margin <= 0:
        raise ValueError(f"hinge_loss: margin must be > 0, got {margin}")
    if distances.numel() == 0:
        return distances.sum() * 0.0
    positive = positive.to(torch.bool)
    pull = positive_weight * distances.square()
    push = F.relu(margin - distances).square()
    return torch.where(positive, pull, push).mean()


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, positive_weight: float = 1.0,
                 edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of ``logits [E]`` against boolean ``targets [E]``, true edges weighted.

    Per edge: ``-(w * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))`` with
    ``w = positive_weight``, computed stably from the logits, times the edge's
    ``edge_weights`` entry when given (``[E]``, >= 0); the mean over edges (0 for none).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"weighted_bce: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if edge_weights is not None and edge_weights.shape != logits.shape:
        raise ValueError(f"weighted_bce: edge_weights {tuple(edge_weights.shape)} and logits {tuple(logits.shape)} "
                         "differ in shape")
    if positive_weight <= 0:
        raise ValueError(f"weighted_bce: positive_weight must be > 0, got {positive_weight}")
    if logits.numel() == 0:
        return logits.sum() * 0.0
    weight = torch.tensor(positive_weight, dtype=logits.dtype)
    per_edge = None if edge_weights is None else edge_weights.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), weight=per_edge, pos_weight=weight)
