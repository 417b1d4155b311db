"""Tests for benchmarks/test_time_views.py: one run's weights read with and without views."""

import hashlib
import json

import numpy as np
import pytest
import torch

from pitguard.core.errors import PitguardError
from pitguard.models.runfolder import RunPaths, load_part, load_run
from tests.conftest import load_benchmark, train_tiny


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_copy_reads_its_views_and_the_run_is_left_alone(tmp_path, capsys):
    sets = ["train.epochs=2", "model.normalize=data"]
    run = train_tiny(tmp_path, "run", count=600, sets=sets, difficulty=0.2)
    (run / "oof.csv").write_text("scores of one view\n")  # stale for a copy reading others
    before = {p.name: _digest(p) for p in RunPaths(run).root.iterdir() if p.is_file()}
    bench = load_benchmark("test_time_views")
    out = tmp_path / "views"
    bound = ["--max-pit-miss", "0.05", "--confidence", "0.9", "--max-false-reject", "0.5"]
    args = [str(run), "--views", "none,d8", "--out", str(out), "--n-boot", "20", *bound]
    assert bench.main(args) == 0
    assert {p.name: _digest(p) for p in RunPaths(run).root.iterdir() if p.is_file()} == before
    result = json.loads((out / "test_time_views.json").read_text())
    rows = {r["views"]: r for r in result["runs"]}
    assert set(rows) == {"none", "d8"}

    original = load_run(run)
    test = load_part(original, None, "test")
    x = test.crops.images.float() / 255
    with torch.no_grad():
        one = original.net.eval()(x)
    temperatures = {}
    for views, row in rows.items():
        copy = load_run(row["copy"])
        assert copy.net.contract.tta == views
        assert not (copy.run / "oof.csv").exists()
        assert "calibration_error" not in row, row.get("calibration_error")
        policy = json.loads(RunPaths(copy.run).policy.read_text())
        assert policy["guarantee"]["max_pit_miss"] == 0.05  # fitted to this copy's own views
        assert policy["model_sha256"] == _digest(RunPaths(run).weights)
        assert 0 <= row["test"]["maybe_rate"] <= 1
        temperatures[views] = policy["policy"]["temperature"]
        assert json.loads(RunPaths(copy.run).config.read_text())["model"]["tta"] == views
        for part in ("val", "calib", "test"):
            assert row[part]["n"] == len(load_part(original, None, part).labels)
    assert temperatures["d8"] != temperatures["none"]  # each calibrated on its own scores
    # the d8 copy scores the test crops with the average of the eight views' logits
    views_net = load_run(rows["d8"]["copy"]).net.eval()
    with torch.no_grad():
        averaged = torch.stack(
            [original.net(torch.rot90(x, -k, dims=(-2, -1))) for k in range(4)]
            + [original.net(torch.rot90(x, -k, dims=(-2, -1)).flip(-1)) for k in range(4)]
        ).mean(0)
        assert torch.allclose(views_net(x), averaged, atol=1e-5)
    labels = np.asarray(test.labels)
    want = float((averaged.argmax(1).numpy() == labels).mean())
    assert rows["d8"]["test"]["accuracy"] == pytest.approx(want)
    assert rows["none"]["test"]["accuracy"] == pytest.approx(
        float((one.argmax(1).numpy() == labels).mean())
    )
    summary = {s["views"]: s for s in result["summary"]}
    gain = rows["d8"]["test"]["accuracy"] - rows["none"]["test"]["accuracy"]
    assert summary["d8"]["test_accuracy_gain"] == pytest.approx(gain)
    assert summary["none"]["test_accuracy_gain"] == 0
    assert "means over 1 run(s)" in capsys.readouterr().out


def test_unknown_views_and_folders_that_are_not_runs_are_refused(tmp_path):
    bench = load_benchmark("test_time_views")
    with pytest.raises(PitguardError, match=r"--views none,d16: choose from none, hflip"):
        bench.main([str(tmp_path), "--views", "none,d16"])
    with pytest.raises(PitguardError, match=r"not run folders: .*give `pitguard train` outputs"):
        bench.main([str(tmp_path)])
