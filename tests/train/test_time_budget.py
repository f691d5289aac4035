"""Training within a time budget: the learning-rate cycle that ends by a deadline, and a run that keeps its budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trackserve.errors import InputError
from trackserve.events.features import TRACKML_1000
from trackserve.train.config import TrainingConfig
from trackserve.train.data import SimulatedSource, simulated_events
from trackserve.train.time_budget import RESERVE_SECONDS, BudgetedCycle, budget_summary, stage_deadline
from trackserve.train.trainer import train_pipeline


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _one_cycle(total_steps: int):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.01)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=total_steps,
                                                          pct_start=0.1)


def test_with_time_to_spare_the_cycle_is_the_plain_one_step_for_step():
    total = 40
    plain_optimizer, plain = _one_cycle(total)
    optimizer, scheduler = _one_cycle(total)
    clock = FakeClock()
    cycle = BudgetedCycle(scheduler, total, start=clock.now, deadline=clock.now + 1000.0, clock=clock)
    for step in range(total):
        clock.now += 1.0  # 40 s of the 1,000
        optimizer.step()
        plain_optimizer.step()
        more = cycle.advance()
        plain.step()
        assert optimizer.param_groups[0]["lr"] == plain_optimizer.param_groups[0]["lr"]
        assert optimizer.param_groups[0]["betas"] == plain_optimizer.param_groups[0]["betas"]
        assert more == (step < total - 1)
    assert cycle.done and cycle.fraction == 1.0 and cycle.steps_taken == total


def test_when_time_runs_short_the_cycle_skips_ahead_and_ends_annealed_at_the_deadline():
    total = 1000
    plain_optimizer, plain = _one_cycle(total)
    for _ in range(total):
        plain_optimizer.step()
        plain.step()
    final_lr = plain_optimizer.param_groups[0]["lr"]
    optimizer, scheduler = _one_cycle(total)
    clock = FakeClock()
    cycle = BudgetedCycle(scheduler, total, start=clock.now, deadline=clock.now + 10.0, clock=clock)
    fractions = []
    while True:
        clock.now += 1.0  # each step takes a tenth of the time to the deadline
        optimizer.step()
        more = cycle.advance()
        fractions.append(cycle.fraction)
        if not more:
            break
    assert cycle.steps_taken == 10 and fractions == pytest.approx([0.1 * k for k in range(1, 11)])
    assert cycle.done and optimizer.param_groups[0]["lr"] == pytest.approx(final_lr)
    # past the peak the learning rate only falls: the skipped steps follow the same curve
    assert final_lr < 1e-5 < 0.01


def test_without_a_deadline_the_steps_alone_drive_the_cycle():
    optimizer, scheduler = _one_cycle(100)
    clock = FakeClock()
    cycle = BudgetedCycle(scheduler, 100, start=clock.now, deadline=math.inf, clock=clock)
    clock.now += 1e9
    optimizer.step()
    assert cycle.advance() and cycle.position == 1 and cycle.fraction == 0.01


def test_a_cycle_needs_steps_and_a_deadline_after_its_start():
    _, scheduler = _one_cycle(100)
    with pytest.raises(InputError, match="at least one step"):
        BudgetedCycle(scheduler, 0, start=0.0, deadline=1.0)
    with pytest.raises(InputError, match="must come after the start"):
        BudgetedCycle(scheduler, 10, start=5.0, deadline=5.0)


def test_stage_deadline_keeps_the_reserve_and_says_when_the_budget_is_spent():
    clock = FakeClock(1000.0)
    # 600 s budget, 100 s used by the started-from bundle, this run began 50 s ago: 450 - reserve left
    assert stage_deadline(600.0, 100.0, 950.0, clock=clock) == pytest.approx(950.0 + 500.0 - RESERVE_SECONDS)
    with pytest.raises(InputError, match=r"time budget of 600 s is spent before the last GNN could train: 590 s"):
        stage_deadline(600.0, 540.0, 950.0, clock=clock)


@pytest.fixture(scope="module")
def tiny_events():
    events = simulated_events([SimulatedSource(num_particles=30)], 3, TRACKML_1000, seed=5, show_progress=False)
    return events[:2], events[2]


def test_a_run_with_a_budget_ends_its_second_gnn_by_time_and_keeps_within_it(tiny_events, tmp_path):
    events, validation = tiny_events
    plain = tmp_path / "plain"
    train_pipeline(events, validation, TrainingConfig.quick(threads=1), plain, spec=TRACKML_1000, show_progress=False)
    before = json.loads((plain / "pipeline.json").read_text())["provenance"]["seconds"]["training"]
    # Far more epochs than fit: about 8 s of this run's own, after the reserve.
    budget = before + RESERVE_SECONDS + 8.0
    config = TrainingConfig.quick(threads=1, prune_cut=0.4, pruned_gnn_epochs=5000, time_budget=budget)
    train_pipeline(events, validation, config, tmp_path / "budgeted", spec=TRACKML_1000, show_progress=False,
                   start_from=plain)
    provenance = json.loads((tmp_path / "budgeted" / "pipeline.json").read_text())["provenance"]
    history = provenance["history"]["pruned_gnn"]
    steps_per_epoch = config.gnn.sectors * len(events)
    assert len(history) < 5000 and history[-1]["steps"] < 5000 * steps_per_epoch
    assert history[-1]["cycle"] == 1.0 and all(a["cycle"] < b["cycle"] for a, b in zip(history, history[1:]))
    assert history[-1]["cycle_steps"] == 5000 * steps_per_epoch
    assert provenance["settings"]["time_budget"] == budget
    assert provenance["seconds"]["training_total"] <= budget
    # A budget already spent by the bundle started from is refused before any training.
    spent = TrainingConfig.quick(threads=1, prune_cut=0.4, time_budget=RESERVE_SECONDS + before / 2)
    with pytest.raises(InputError, match="is spent before the last GNN could train"):
        train_pipeline(events, validation, spent, tmp_path / "spent", spec=TRACKML_1000, show_progress=False,
                       start_from=plain)


def test_without_a_budget_the_history_is_as_before(tiny_events, tmp_path):
    events, validation = tiny_events
    train_pipeline(events, validation, TrainingConfig.quick(threads=1), tmp_path / "b", spec=TRACKML_1000,
                   show_progress=False)
    history = json.loads((tmp_path / "b" / "pipeline.json").read_text())["provenance"]["history"]["gnn"]
    assert len(history) == 1 and "cycle" not in history[0] and "steps" not in history[0]


def test_the_summary_says_how_the_budget_was_kept():
    history = [{"steps": 40, "cycle_steps": 400}, {"steps": 80, "cycle_steps": 400}, {"steps": 95, "cycle_steps": 400}]
    assert budget_summary(None, {"training": 5.0}, history) is None
    short = budget_summary(3600.0, {"training": 1200.0, "training_total": 3575.4}, history)
    assert short == ("time budget 3600 s: 3575 s of training in all; the last GNN took 95 of its 400 steps in 3 "
                     "epochs (its learning-rate cycle ended by the budget)")
    whole = budget_summary(600.0, {"training": 12.2}, [{"steps": 40, "cycle_steps": 40}])
    assert whole.endswith("took 40 of its 40 steps in 1 epoch (every step, within the budget)")
    over = budget_summary(32.5, {"training": 52.0}, [{"steps": 1, "cycle_steps": 15}])
    assert over.endswith("(its learning-rate cycle ended by the budget); OVER the budget by 20 s: a step, an epoch's "
                         "validation or the choice of the cut took longer than the time left, and the budget ends "
                         "the cycle only between steps")


def test_the_cli_prints_the_budget_line(tmp_path, capsys):
    from trackserve.cli import main

    argv = ["train", "--output", str(tmp_path / "b"), "--quick", "--random-events", "2", "--num-particles", "30",
            "--quiet", "--time-budget", "600"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "time budget 600 s: " in out and "(every step, within the budget)" in out
    assert main(argv[:-2] + ["--output", str(tmp_path / "c")]) == 0
    assert "time budget" not in capsys.readouterr().out


def test_a_budget_no_larger_than_the_reserve_is_refused_before_anything_trains():
    with pytest.raises(InputError, match=r"time_budget must be a finite number of seconds above the 30 s kept"):
        TrainingConfig.quick(threads=1, time_budget=RESERVE_SECONDS).validate()
