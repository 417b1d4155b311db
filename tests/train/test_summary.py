"""Tests for pitguard.train.summary: train_summary.json typed, and older summaries read."""

from __future__ import annotations

import json

from pitguard.core.files import read_json
from pitguard.models.runfolder import RunPaths
from pitguard.train.summary import TrainSummary

NOW = {
    "run": "runs/a",
    "recipe": "small-fast",
    "model": "pitguard_tiny",
    "n_train": 330,
    "n_val": 60,
    "epochs_run": 6,
    "epochs_planned": 6,
    "teacher": None,
    "plan": {"epochs": 6, "budget_minutes": 2.0},
    "over_budget_s": None,
    "best_epoch": 4,
    "kept_epoch": 4,
    "selected_on": "val_accuracy",
    "best_value": 0.75,
    "val_accuracy": 0.75,
    "warning": None,
    "stop_reason": "every planned epoch done",
    "train_seconds": 2.5,
    "device": "cpu",
    "precision": "fp32",
    "threads": 1,
    "world_size": 1,
    "rank_seeds": [0],
}


def test_a_summary_reads_and_writes_back_unchanged():
    summary = TrainSummary.from_dict(json.loads(json.dumps(NOW)))
    assert summary.kept_epoch == 4 and summary.best_value == 0.75
    assert summary.to_dict() == NOW and set(summary.to_dict()) == set(NOW)


def test_a_summary_the_run_wrote_reads_back(trained_run):
    written = read_json(RunPaths(trained_run).summary)
    summary = TrainSummary.from_dict(written)
    assert summary.recipe == written["recipe"] and summary.epochs_run == written["epochs_run"]
    assert {k: v for k, v in summary.to_dict().items() if k in written} == written
    # a summary from before kept_epoch kept its best epoch's weights
    if "kept_epoch" not in written:
        assert summary.kept_epoch == written["best_epoch"]


def test_an_older_summary_keeps_its_best_epoch_and_reads_none_for_the_rest():
    old = {k: v for k, v in NOW.items() if k not in ("kept_epoch", "rank_seeds", "precision")}
    summary = TrainSummary.from_dict(old)
    assert summary.kept_epoch == 4 and summary.best_value == 0.75
    assert summary.rank_seeds is None and summary.precision is None
    assert set(summary.to_dict()) == set(NOW)


def test_an_older_summary_selected_on_last_has_no_best_value():
    old = {k: v for k, v in NOW.items() if k != "kept_epoch"}
    old.update(selected_on="last", best_epoch=6, best_value=6.0)  # the epoch number
    summary = TrainSummary.from_dict(old)
    assert summary.kept_epoch == 6 and summary.best_value is None
    # a newer one says what it kept and is read as written
    new = {**NOW, "selected_on": "last", "best_epoch": 6, "kept_epoch": 6, "best_value": None}
    assert TrainSummary.from_dict(new).to_dict() == new
