"""A learning-rate cycle that ends by a deadline: training within a time budget.

``trackserve train --time-budget SECONDS`` bounds a whole training run (with the run of a
``--start-from`` bundle). The last GNN trained then follows its one-cycle learning-rate
schedule (``torch.optim.lr_scheduler.OneCycleLR`` over its epochs' steps) as usual, but
advanced by whichever runs out first, its steps or its time: after each step the
schedule stands at the larger of the fraction of the steps done and the fraction of
the time to the deadline used. On a machine fast enough for every epoch the training
is exactly the fixed-epoch one; on a slower one the cycle skips ahead and completes
(learning rate annealed) at the deadline, with fewer steps taken, instead of the run
passing its budget or stopping with the learning rate high.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from ..errors import InputError

#: Seconds of the budget kept for what follows the last GNN's steps: its last
#: validation and the choice of its cut (a few seconds each for the default bundle's
#: full-size validation event on this project's 2-core machine).
RESERVE_SECONDS = 30.0


def stage_deadline(budget: float, used_before: float, started: float, reserve: float = RESERVE_SECONDS,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """The ``clock`` value by which the last GNN's steps must end for a run to keep within
    ``budget`` seconds: ``used_before`` seconds were spent before this run (a started-from
    bundle's training) and this run began at ``started``; ``reserve`` seconds stay for
    what follows. An :class:`InputError` says when no time is left for it."""
    deadline = started + (budget - used_before) - reserve
    left = deadline - clock()
    if left <= 0:
        spent = used_before + clock() - started
        before = f" (with the started-from bundle's {used_before:.0f} s)" if used_before else ""
        raise InputError(
            f"the time budget of {budget:g} s is spent before the last GNN could train: {spent:.0f} s were used"
            f"{before} and {reserve:g} s are kept for choosing its cut; "
            "give a larger --time-budget or fewer epochs to the stages before it"
        )
    return deadline


class BudgetedCycle:
    """Advances a one-cycle ``scheduler`` of ``total_steps`` steps by the larger of the steps
    done and the time used between ``start`` and ``deadline`` (``clock`` values;
    ``math.inf``: the steps alone, one schedule step per step taken).

    Call :meth:`advance` after each optimiser step instead of ``scheduler.step()``; it
    returns False once the cycle is complete (:attr:`done`), after which no step should
    be taken. :attr:`fraction` is how much of the cycle is done.
    """

    def __init__(self, scheduler, total_steps: int, start: float, deadline: float,
                 clock: Callable[[], float] = time.perf_counter):
        if total_steps < 1:
            raise InputError(f"a learning-rate cycle needs at least one step, got {total_steps}")
        if not deadline > start:
            raise InputError(f"the deadline ({deadline}) must come after the start ({start})")
        self.scheduler = scheduler
        self.total_steps = int(total_steps)
        self.start, self.deadline, self.clock = float(start), float(deadline), clock
        self.steps_taken = 0

    @property
    def position(self) -> int:
        """The scheduler's step in its cycle (0 .. ``total_steps``)."""
        return int(self.scheduler.last_epoch)

    @property
    def fraction(self) -> float:
        """The fraction of the cycle done."""
        return self.position / self.total_steps

    @property
    def done(self) -> bool:
        """Whether the cycle is complete (the learning rate at its end)."""
        return self.position >= self.total_steps

    def advance(self) -> bool:
        """Count one step taken and move the schedule to where the steps or the time put it,
        whichever is further; False when the cycle is complete."""
        self.steps_taken += 1
        by_time = (self.clock() - self.start) / (self.deadline - self.start)
        target = min(self.total_steps, max(self.position + 1, math.ceil(by_time * self.total_steps)))
        while self.position < target:
            self.scheduler.step()
        return not self.done


def training_seconds(seconds: dict) -> float:
    """A bundle's whole training time from its ``provenance.seconds``: its own training with
    the training of any bundle it started from (``training_total``), else ``training``."""
    return float(seconds.get("training_total", seconds.get("training", 0.0)))


def budget_summary(budget: float | None, seconds: dict, history: list[dict]) -> str | None:
    """One line on how a run kept its time ``budget`` (None: it had none): the training's
    seconds in all (``seconds``: a bundle's ``provenance.seconds``), and how many of its
    cycle's steps the last GNN took (``history``: that GNN's epochs, as
    :func:`~trackserve.train.gnn.train_gnn` records them under a deadline), saying when the
    budget ended its cycle early."""
    if budget is None:
        return None
    used = training_seconds(seconds)
    steps, total_steps = int(history[-1]["steps"]), int(history[-1]["cycle_steps"])
    how = ("its learning-rate cycle ended by the budget" if steps < total_steps
           else "every step, within the budget")
    line = (f"time budget {budget:g} s: {used:.0f} s of training in all; the last GNN took {steps} of its "
            f"{total_steps} steps in {len(history)} epoch{'' if len(history) == 1 else 's'} ({how})")
    if used > budget:
        line += (f"; OVER the budget by {used - budget:.0f} s: a step, an epoch's validation or the choice of the cut "
                 "took longer than the time left, and the budget ends the cycle only between steps")
    return line
