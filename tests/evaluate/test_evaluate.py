"""Tests for pitguard.evaluate.run: metrics with intervals, predictions and figures per data part."""

import csv
import json

from pitguard.cli import main
from pitguard.evaluate.run import evaluate_run, format_report
from pitguard.models.runfolder import EVAL_METRICS, EVAL_PREDICTIONS, RunPaths, load_policy
from tests.conftest import copy_run


def test_a_calibrated_run_is_measured_on_its_own_test_part(calibrated_run, tmp_path):
    run = copy_run(calibrated_run, tmp_path / "run")
    result = evaluate_run(run, policy=load_policy(run), n_boot=100)
    assert (result["source"], result["part"]) == (str(RunPaths(run).split), "test")
    assert result["data"] == f"{result['source']} [test]"
    saved = json.loads(
        (RunPaths(run).evals / result["outputs"].rsplit("/", 1)[1] / EVAL_METRICS).read_text()
    )
    assert saved["part"] == "test" and saved["n"] == result["n"]
    with open(RunPaths(run).eval_metrics()[0].parent / EVAL_PREDICTIONS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result["n"] and {r["route"] for r in rows} <= {"clean", "maybe", "pit"}
    routes = result["policy"]["routes"]
    assert sum(routes.values()) == result["n"]
    assert routes == {k: sum(r["route"] == k for r in rows) for k in routes}
    text = format_report(result)
    assert "calibrated decision (holdout calibration; exact 95% intervals)" in text
    assert "maybe rate" in text and "input guard: " in text


def test_eval_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no model.json" in capsys.readouterr().err


def test_evaluation_folders_are_named_by_part_and_data(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    own = evaluate_run(run, n_boot=20)
    assert own["outputs"] == str(RunPaths(run).evals / "test")
    other = evaluate_run(run, data=trained_run.parent / "crops", n_boot=20)
    assert other["outputs"] == str(RunPaths(run).evals / "crops-all")


def test_the_plain_summary_counts_per_ten_thousand_crops():
    from pitguard.evaluate.run import plain_summary

    pol = {
        "n": 1000,
        "n_pits": 400,
        "maybe_rate": 0.25,
        "pit_miss_rate": 0.005,
        "pit_miss_upper": 0.012,
        "false_reject_rate": 0.02,
    }
    text = plain_summary(pol)
    assert text.startswith(
        "Of 10,000 crops like these (pit share 40.0%, the test part's): 2,500 go to review;"
    )
    assert "about 20 pits pass as clean (at most 48 with 95% confidence)" in text
    assert "about 120 clean cherries are rejected" in text


def test_the_plain_summary_counts_at_a_given_pit_share_and_says_so():
    from pitguard.evaluate.run import plain_summary

    pol = {
        "n": 1000,
        "n_pits": 400,
        "maybe_rate": 0.25,
        "pit_miss_rate": 0.005,
        "pit_miss_upper": 0.012,
        "false_reject_rate": 0.02,
    }
    text = plain_summary(pol, pit_share=0.04)
    assert text.startswith("Of 10,000 crops like these (pit share 4.0%, given): 2,500 go to review")
    # 400 pits on the line: 0.5% of them pass as clean, at most 1.2%; 9,600 clean at 2%
    assert "about 2 pits pass as clean (at most 5 with 95% confidence)" in text
    assert "about 192 clean cherries are rejected" in text
    assert "(pit share 40.0%, the val part's)" in plain_summary(pol, part="val")
