"""Tests for pitguard.train.sweep: Optuna studies over ordinary runs, shared by worker processes."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pitguard.cli import main
from pitguard.config import load_config
from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json
from pitguard.train.loop import train
from pitguard.train.sweep import DEFAULT_SPACE, _run_trial, read_space, sweep

FAST = [
    "model.name=pitguard_tiny",
    "train.epochs=1",
    "train.max_minutes=0",
    "train.threads=1",
    "train.eval_batch_size=64",
]


def _sets() -> list[str]:
    return [arg for s in FAST for arg in ("--set", s)]


def _study(db: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_a_bad_space_file_lists_every_problem_with_its_key(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.lr: {type: float, low: 0.0, high: 0.1, log: true}\n"
        "train.epochs: {type: int, low: 5, high: 2}\n"
        "model.name: {type: categorical}\n"
        "train.seed: {type: choice}\n"
    )
    with pytest.raises(PitguardError) as err:
        read_space(space)
    lines = str(err.value).splitlines()
    assert len(lines) == 4
    assert "space.yaml: train.lr: log: true needs low > 0" in lines[0]
    assert "train.epochs: low (5) must be below high (2)" in lines[1]
    assert "model.name: a categorical setting needs choices" in lines[2]
    assert "train.seed: give type: float | int | categorical" in lines[3]
    assert read_space(None) is DEFAULT_SPACE
    with pytest.raises(PitguardError, match="no such file"):
        read_space(tmp_path / "none.yaml")


def test_an_epoch_hook_stops_a_run_and_the_reason_is_kept(synth_dir, tmp_path):
    cfg = load_config(
        "small-fast", sets=[*FAST, "train.epochs=4"], extra={"data.path": str(synth_dir)}
    )
    seen = []

    def hook(epoch, stats):
        seen.append((epoch, round(stats["val_accuracy"], 6)))
        return "pruned for the test" if epoch == 2 else None

    summary = train(cfg, tmp_path / "r", on_epoch=hook)
    assert [e for e, _ in seen] == [1, 2]
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "pruned for the test"


def test_a_trial_the_pruner_stops_is_recorded_pruned(synth_dir, tmp_path, monkeypatch):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    monkeypatch.setattr(trial, "should_prune", lambda: True)
    base = load_config(
        "small-fast", sets=[*FAST, "train.epochs=3"], extra={"data.path": str(synth_dir)}
    )
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-3}}
    sets = [*FAST, "train.epochs=3"]
    _run_trial(study, trial, tmp_path, "val_accuracy", space, sets, "small-fast", None, base)
    (t,) = study.get_trials()
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]
    summary = read_json(tmp_path / "trials" / "trial-0000" / "train_summary.json")
    assert summary["epochs_run"] == 1 and "pruned by the sweep" in summary["stop_reason"]


def test_a_trial_that_diverges_is_recorded_pruned_and_the_sweep_goes_on(synth_dir, tmp_path):
    # SGD whose rate grows 1e15-fold after the first epoch: the loss is NaN in the second
    sets = [*FAST, "train.epochs=3", "train.optimizer=sgd", "train.schedule=step"]
    sets += ["train.step_epochs=1", "train.step_gamma=1e15"]
    base = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-3}}
    _run_trial(study, study.ask(), tmp_path, "val_accuracy", space, sets, "small-fast", None, base)
    (t,) = study.get_trials()
    # the epochs before the NaN were reported; the sweep's loop counts a pruned trial as done
    reported = list(t.intermediate_values)
    assert t.state == TrialState.PRUNED and reported == list(range(1, len(reported) + 1))
    assert f"became nan in epoch {len(reported) + 1}" in t.user_attrs["diverged"]


def test_sweep_runs_its_trials_as_runs_and_writes_a_usable_best_recipe(synth_dir, tmp_path, capsys):
    db = tmp_path / "study.db"
    argv = ["sweep", "--recipe", "small-fast", "--data", str(synth_dir), "--trials", "4"]
    argv += ["--storage", f"sqlite:///{db}", "--out", str(tmp_path / "sw"), *_sets(), "--seed", "0"]
    assert main(argv) == 0
    trials = _study(db, "sw").get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # each its own settings
    for t in trials:
        assert read_json(Path(t.user_attrs["run"]) / "train_summary.json")["epochs_run"] == 1
    record = read_json(tmp_path / "sw" / "sweep.json")
    best = record["best"]
    assert best["value"] == max(t.value for t in trials)
    recipe = tmp_path / "sw" / "best-recipe.yaml"
    text = recipe.read_text()
    assert f"best trial {best['number']}" in text and "pitguard_tiny" in text
    cfg = load_config(str(recipe))
    assert cfg.train.lr == pytest.approx(best["params"]["train.lr"])
    assert "best: trial" in capsys.readouterr().out
    assert main(argv) == 0  # run again: the study already holds 4 trials, none is added
    assert len(_study(db, "sw").get_trials()) == 4


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_lose_and_repeat_no_trial(synth_dir, tmp_path):
    db = tmp_path / "shared.db"
    argv = ["sweep", "--recipe", "small-fast", "--data", str(synth_dir), "--trials", "8"]
    argv += ["--storage", f"sqlite:///{db}", "--out", str(tmp_path / "sw"), "--workers", "2"]
    assert main([*argv, *_sets()]) == 0
    trials = _study(db, "sw").get_trials()
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    runs = {t.user_attrs["run"] for t in trials}
    assert len(runs) == 8 and all((Path(r) / "train_summary.json").is_file() for r in runs)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    assert sorted(p.name for p in (tmp_path / "sw" / "trials").iterdir()) == [
        f"trial-{n:04d}" for n in range(8)
    ]


def test_a_trial_left_running_by_a_dead_worker_is_run_again(synth_dir, tmp_path):
    db = tmp_path / "s.db"
    storage = f"sqlite:///{db}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{socket.gethostname()}:999999999")  # no such process
    base = load_config("small-fast", sets=FAST, extra={"data.path": str(synth_dir)})
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-3}}
    record = sweep(base, tmp_path / "sw", 2, storage, "s", space, FAST, "small-fast", None, 0)
    states = [t.state for t in _study(db, "s").get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert record["states"]["fail"] == 1 and record["trials_run_here"] == 2


def test_a_recipe_that_keeps_its_last_epoch_is_scored_on_that_epochs_val_accuracy(
    synth_dir, tmp_path
):
    sets = [*FAST, "train.epochs=2", "train.select_metric=last"]
    base = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-3}}
    sweep(base, tmp_path / "sw", 1, storage, "s", space, sets, "small-fast", None, 0)
    (trial,) = _study(tmp_path / "s.db", "s").get_trials()
    summary = read_json(Path(trial.user_attrs["run"]) / "train_summary.json")
    assert summary["kept_epoch"] == 2 and summary["best_value"] is None  # no value chosen on
    assert trial.value == summary["val_accuracy"]  # an accuracy, not the epoch number


def test_a_recipe_that_trains_on_val_is_refused_before_any_trial(synth_dir, tmp_path):
    sets = [*FAST, "train.select_metric=last", "train.fit_val=true"]
    base = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-3}}
    with pytest.raises(PitguardError, match=r"train.fit_val.*--set train.fit_val=false"):
        sweep(base, tmp_path / "sw", 1, storage, "s", space, sets, "small-fast", None, 0)
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "sw").exists()


def test_choose_on_review_scores_each_trial_by_its_val_review_rate(tmp_path):
    from pitguard.data.synth import synthesize
    from pitguard.train.sweep import val_review_rate

    crops = tmp_path / "crops"
    synthesize(crops, count=400, seed=1)
    # a val part of about 240 crops, 120 pits: enough for the 1% bound on average, not exactly
    sets = [*FAST, "data.fractions=train=0.3,val=0.6,calib=0.05,test=0.05"]
    base = load_config("small-fast", sets=sets, extra={"data.path": str(crops)})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}
    record = sweep(
        base, tmp_path / "sw", 2, storage, "s", space, sets, "small-fast", None, 0, "review"
    )
    assert record["metric"] == "val_review_rate" and record["direction"] == "minimize"
    trials = _study(tmp_path / "s.db", "s").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.intermediate_values == {}  # known only at the end: nothing to prune on
        rate, guarantee = val_review_rate(Path(t.user_attrs["run"]))
        assert t.value == rate and 0.0 <= rate <= 1.0
        assert guarantee == t.user_attrs["guarantee"] == "expected"
    assert record["best"]["value"] == min(t.value for t in trials)
    assert all(t["guarantee"] == "expected" for t in record["trials"])
    assert "val_review_rate" in (tmp_path / "sw" / "best-recipe.yaml").read_text()


def test_choose_on_review_names_the_fix_when_val_has_too_few_pits(synth_dir, tmp_path):
    # the synthetic set's val part holds about 12 pits: no 1% bound, not even on average
    base = load_config("small-fast", sets=FAST, extra={"data.path": str(synth_dir)})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 2e-3}}
    with pytest.raises(PitguardError, match=r"pits cannot certify.*data.fractions"):
        sweep(base, tmp_path / "sw", 1, storage, "s", space, FAST, "small-fast", None, 0, "review")
    with pytest.raises(PitguardError, match="choose_on 'auc'"):
        sweep(base, tmp_path / "sw2", 1, storage, "s2", space, FAST, "small-fast", None, 0, "auc")
