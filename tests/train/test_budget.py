"""Tests for pitguard.train.budget: a time budget becomes an epoch plan the schedule is laid over."""

import itertools

import pytest

from pitguard.config import load_config
from pitguard.models.runfolder import load_checkpoint
from pitguard.train.budget import PROBE_STEPS, SAFETY, plan_epochs, time_epoch
from pitguard.train.loop import train


def test_one_epoch_is_timed_from_steady_steps_and_a_validation_pass():
    now = [0.0]
    calls = []

    def run_steps(n):
        calls.append(n)
        now[0] += 2.0 * n  # two seconds a step

    def run_validation():
        now[0] += 5.0

    seconds = time_epoch(run_steps, run_validation, steps_per_epoch=10, clock=lambda: now[0])
    assert calls == [1, PROBE_STEPS]  # one untimed warm-up step first
    assert seconds == pytest.approx(2.0 * 10 + 5.0)


def test_the_plan_fits_the_budget_and_the_recipes_epochs():
    assert plan_epochs(10, 120, 5.0).epochs == int(SAFETY * 600 / 5.0)
    assert plan_epochs(10, 20, 5.0).epochs == 20  # a fast machine still runs the recipe's epochs
    assert plan_epochs(0.01, 20, 60.0).epochs == 1  # always at least one epoch


def fake_clock(seconds_per_call: float):
    """A clock that moves on by the same amount each time it is read."""
    counter = itertools.count()
    return lambda: next(counter) * seconds_per_call


# The clock moves by SECONDS each time it is read, so one epoch "takes" SECONDS / PROBE_STEPS
# per step over 2 steps (132 train crops, batch 64), plus SECONDS of validation.
@pytest.mark.parametrize("seconds_per_call, planned", [(0.5, 2), (20.0, 1)])
def test_a_slow_machine_plans_fewer_epochs_and_still_ends_fully_decayed(
    synth_dir, tmp_path, seconds_per_call, planned
):
    sets = [
        "model.name=pitguard_tiny",
        "train.epochs=2",
        "train.threads=1",
        "train.max_minutes=0.5",
        "train.warmup_epochs=1",
        "train.ema_decay=0",
    ]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    run = tmp_path / f"run{seconds_per_call}"
    summary = train(cfg, run, clock=fake_clock(seconds_per_call))
    plan = summary["plan"]
    assert plan["budget_minutes"] == 0.5 and summary["epochs_planned"] == plan["epochs"]
    expected = seconds_per_call / PROBE_STEPS * 2 + seconds_per_call
    assert plan["seconds_per_epoch"] == pytest.approx(expected)
    assert plan["epochs"] == planned and summary["epochs_run"] == planned
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["plan"] == plan  # a resumed run keeps the plan
    final_lr = ckpt["history"][-1]["lr"]
    assert final_lr == pytest.approx(cfg.train.lr * 1e-3)  # the cosine's minimum: fully decayed


def test_a_budgeted_run_resumed_follows_its_plan_to_the_same_weights(synth_dir, tmp_path):
    import torch

    sets = ["model.name=pitguard_tiny", "train.epochs=5", "train.threads=1", "train.max_minutes=1"]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    # 13 s per clock read: one epoch "takes" 13 / 3 * 2 + 13 = 21.7 s, so 2 of 5 epochs fit
    full = train(cfg, tmp_path / "full", clock=fake_clock(13.0))
    train(cfg, tmp_path / "cut", stop_after=1, clock=fake_clock(13.0))
    resumed = train(None, tmp_path / "cut", resume=True, clock=fake_clock(1000.0))
    assert full["epochs_planned"] == resumed["epochs_planned"] == 2  # not re-planned on resume
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
