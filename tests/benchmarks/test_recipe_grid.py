"""Tests for benchmarks/recipe_grid.py: variants over split seeds, a student after its teacher."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pitguard.data.manifest import read_manifest
from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]

GRID = Path(__file__).resolve().parents[2] / "benchmarks" / "recipe_grid.py"
TINY = ["model.name=pitguard_tiny", "train.epochs=1", "train.max_minutes=0"]


def _grid(tmp_path: Path, variants: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps({"variants": variants}))  # JSON is YAML
    return path


@pytest.mark.slow
def test_each_variant_trains_on_each_seed_and_the_student_finds_its_teacher(synth_dir, tmp_path):
    grid = _grid(
        tmp_path,
        {
            "teacher": {"recipe": "small-fast", "set": TINY},
            "student": {
                "recipe": "small-fast",
                "after": "teacher",
                "set": [*TINY, "train.teacher={out}/teacher-s{seed}"],
            },
        },
    )
    out = tmp_path / "g"
    argv = [sys.executable, str(GRID), "--grid", str(grid), "--data", str(synth_dir)]
    argv += ["--split-seeds", "0,1", "--parallel", "2", "--threads", "1", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "grid.json").read_text())
    records = {(r["variant"], r["split_seed"]): r for r in result["records"]}
    assert set(records) == {(v, s) for v in ("teacher", "student") for s in (0, 1)}
    assert all(r["status"] == "done" and r["n_test"] > 0 for r in records.values())
    for seed in (0, 1):  # each student learned from the teacher of its own split
        config = json.loads((out / f"student-s{seed}" / "config.json").read_text())
        assert config["train"]["teacher"] == f"{out}/teacher-s{seed}"
        assert config["data"]["split_seed"] == seed
        # each run is also scored on its own calib part, which no variant trains on
        calib = [
            r for r in read_manifest(out / f"student-s{seed}" / "split.csv") if r.split == "calib"
        ]
        assert records[("student", seed)]["n_calib"] == len(calib) > 0
    assert all(0 <= r["calib_accuracy"] <= 1 and r["calib_roc_auc"] for r in records.values())
    # synthetic calib parts hold too few pits for a 1% bound: no maybe rate, the rest scored
    assert all(r["test_maybe_rate"] is None for r in records.values())
    assert {row["variant"] for row in result["table"]} == {"teacher", "student"}
    assert "wrote" in done.stdout


def test_a_grid_whose_after_names_no_variant_is_refused(synth_dir, tmp_path):
    grid = _grid(tmp_path, {"a": {"recipe": "small-fast", "after": "missing"}})
    argv = [sys.executable, str(GRID), "--grid", str(grid), "--data", str(synth_dir)]
    done = subprocess.run([*argv, "--out", str(tmp_path / "g")], capture_output=True, text=True)
    assert done.returncode == 2 and "['a']" in done.stderr
    assert not (tmp_path / "g").exists()


def test_variants_rank_by_the_val_accuracy_of_the_epoch_each_run_kept():
    grid = load_benchmark("recipe_grid")
    kept_last = {"selected_on": "last", "kept_epoch": 48, "best_value": None, "val_accuracy": 0.93}
    kept_last_old = {"selected_on": "last", "best_epoch": 48, "best_value": 48.0}
    on_val_old = {"selected_on": "val_accuracy", "best_epoch": 30, "best_value": 0.91}
    on_loss_old = {"selected_on": "val_loss", "best_epoch": 30, "best_value": 0.2}
    assert grid._kept_val_accuracy(kept_last) == 0.93
    assert grid._kept_val_accuracy(kept_last_old) is None  # its best_value was the epoch number
    assert grid._kept_val_accuracy(on_val_old) == 0.91  # written before the field existed
    assert grid._kept_val_accuracy(on_loss_old) is None  # a loss is no accuracy
    records = [
        {"variant": "last", "status": "done", "val_accuracy": 0.93},
        {"variant": "last", "status": "done", "val_accuracy": 0.91},
        {"variant": "best", "status": "done", "val_accuracy": 0.915},
        {"variant": "best", "status": "train exit 1", "val_accuracy": None},
    ]
    rows = grid.table(records)
    assert [r["variant"] for r in rows] == ["last", "best"]
    assert rows[0]["val_accuracy"] == pytest.approx(0.92) and rows[1]["runs"] == 1


def test_variants_that_train_on_val_rank_by_their_calib_accuracy():
    grid = load_benchmark("recipe_grid")
    records = [
        {"variant": "fitval", "status": "done", "val_accuracy": None, "calib_accuracy": 0.93},
        {"variant": "shipped", "status": "done", "val_accuracy": 0.95, "calib_accuracy": 0.92},
    ]
    assert [r["variant"] for r in grid.table(records)] == ["shipped", "fitval"]
    rows = grid.table(records, choose_on="calib")
    assert [r["variant"] for r in rows] == ["fitval", "shipped"]
    assert rows[0]["val_accuracy"] is None and rows[0]["calib_accuracy"] == 0.93


def test_variants_rank_by_their_calib_review_rate_fewest_first():
    grid = load_benchmark("recipe_grid")
    records = [
        {"variant": "accurate", "status": "done", "val_accuracy": 0.95, "calib_review_rate": 0.4},
        {"variant": "cheap", "status": "done", "val_accuracy": 0.93, "calib_review_rate": 0.3},
        {"variant": "uncertified", "status": "done", "val_accuracy": 0.96},
    ]
    rows = grid.table(records, choose_on="review")
    assert [r["variant"] for r in rows] == ["cheap", "accurate", "uncertified"]
    assert rows[0]["calib_review_rate"] == 0.3 and rows[2]["calib_review_rate"] is None


@pytest.mark.parametrize("grid", sorted((ROOT / "benchmarks" / "grids").glob("*.yaml")), ids=str)
def test_every_grid_entry_names_a_recipe_and_settings_that_read(grid):
    import yaml

    from pitguard.config import load_config

    for name, spec in yaml.safe_load(grid.read_text())["variants"].items():
        sets = [s.format(seed=0, out="runs/grid") for s in spec.get("set", [])]
        sets = [s for s in sets if not s.startswith("train.teacher=")]  # a run made by the grid
        cfg = load_config(recipe=spec["recipe"], sets=sets)
        assert cfg.recipe == spec["recipe"], name
