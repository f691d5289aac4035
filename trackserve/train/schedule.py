"""The learning-rate schedule every stage trains with, and the check that its training did not diverge.

Each stage follows a one-cycle schedule (``torch.optim.lr_scheduler.OneCycleLR``): a
warm-up over the first tenth of its steps to the stage's learning rate, then annealing.
PyTorch divides by ``pct_start * total_steps - 1``, which is zero for a tenth of exactly
10 steps (a small run: ``--sectors 10`` on one event for one epoch), so there the warm-up
is one and a half steps instead; every other step count gets the tenth.

A learning rate that is too high makes the loss and then the weights NaN or infinite;
:func:`check_finite_loss` stops the run at the first such step with the stage, the step
and the option to lower, instead of writing a bundle of NaN networks (or failing later
inside scipy or torch on non-finite values).
"""

from __future__ import annotations

import math

from ..errors import InputError

#: The share of a stage's steps spent warming up to its learning rate.
WARM_UP_SHARE = 0.1


def one_cycle(optimizer, max_lr: float, total_steps: int):
    """The one-cycle schedule of ``total_steps`` steps peaking at ``max_lr`` (see the module docstring)."""
    import torch

    share = WARM_UP_SHARE if WARM_UP_SHARE * total_steps != 1 else 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=share)


def check_finite_loss(loss: float, stage: str, step: int, learning_rate: float) -> None:
    """Stop a stage whose loss became NaN or infinite (its training diverged), naming what to lower."""
    if not math.isfinite(loss):
        stop_diverged(stage, step, learning_rate, f"its loss is {loss}")


def stop_diverged(stage: str, step: int, learning_rate: float, what: str) -> None:
    """Raise the error of a ``stage`` ("embedding", "filter", "gnn") whose training diverged at ``step``."""
    raise InputError(
        f"the {stage} training diverged at step {step}: {what} (learning rate {learning_rate:g}); "
        f"lower --{stage}-lr (nothing was written)"
    )


def check_trained(stage: str, steps: int, graphs) -> None:
    """Stop a stage that took no optimiser step: every batch had no edge it learns from, so
    its network would be written as initialised, untrained, with nothing said."""
    if steps == 0:
        edges = sum(int(graph.shape[1]) for graph in graphs)
        raise InputError(
            f"the {stage} took no training step: no batch held an edge it learns from ({edges:,} edge(s) in the "
            + ("filtered " if stage != "filter" else "") + f"radius graph{'s' if len(graphs) != 1 else ''} of "
            f"{len(graphs)} training event(s)); give events with more particles, or keep more "
            "edges (--graph-efficiency, --filter-efficiency) (nothing was written)"
        )
