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


def _crossfit(alone: dict) -> dict:
    test = {"n": 552, "review": 0.3, "review_ci": [0.26, 0.34], "pits_clean": 1, "n_pits": 255}
    test["pits_clean_ci"] = [0.0001, 0.0217]
    cost = {"review_rate": 0.33, "review_rate_ci": [0.27, 0.37]}
    return {
        "run": "cf",
        "n": 3124,
        "n_pits": 1443,
        "oof_accuracy": [0.915, [0.905, 0.925]],
        "oof_roc_auc": [0.97, [0.96, 0.98]],
        "single": {
            **cost,
            "specificity_at_recall": 0.5,
            "specificity_ci": [0.4, 0.6],
            "test": test,
        },
        "second_looks": {
            "cf2:none": {
                "cascade_review": 0.3,
                "cascade_ci": [0.25, 0.39],
                "paired_diff": -0.027,
                "paired_diff_ci": [-0.064, 0.031],
                "share": 0.387,
                "test": test,
                "model_alone": {**cost, **alone},
            }
        },
    }


def test_crossfit_table_pairs_the_other_model_alone_when_measured():
    doc = _crossfit({"paired_diff": -0.05, "paired_diff_ci": [-0.08, -0.01]})
    doc["second_looks"]["cf2:none"]["model_alone"]["test"] = doc["single"]["test"]
    row = render.crossfit_table(doc).splitlines()[-1]
    assert row.startswith(
        "| `cf2`'s model alone, one stage | 33.0% [27.0%, 37.0%] | -5.0 [-8.0, -1.0] | | "
    )
    assert row.endswith("| 30.0% [26.0%, 34.0%] | 1 of 255 (0.4% [0.0%, 2.2%]) |")
    older = render.crossfit_table(_crossfit({})).splitlines()[-1]  # a file from before pairing
    assert older == "| `cf2`'s model alone, one stage | 33.0% [27.0%, 37.0%] | | | | |"
    cascade = render.crossfit_table(_crossfit({})).splitlines()[-2]
    assert "| -2.7 [-6.4, +3.1] | 38.7% | 30.0% [26.0%, 34.0%] | 1 of 255 (" in cascade


def test_the_committed_pages_are_what_the_script_renders():
    docs = render.load()
    assert docs, "results/ holds no JSON"
    page = (render.RESULTS / "README.md").read_text()
    assert page == render.render_page(docs), "run benchmarks/render_results.py"
    readme = (render.ROOT / "README.md").read_text()
    assert render.BEGIN in readme and render.END in readme
    assert readme == render.render_readme_block(docs, readme), "run benchmarks/render_results.py"
