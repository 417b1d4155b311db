"""Tests for benchmarks/label_pruning.py: only the train part's suspects are dropped, the folds
keep duplicates together, and a whole pruning run on synthetic crops reports every part."""

import json
from pathlib import Path

import pytest

from pitguard.core.errors import PitguardError
from pitguard.data.manifest import ManifestRow, read_manifest
from pitguard.train.crossfit import deal_folds
from tests.conftest import load_benchmark


def _rows(splits: str) -> list[ManifestRow]:
    """One row per letter (t train, v val, x test), labels alternating clean, pit."""
    names = {"t": "train", "v": "val", "x": "test"}
    return [
        ManifestRow(Path(f"/crops/{i}.png"), ("clean", "pit")[i % 2], names[s])
        for i, s in enumerate(splits)
    ]


def test_only_train_crops_that_contradict_their_label_are_dropped():
    rows = _rows("ttttttttvvxx")
    # train: clean crops score 0.1 and pits 0.9, but crop 2 (clean) scores 0.95 and crop 5
    # (pit) 0.3; the val and test crops contradict their labels too, and must stay
    p = [0.1, 0.9, 0.95, 0.9, 0.1, 0.3, 0.1, 0.9, 0.99, 0.01, 0.99, 0.01]
    kept, dropped = load_benchmark("label_pruning").prune(
        rows, {r.path: s for r, s in zip(rows, p, strict=True)}
    )
    assert [r.path.name for r, _ in dropped] == ["2.png", "5.png"]  # p(clean) 0.05 before 0.3
    assert [p for _, p in dropped] == [0.95, 0.3]
    assert kept == [r for r in rows if r.path.name not in ("2.png", "5.png")]
    assert [r.split for r in kept].count("train") == 6
    assert [r for r in kept if r.split != "train"] == [r for r in rows if r.split != "train"]


def test_a_train_crop_without_a_score_is_refused():
    rows = _rows("tttv")
    scores = {r.path: 0.5 for r in rows[:2]}
    with pytest.raises(
        PitguardError, match=r"1 train crops have no out-of-fold score, e\.g\. /crops/2\.png: "
    ):
        load_benchmark("label_pruning").prune(rows, scores)


def test_the_two_folds_are_stratified_and_keep_each_duplicate_group_whole():
    rows = [
        ManifestRow(
            Path(f"/c/{i}.png"), ("clean", "pit")[i % 2], "train", f"g{i // 4}" if i < 8 else None
        )
        for i in range(40)
    ]
    folds = deal_folds(rows, 2, seed=3)
    assert set(folds) == {"1", "2"}
    for g in range(2):  # crops 0-3 and 4-7 are duplicate groups
        assert len({folds[i] for i in range(4 * g, 4 * g + 4)}) == 1
    for label in ("clean", "pit"):
        in_one = sum(f == "1" for r, f in zip(rows, folds, strict=True) if r.label == label)
        assert 8 <= in_one <= 12  # 20 of each class, about half in each fold


def test_a_pruning_run_reports_val_calib_and_test_and_reuses_its_fold_models(tmp_path, capsys):
    from pitguard.data.synth import synthesize

    synthesize(tmp_path / "crops", count=240, seed=2, difficulty=0.5)
    module = load_benchmark("label_pruning")
    sets = ["model.name=pitguard_tiny", "train.epochs=1", "train.threads=1", "train.max_minutes=0"]
    argv = ["--recipe", "small-fast", "--data", str(tmp_path / "crops"), "--fold-epochs", "1"]
    argv += [f"--set={s}" for s in sets]
    out = tmp_path / "prune"
    assert module.main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "result.json").read_text())
    assert json.loads((out / "pruning.json").read_text()).items() <= record.items()
    split = read_manifest(out / "split.csv")
    pruned = read_manifest(out / "pruned.csv")
    train_rows = [r for r in split if r.split == "train"]
    n_dropped = sum(record["dropped"].values())
    assert record["n_train"] == len(train_rows) and len(record["dropped_crops"]) == n_dropped
    assert sum(r.split == "train" for r in pruned) == len(train_rows) - n_dropped
    assert [r for r in pruned if r.split != "train"] == [r for r in split if r.split != "train"]
    for part in ("val", "calib", "test"):
        assert record[part]["n"] == sum(r.split == part for r in split)
        assert 0 <= record[part]["accuracy"] <= 1
    assert "test" in capsys.readouterr().out
    # the run trained on the pruned manifest, not on the whole train part
    summary = json.loads((out / "run" / "train_summary.json").read_text())
    assert summary["n_train"] == len(train_rows) - n_dropped
    # again with --prune-only: the fold models are read, not trained again, and prune alike;
    # the first run's results stay
    weights = out / "fold1" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert module.main([*argv, "--out", str(out), "--prune-only"]) == 0
    assert weights.stat().st_mtime_ns == before
    again = json.loads((out / "pruning.json").read_text())
    assert again["dropped_crops"] == record["dropped_crops"] and "test" not in again
    assert json.loads((out / "result.json").read_text()) == record
