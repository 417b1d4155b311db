"""Tests for pitguard.evaluate.compare: paired comparison of runs on the same crops."""

import pytest

from pitguard.core.errors import PitguardError
from pitguard.evaluate.compare import compare_runs, format_comparison, same_split
from tests.conftest import train_tiny


def test_runs_of_one_split_are_compared_pair_by_pair(trained_run, calibrated_run):
    assert same_split([trained_run, calibrated_run])
    result = compare_runs([trained_run, calibrated_run], n_boot=100)
    (row,) = result["comparisons"]
    # the calibrated copy holds the same weights: every crop agrees, so nothing is beyond noise
    assert row["accuracy_run"] == row["accuracy_baseline"]
    assert row["mcnemar"]["a_only_correct"] == row["mcnemar"]["b_only_correct"] == 0
    assert row["verdict"] == "within noise"
    assert row["maybe_rate_diff"] is None and "same guarantee" in row["maybe_note"]
    assert "within noise" in format_comparison(result)


def test_runs_of_different_splits_need_common_data(trained_run, tmp_path):
    other = train_tiny(tmp_path, count=120, seed=9)
    assert not same_split([trained_run, other])
    with pytest.raises(PitguardError, match=r"trained on different splits"):
        compare_runs([trained_run, other])
    with pytest.raises(PitguardError, match=r"at least two runs"):
        compare_runs([trained_run])
