"""Tests for pitguard.decision.calibrate: temperature, the calibrate and thresholds verbs."""

import json

import numpy as np
import pytest
from scipy import special

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.decision.calibrate import calibrate_run, fit_temperature, sweep_run
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import load_policy
from tests.conftest import copy_run, train_tiny


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """An uncalibrated copy of the session run (600 crops: its calib part holds about 60 pits)."""
    return copy_run(trained_run, tmp_path_factory.mktemp("cal") / "run")


def test_refuses_when_calib_has_too_few_pits(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    with pytest.raises(
        PitguardError, match=r"needs at least 299 pits with zero misses for a 1% pit-miss bound"
    ):
        calibrate_run(run, max_pit_miss=0.01, confidence=0.95)
    assert load_policy(run) is None and not (run / "calibration").exists()


def test_calibrate_then_eval_reports_policy(run_copy, capsys):
    assert main(["calibrate", str(run_copy), "--max-pit-miss", "0.05", "--confidence", "0.9"]) == 0
    assert "ECE" in capsys.readouterr().out
    record = json.loads((run_copy / "policy.json").read_text())
    th = record["thresholds"]
    assert th["pit_miss_bound"] <= 0.05 and th["t_low"] <= th["t_high"]
    assert record["calibration_data"]["data"].endswith("[calib]")
    assert record["calibration_data"]["run_part"] == "calib"
    assert (run_copy / "calibration" / "operating_curve.png").is_file()
    assert (run_copy / "calibration" / "reliability.png").is_file()
    policy = load_policy(run_copy)
    assert float(policy.t_low) == pytest.approx(th["t_low"])

    result = evaluate_run(run_copy, policy=policy, n_boot=100)
    pol = result["policy"]
    for key in (
        "pit_miss_rate",
        "pit_miss_ci",
        "maybe_rate",
        "false_reject_rate",
        "accuracy_decided",
    ):
        assert key in pol
    assert sum(pol["routes"].values()) == result["n"]
    lo, hi = pol["pit_miss_ci"]
    assert lo <= pol["pit_miss_rate"] <= hi
    assert pol["pits_routed_clean"] == round(pol["pit_miss_rate"] * pol["n_pits"])


def test_calibration_never_uses_train_val_or_test(run_copy):
    for part in ("train", "val", "test"):
        with pytest.raises(
            PitguardError, match=rf"--split {part}: calibration never uses the train, val or test"
        ):
            calibrate_run(run_copy, part=part)


def test_refuses_a_run_whose_split_has_no_calib_part(tmp_path):
    """A run trained on train/val/test (calib joined training) has nothing held out to calibrate on."""
    run = train_tiny(tmp_path, sets=["data.fractions=train=0.7,val=0.15,test=0.15"])
    assert "calib" not in json.loads((run / "data.json").read_text())["counts"]
    with pytest.raises(
        PitguardError, match=r"its split has no calib part \(parts: test, train, val\)"
    ):
        calibrate_run(run)
    assert load_policy(run) is None
    with pytest.raises(PitguardError, match=r"its split has no calib part"):
        sweep_run(run)
    assert not (run / "thresholds").exists()


def test_threshold_sweep_counts_and_best_f1_under_the_recall_floor():
    from pitguard.decision.calibrate import threshold_sweep

    p = np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.1, 0.3, 0.7])
    is_pit = np.array([True, True, True, True, True, False, False, False])
    sweep = threshold_sweep(p, is_pit, min_recall=0.99, n_points=11)
    at_05 = next(r for r in sweep["rows"] if r["threshold"] == 0.5)
    assert (at_05["tp"], at_05["fp"], at_05["tn"], at_05["fn"]) == (2, 1, 2, 3)
    assert at_05["recall"] == 0.4 and at_05["specificity"] == pytest.approx(2 / 3)
    # Only thresholds <= 0.05 keep every pit: the best F1 among them is at 0.0 (all called pit).
    assert sweep["best"]["threshold"] == 0.0 and sweep["best"]["recall"] == 1.0


def test_thresholds_cli_writes_table_and_json(run_copy, capsys):
    assert main(["thresholds", str(run_copy), "--min-recall", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "best F1 with recall >= 0.9" in out or "no threshold reaches recall 0.9" in out
    sweep = json.loads((run_copy / "thresholds" / "sweep.json").read_text())
    assert len(sweep["rows"]) == 101 and sweep["data"].endswith("[calib]")
    assert (run_copy / "thresholds" / "sweep.png").is_file()


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(7)
    z = rng.normal(scale=2.0, size=(20000, 3))
    probs = special.softmax(z, axis=1)
    labels = (rng.random((z.shape[0], 1)) > probs.cumsum(axis=1)).sum(axis=1)
    t = fit_temperature(z * 3.0, labels)
    assert t == pytest.approx(3.0, rel=0.05)


def test_fit_temperature_rejects_bad_labels():
    with pytest.raises(PitguardError):
        fit_temperature(np.zeros((4, 2)), np.array([0, 1, 2, 0]))


def test_the_expected_guarantee_is_stated_and_routes_no_fewer_crops_clean(run_copy, capsys):
    bound = ["--max-pit-miss", "0.05", "--confidence", "0.9"]
    assert main(["calibrate", str(run_copy), *bound]) == 0
    exact = json.loads((run_copy / "policy.json").read_text())
    assert main(["calibrate", str(run_copy), *bound, "--guarantee", "expected"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run_copy / "policy.json").read_text())
    assert record["guarantee"]["kind"] == "expected" and exact["guarantee"]["kind"] == "exact"
    assert "conformal risk control" in record["guarantee"]["statement"]
    assert "on average" in out and "review rate at a 1% bound" in out
    assert record["policy"]["t_low"] >= exact["policy"]["t_low"]  # a weaker promise
    report = json.loads((run_copy / "calibration" / "policy_report.json").read_text())
    assert len(report["operating_table"]) == 16 and "review_cost" in report
    assert main(["calibrate", str(run_copy), *bound]) == 0  # the module's copy as it was
