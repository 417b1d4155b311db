"""Tests for benchmarks/error_overlap.py: shared errors and the ensemble of runs on one split."""

import json
from pathlib import Path

import numpy as np
import pytest

from pitguard.cli import main as pitguard
from tests.conftest import load_benchmark, train_tiny


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("overlap")
    a = train_tiny(root, "a", sets=["train.seed=1"])
    b = train_tiny(root, "b", sets=["train.seed=2", "train.epochs=2"])
    other = train_tiny(root, "other", sets=["data.split_seed=5"])
    return a, b, other


def test_errors_and_their_overlap_are_counted_per_crop(two_runs, tmp_path):
    a, b, _ = two_runs
    overlap = load_benchmark("error_overlap").overlap
    result = overlap([a, b], "test", n_boot=50)
    n = result["n"]
    for run, model in zip((a, b), result["models"], strict=True):
        assert (
            pitguard(["eval", str(run), "--json", str(tmp_path / "e.json"), "--n-boot", "20"]) == 0
        )
        evaluated = json.loads((tmp_path / "e.json").read_text())
        assert np.isclose(model["accuracy"], evaluated["accuracy"])  # the same argmax as eval
        assert model["errors"] == round(n * (1 - evaluated["accuracy"]))
    errors = [m["errors"] for m in result["models"]]
    assert min(errors) > 0  # a model that errs, so the overlap counts something
    assert result["wrong_in_all"] <= min(errors) <= max(errors) <= result["wrong_in_any"]
    # inclusion-exclusion for two models: any = a + b - both; exactly one = any - both
    assert result["wrong_in_any"] == sum(errors) - result["wrong_in_all"]
    assert result["wrong_in_exactly_one"] == result["wrong_in_any"] - result["wrong_in_all"]
    assert len(result["crops_wrong_in_all"]) == result["wrong_in_all"]
    # one model twice: every error is shared, and the average is the model itself
    same = overlap([a, a], "test", n_boot=50)
    e = same["models"][0]["errors"]
    assert same["wrong_in_all"] == same["wrong_in_any"] == same["ensemble"]["errors"] == e
    assert same["wrong_in_exactly_one"] == 0


def test_runs_of_another_split_are_refused_by_name(two_runs, tmp_path, capsys):
    a, _, other = two_runs
    module = load_benchmark("error_overlap")
    with pytest.raises(SystemExit, match=rf"{other}: its test part differs from {a}'s"):
        module.main([str(a), str(other), "--json", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(SystemExit, match=r"at least two run folders"):
        module.main([str(a)])


def test_the_table_and_json_are_written(two_runs, tmp_path, capsys):
    a, b, _ = two_runs
    assert (
        load_benchmark("error_overlap").main(
            [str(a), str(b), "--n-boot", "20", "--json", str(tmp_path / "o.json")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "ensemble (mean probability)" in out and "wrong in all 2 models" in out
    written = json.loads((tmp_path / "o.json").read_text())
    assert written["runs"] == [str(a), str(b)] and written["part"] == "test"
