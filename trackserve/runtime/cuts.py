"""Score cuts: an edge passes when ``sigmoid(score) > cut``, decided without a sigmoid.

With logits the test is ``score > logit(cut)`` in float64, the exact decision except for
scores within about 1e-16 of the threshold (its float64 rounding; a sigmoid in float32
would round far more): nothing saturates, ``cut = 0`` lets every finite logit pass (not ``-inf``)
and ``cut = 1`` lets nothing pass. The published ExaTrkX service used the same strict
``>`` after a sigmoid.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..values import finite_real, shown


def not_below_prune_cut(values, prune_cut: float | None, key=float) -> list:
    """The ``values`` (cuts, or settings whose ``key`` is a cut) at or above ``prune_cut``:
    a pruned edge keeps its pruner's score, at most that cut, so no later cut may lie
    below it. All of them when there is no pruning cut."""
    return [value for value in values if prune_cut is None or key(value) >= prune_cut]


def logit_threshold(cut, scores_are_logits: bool = True) -> np.float64:
    """The value a score must strictly exceed to pass ``cut`` (a probability in ``[0, 1]``).

    For logits this is ``logit(cut)`` (``-inf`` at 0, ``+inf`` at 1); for probabilities
    it is ``cut`` itself. A float64 scalar, so float32 scores compare in float64.
    """
    if not finite_real(cut) or not 0.0 <= float(cut) <= 1.0:  # (an integer beyond any float included)
        raise InputError(f"cut must be a number in [0, 1]; got {shown(cut)}")
    if not isinstance(scores_are_logits, (bool, np.bool_)):
        raise InputError(f"scores_are_logits must be True or False; got {shown(scores_are_logits)}")
    value = float(cut)
    if not scores_are_logits:
        return np.float64(value)
    if value == 0.0:
        return np.float64(-np.inf)
    if value == 1.0:
        return np.float64(np.inf)
    return np.float64(np.log(value) - np.log1p(-value))


def passes_cut(scores, cut, scores_are_logits: bool = True) -> np.ndarray:
    """Bool array: which ``scores`` pass ``cut`` (``sigmoid(score) > cut`` for logits), compared in
    float64 whatever the scores' type: with numpy < 2 a float32 array compared with a float64
    scalar is compared in float32, where a logit just above ``logit(cut)`` can round onto it."""
    return np.asarray(scores).astype(np.float64, copy=False) > logit_threshold(cut, scores_are_logits)
