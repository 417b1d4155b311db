"""Tests for pitguard.train.crossfit: K fold models give every pooled crop an out-of-fold score; the
final model trains on all of them; calibrate, eval and export use the scores and say so."""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pitguard.config import load_config
from pitguard.core.errors import PitguardError
from pitguard.data.manifest import ManifestRow, read_manifest, write_manifest
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import RunPaths
from pitguard.train.crossfit import fixed_run
from tests.conftest import CROSSFIT_FOLDS as FOLDS
from tests.conftest import CROSSFIT_SETS as SETS


def _config(data: Path, sets=()):
    return load_config("small-fast", sets=[*SETS, *sets], extra={"data.path": str(data)})


@pytest.fixture
def crops(crossfit_crops) -> Path:
    return crossfit_crops


@pytest.fixture
def cf_run(crossfit_run) -> Path:
    return crossfit_run


def _rows(path: Path) -> dict[str, ManifestRow]:
    return {str(r.path): r for r in read_manifest(path)}


def test_every_pooled_crop_is_scored_once_by_the_fold_model_that_never_saw_it(cf_run):
    paths = RunPaths(cf_run)
    split = _rows(paths.split)
    pool = {p for p, r in split.items() if r.split == "train"}
    test = {p for p, r in split.items() if r.split == "test"}
    assert pool and test and len(pool) + len(test) == len(split)
    oof = read_oof(cf_run)
    scored = [str((cf_run / p).resolve()) for p in oof.paths]
    assert len(scored) == len(set(scored)) and set(scored) == pool  # each once, test never
    assert oof.logits.shape == (len(pool), 2) and np.isfinite(oof.logits).all()
    for k in range(1, FOLDS + 1):
        fold = _rows(paths.fold(k) / "split.csv")
        trained = {p for p, r in fold.items() if r.split == "train"}
        held = {s for s, f in zip(scored, oof.folds, strict=True) if f == k}
        assert held == {p for p, r in split.items() if r.fold == str(k)}
        assert not held & trained and not test & trained
        assert trained | held == pool


def test_the_final_model_trains_on_every_pooled_crop_and_keeps_its_last_epoch(cf_run):
    paths = RunPaths(cf_run)
    summary = json.loads(paths.summary.read_text())
    pool = [r for r in read_manifest(paths.split) if r.split == "train"]
    assert summary["n_train"] == len(pool) and summary["n_val"] == 0
    assert summary["selected_on"] == "last" and summary["best_epoch"] == summary["epochs_run"] == 2
    record = json.loads(paths.crossfit.read_text())
    assert record["folds"] == FOLDS and record["epochs"] == 2
    assert [f["fold"] for f in record["per_fold"]] == [1, 2, 3]
    assert sum(f["n_oof"] for f in record["per_fold"]) == record["oof"]["n"] == len(pool)
    for k in range(1, FOLDS + 1):
        fold = json.loads((paths.fold(k) / "train_summary.json").read_text())
        assert fold["selected_on"] == "last" and fold["epochs_run"] == 2


def test_folds_are_stratified_and_keep_duplicate_groups_whole(tmp_path):
    from pitguard.train.crossfit import pool_rows

    rows = [
        ManifestRow(
            tmp_path / f"c{i}.png",
            "pit" if i % 3 == 0 else "clean",
            "test" if i % 10 == 0 else ("calib" if i % 4 == 0 else "train"),
            f"g{i // 4}" if i < 40 else None,  # groups of 4 (mixed splits are kept as given)
        )
        for i in range(200)
    ]
    manifest = write_manifest(tmp_path / "in.csv", rows)
    out = pool_rows(_config(manifest), tmp_path / "split.csv", 4)
    assert [r.split for r in out if r.split == "test"] == ["test"] * 20  # test kept as it was
    pooled = [r for r in out if r.split != "test"]
    assert all(r.split == "train" and r.fold in {"1", "2", "3", "4"} for r in pooled)
    by_group: dict[str, set] = {}
    for r in pooled:
        if r.group:
            by_group.setdefault(r.group, set()).add(r.fold)
    assert by_group and all(len(f) == 1 for f in by_group.values())
    for label in ("pit", "clean"):
        sizes = [sum(r.label == label and r.fold == f for r in pooled) for f in "1234"]
        assert max(sizes) - min(sizes) <= 4  # one group of 4 at most


def test_too_few_crops_for_the_folds_is_refused_before_training(tmp_path):
    from pitguard.train.crossfit import pool_rows

    rows = [
        ManifestRow(tmp_path / f"c{i}.png", "pit" if i < 3 else "clean", "train") for i in range(20)
    ]
    manifest = write_manifest(tmp_path / "in.csv", rows)
    with pytest.raises(PitguardError, match="too few for 5 folds"):
        pool_rows(_config(manifest), tmp_path / "split.csv", 5)


def test_an_interrupted_crossfit_resumes_to_the_same_scores(crops, cf_run, tmp_path, monkeypatch):
    import pitguard.train.crossfit as cf

    calls = itertools.count()
    real = cf.train

    def dies_on_the_third_model(*args, **kwargs):
        if next(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cf, "train", dies_on_the_third_model)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        cf.crossfit(_config(crops), run, FOLDS)
    assert RunPaths(run.joinpath("folds", "fold-2")).summary.is_file()
    assert not RunPaths(run).oof.exists()
    with pytest.raises(PitguardError, match="--resume"):
        cf.crossfit(_config(crops), run, FOLDS)
    monkeypatch.setattr(cf, "train", real)
    cf.crossfit(None, run, resume=True)
    a, b = read_oof(run), read_oof(cf_run)
    assert a.paths == b.paths and np.array_equal(a.folds, b.folds)
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-6)


def test_a_time_budget_is_timed_once_and_binds_every_model(crops, tmp_path):
    from pitguard.train.crossfit import crossfit

    ticks = itertools.count()
    cfg = _config(crops, ["train.epochs=4", "train.max_minutes=0.6"])
    # 10 s per clock read: an epoch "takes" 10 / 3 * 2 + 10 s, so 2 of 4 epochs fit in 36 s
    record = crossfit(cfg, tmp_path / "run", 2, clock=lambda: next(ticks) * 10.0)
    assert record["plan"]["epochs"] == record["epochs"] == 2
    for k in (1, 2):
        fold_cfg = json.loads(
            (tmp_path / "run" / "folds" / f"fold-{k}" / "config.json").read_text()
        )
        assert fold_cfg["train"]["epochs"] == 2 and fold_cfg["train"]["max_minutes"] == 0


def test_calibrate_uses_the_out_of_fold_scores_and_records_the_mode(cf_run, tmp_path):
    from pitguard.decision.calibrate import calibrate_run
    from tests.conftest import copy_run

    run = copy_run(cf_run, tmp_path / "run")
    with pytest.raises(PitguardError, match="--scores oof"):
        calibrate_run(run, max_pit_miss=0.05, confidence=0.9, scores="holdout")
    record = calibrate_run(run, max_pit_miss=0.05, confidence=0.9)  # oof by default
    oof = read_oof(run)
    assert record["mode"] == record["guarantee"]["mode"] == "oof"
    assert "cross-fit" in record["guarantee"]["statement"]
    assert record["calibration_data"]["n"] == len(oof.paths)
    assert record["calibration_data"]["n_pits"] == int((oof.labels == oof.pit_index).sum())
    policy = json.loads(RunPaths(run).policy.read_text())
    assert policy["mode"] == "oof"


def test_a_plain_run_has_no_out_of_fold_scores_to_calibrate_on(trained_run):
    from pitguard.decision.calibrate import calibrate_run

    with pytest.raises(PitguardError, match="--folds"):
        calibrate_run(trained_run, max_pit_miss=0.05, confidence=0.9, scores="oof")


def test_eval_and_export_of_a_crossfitted_run_carry_the_calibration_mode(cf_run, tmp_path):
    from pitguard.decision.calibrate import calibrate_run
    from pitguard.deploy.export import export_run
    from pitguard.evaluate.run import evaluate_run
    from pitguard.models.runfolder import load_policy
    from tests.conftest import copy_run

    run = copy_run(cf_run, tmp_path / "run")
    record = calibrate_run(run, max_pit_miss=0.05, confidence=0.9)
    result = evaluate_run(run, n_boot=50, policy=load_policy(run), calibration=record)
    assert result["part"] == "test"
    pol = result["policy"]
    assert pol["calibration_mode"] == "oof" and pol["guarantee"]["mode"] == "oof"
    for key in ("pit_miss_rate", "maybe_rate", "false_reject_rate", "accuracy_decided"):
        assert key in pol
    export_run(run, tmp_path / "bundle")
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert bundle["guarantee"]["mode"] == "oof"


def test_cli_refuses_folds_below_two_and_with_stop_after(crops, tmp_path, capsys):
    from pitguard.cli import main

    base = ["train", "--recipe", "small-fast", "--data", str(crops), "--out", str(tmp_path / "r")]
    assert main([*base, "--folds", "1"]) == 2
    assert "2 or more folds" in capsys.readouterr().err
    assert main([*base, "--folds", "3", "--stop-after", "1"]) == 2
    assert "--stop-after" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_oof_file_is_checked_when_read(cf_run, tmp_path):
    from tests.conftest import copy_run

    run = copy_run(cf_run, tmp_path / "run")
    path = RunPaths(run).oof
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[3][3] = "not-a-number"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(PitguardError, match="damaged"):
        read_oof(run)
    os.remove(path)
    with pytest.raises(PitguardError, match="--folds"):
        read_oof(run)


@pytest.mark.slow
def test_worker_processes_share_the_models_and_score_every_crop_once(crops, cf_run, tmp_path):
    """--workers 2: a helper process takes the models the first one has not started; each
    model is trained once (its folder's lock names the process that trained it) and every
    pooled crop gets exactly one out-of-fold score."""
    from pitguard.cli import main

    run = tmp_path / "run"
    argv = ["train", "--recipe", "small-fast", "--data", str(crops), "--out", str(run)]
    sets = [arg for s in (*SETS, "train.epochs=20") for arg in ("--set", s)]
    assert main([*argv, *sets, "--folds", str(FOLDS), "--workers", "2"]) == 0
    trained_by = {
        p.parent.name: p.read_text().split()[1]
        for p in [*run.joinpath("folds").glob("fold-*/.lock"), run / ".lock"]
    }
    assert len(trained_by) == FOLDS + 1 and len(set(trained_by.values())) == 2
    for fold in range(1, FOLDS + 1):
        history = json.loads(RunPaths(run / "folds" / f"fold-{fold}").summary.read_text())
        assert history["epochs_run"] == 20
    a, b = read_oof(run), read_oof(cf_run)
    assert sorted(a.paths) == sorted(b.paths) and len(set(a.paths)) == len(a.paths)


def test_fold_models_never_train_on_their_held_out_fold(tmp_path):
    # the fold's held-out crops sit in its val part: a recipe with train.fit_val must not
    # train on them, or its out-of-fold scores would be scores of seen crops
    cfg = load_config("cpu-fast", sets=["train.fit_val=true"])
    fold = fixed_run(cfg, tmp_path / "split.csv", epochs=3)
    assert not fold.train.fit_val
    assert (fold.train.epochs, fold.train.select_metric, fold.train.max_minutes) == (3, "last", 0)
