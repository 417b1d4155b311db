"""What was certified is what ships: the bundle scores and routes every crop as the calibrated
model that `calibrate` certified and `eval` measured, each graph carries a guarantee established
on its own scores, and the bundle proves its input guard as it proves its thresholds."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import pitguard
from pitguard.core.errors import PitguardError
from pitguard.decision.calibrate import calibrate_run
from pitguard.deploy.bundle import DeployModule
from pitguard.deploy.export import export_run
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import load_policy, load_run
from tests.conftest import (
    SESSION_CONFIDENCE,
    SESSION_MAX_PIT_MISS,
    copy_run,
    random_crop,
    train_tiny,
)


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


@pytest.mark.parametrize("part", ["test", "calib"])
def test_eval_and_the_bundle_route_every_crop_alike_with_one_p_pit(
    calibrated_run, bundle, tmp_path, part
):
    run = copy_run(calibrated_run, tmp_path / "run")
    result = evaluate_run(run, part=part, policy=load_policy(run), n_boot=10)
    evaluated = _rows(Path(result["outputs"]) / "predictions.csv")
    predicted = pitguard.load(bundle, backend="onnx").predict(list(evaluated))
    p_eval = np.array([float(r["p_pit"]) for r in evaluated.values()])
    assert np.abs(predicted.p_pit - p_eval).max() <= 1e-4  # eval's p_pit is the calibrated one
    assert predicted.routes == [r["route"] for r in evaluated.values()]
    # the routes follow from that p_pit and the bundle's thresholds
    policy = json.loads((bundle / "bundle.json").read_text())["policy"]
    clean = [r == "clean" for r in predicted.routes]
    assert clean == [bool(p < policy["t_low"]) for p in predicted.p_pit]


def test_the_graph_computes_the_calibrated_model_at_the_border_too(calibrated_run, bundle):
    """Crops with content up to the edge: the first convolution's padding sees what it saw in
    training (normalization folded into it used to change border scores)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (8, 3, 128, 128), dtype=np.uint8)).float() / 255
    run = load_run(calibrated_run)
    with torch.no_grad():
        want = DeployModule(run.net, load_policy(calibrated_run)).eval()(x)[0].numpy()
        eager = pitguard.load(bundle, backend="eager").module(x)[0].numpy()
    graph = pitguard.load(bundle, backend="onnx").session.run(None, {"crops": x.numpy()})[0]
    assert np.abs(graph - want).max() < 1e-4
    assert np.abs(eager - want).max() < 1e-5


def test_an_fp16_graph_loads_predicts_and_holds_thresholds_certified_on_its_scores(
    calibrated_run, tmp_path
):
    meta = export_run(calibrated_run, tmp_path / "b", onnx=True, fp16=True)
    own = meta["fp16"]["guarantee"]
    assert own["established_on"].startswith("model.fp16.onnx's own scores of ")
    assert own["pit_miss_bound"] <= SESSION_MAX_PIT_MISS
    held = meta["fp16"]["policy"]
    assert np.float16(held["t_low"]) == held["t_low"]  # what the graph holds, in its precision
    predictor = pitguard.load(tmp_path / "b", backend="onnx-fp16")
    crops = np.stack([random_crop(s) for s in range(6)]).transpose(0, 3, 1, 2).copy()
    out = predictor.predict_uint8(crops)
    assert len(out.routes) == 6 and np.all((out.p_pit >= 0) & (out.p_pit <= 1))
    clean = np.array([r == "clean" for r in out.routes])
    guarded = np.array([bool(r) for r in out.reasons])
    assert np.array_equal(clean, (out.p_pit < held["t_low"]) & ~guarded)


def test_the_cli_exports_and_predicts_with_an_fp16_graph(calibrated_run, tmp_path):
    from pitguard.cli import main

    out = tmp_path / "b"
    assert main(["export", str(calibrated_run), "--out", str(out), "--onnx", "--fp16"]) == 0
    crops = tmp_path / "crops"
    crops.mkdir()
    from PIL import Image

    for s in range(3):
        Image.fromarray(random_crop(s)).save(crops / f"c{s}.png")
    csv_out = tmp_path / "p.csv"
    args = ["predict", str(out), str(crops), "--out", str(csv_out), "--backend", "onnx-fp16"]
    assert main(args) == 0
    assert len(_rows(csv_out)) == 3


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["input_guard"].update(threshold=1e9),
        lambda m: m.update(input_guard=None),
        lambda m: m.pop("input_guard"),
    ],
)
@pytest.mark.parametrize("backend", ["onnx", "eager"])
def test_an_edited_or_removed_input_guard_is_refused(bundle, tmp_path, change, backend):
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    meta = json.loads((copy / "bundle.json").read_text())
    assert meta["input_guard"]["threshold"] > 0
    change(meta)
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(PitguardError, match="input_guard differs from the guard exported with"):
        pitguard.load(copy, backend=backend)


def test_every_bundle_file_is_readable_by_other_users_under_a_strict_umask(
    calibrated_run, tmp_path
):
    old = os.umask(0o077)
    try:
        export_run(calibrated_run, tmp_path / "b", onnx=True)
    finally:
        os.umask(old)
    folder = tmp_path / "b"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_full_disk_names_the_bundle_and_leaves_nothing(calibrated_run, tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as caught:
        export_run(calibrated_run, tmp_path / "b", onnx=True)
    assert caught.value.filename == str(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory) -> Path:
    """pitguard_tiny stopped after 1 of 2 planned epochs, as an interrupted run is."""
    from pitguard.config import load_config
    from pitguard.data.synth import synthesize
    from pitguard.train.loop import train

    root = tmp_path_factory.mktemp("unfinished")
    synthesize(root / "crops", count=600, seed=5, difficulty=0.2)
    sets = ["model.name=pitguard_tiny", "train.epochs=2", "train.threads=1", "train.max_minutes=0"]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(root / "crops")})
    train(cfg, root / "run", stop_after=1)
    return root / "run"


def test_an_unfinished_run_is_neither_calibrated_nor_exported_without_the_flag(
    unfinished_run, tmp_path
):
    run = copy_run(unfinished_run, tmp_path / "run")
    bound = {"max_pit_miss": SESSION_MAX_PIT_MISS, "confidence": SESSION_CONFIDENCE}
    with pytest.raises(PitguardError, match=r"training is unfinished \(1 of 2 planned epochs"):
        calibrate_run(run, **bound)
    assert not (run / "policy.json").exists()
    record = calibrate_run(run, allow_unfinished=True, **bound)
    assert record["training"]["finished"] is False
    with pytest.raises(PitguardError, match=r"--allow-unfinished"):
        export_run(run, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    meta = export_run(run, tmp_path / "b", allow_unfinished=True)
    assert meta["training"]["finished"] is False
    assert "1 of 2 planned epochs" in meta["training"]["unfinished"]


def test_an_interrupted_run_without_a_summary_is_unfinished(unfinished_run, tmp_path):
    run = copy_run(unfinished_run, tmp_path / "run")
    (run / "train_summary.json").unlink()  # killed before the end: no summary written
    with pytest.raises(PitguardError, match=r"stopped after epoch 1 and never finished"):
        export_run(run, tmp_path / "b", allow_uncalibrated=True)


def test_a_finished_run_exports_without_the_flag(tmp_path):
    run = train_tiny(tmp_path)  # one epoch planned, one done
    meta = export_run(run, tmp_path / "b", allow_uncalibrated=True)
    assert meta["training"] == {"finished": True, "unfinished": None}
