"""results/README.md and the README's results table are what the script renders from results/."""

from __future__ import annotations

import math

import pytest

from tests.conftest import load_benchmark

render = load_benchmark("render_results")


def _record(variant: str, seed: int, acc: float, review: float, missed: int = 1) -> dict:
    return {
        "variant": variant,
        "split_seed": seed,
        "status": "done",
        "n_test": 552,
        "test_n_pits": 255,
        "test_accuracy": acc,
        "test_roc_auc": 0.97,
        "calib_review_rate": review,
        "test_maybe_rate": review,
        "test_pits_routed_clean": missed,
        "train_seconds": 600.0,
    }


def test_t_interval_over_three_seeds():
    mean, lo, hi = render.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert mean == 2.0
    assert lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert render.t_interval([1.0]) is None


def test_grid_table_shows_means_intervals_and_pooled_misses():
    grid = {"records": [_record("base", s, 0.90 + s / 100, 0.5) for s in range(3)]}
    grid["records"].append({"variant": "base", "split_seed": 9, "status": "train exit 1"})
    table = render.grid_table(grid)
    row = table.splitlines()[2]
    assert row.startswith("| `base` | 0,1,2 | 91.00 [")  # the failed seed 9 is not counted
    assert "3 of 765 (0.39% [0.08, 1.14])" in row
    assert row.endswith("| 10.0 |")


def test_paired_differences_are_taken_seed_by_seed():
    records = [_record("base", s, 0.90 + s / 100, 0.50) for s in range(3)]
    records += [_record("focal", s, 0.91 + s / 100, 0.40 + s / 100) for s in range(2)]
    table = render.paired_table({"records": records})
    row = table.splitlines()[2]
    assert row.startswith("| `focal` - `base` | 0,1 | +1.00 [+1.00, +1.00]")  # same gain twice


def test_the_committed_pages_are_what_the_script_renders():
    docs = render.load()
    assert docs, "results/ holds no JSON"
    page = (render.RESULTS / "README.md").read_text()
    assert page == render.render_page(docs), "run benchmarks/render_results.py"
    readme = (render.ROOT / "README.md").read_text()
    assert render.BEGIN in readme and render.END in readme
    assert readme == render.render_readme_block(docs, readme), "run benchmarks/render_results.py"
