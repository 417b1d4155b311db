"""A second look by another run's model: certified, evaluated, exported and routed alike, and
refused where that model saw the crops it scores or changed since calibration."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json
from pitguard.data.manifest import read_manifest, write_manifest
from pitguard.decision.calibrate import calibrate_run, fit_temperature
from pitguard.decision.cascade import cascade_routes
from pitguard.deploy.export import export_run
from pitguard.deploy.predict import Predictor
from pitguard.evaluate.oof import read_oof
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import RunPaths, load_part, load_policy, load_run, view_logits
from pitguard.runtime.bundle import SECOND_LOOK_WEIGHTS, write_bundle_json
from pitguard.runtime.classifier import Classifier
from pitguard.runtime.policy import DecisionPolicy
from tests.conftest import (
    CROSSFIT_FOLDS,
    CROSSFIT_SETS,
    SESSION_CONFIDENCE,
    SESSION_MAX_PIT_MISS,
    SESSION_RUN_SETS,
    copy_run,
)

CAP = "0.2"  # the false-reject cap these cascades are calibrated with


def _train_on_split(run, out, sets, folds: int = 0):
    """pitguard_tiny trained on ``run``'s own split (its parts kept), with another seed."""
    from pitguard.config import load_config
    from pitguard.train.crossfit import crossfit
    from pitguard.train.loop import train

    base = ["model.name=pitguard_tiny", "train.threads=1", "train.max_minutes=0", "train.seed=1"]
    data = {"data.path": str(RunPaths(run).split)}
    cfg = load_config("small-fast", sets=[*base, *sets], extra=data)
    crossfit(cfg, out, folds) if folds else train(cfg, out)
    return out


@pytest.fixture(scope="module")
def second_run(trained_run, tmp_path_factory):
    """Another pitguard_tiny trained on ``trained_run``'s split."""
    out = tmp_path_factory.mktemp("second") / "run2"
    return _train_on_split(trained_run, out, SESSION_RUN_SETS)


def _calibrate(run, run2) -> list[str]:
    argv = ["calibrate", str(run), "--max-pit-miss", str(SESSION_MAX_PIT_MISS)]
    argv += ["--confidence", str(SESSION_CONFIDENCE), "--max-false-reject", CAP]
    return [*argv, "--second-look-model", str(run2)]


@pytest.fixture(scope="module")
def model_cascade(calibrated_run, second_run, tmp_path_factory):
    run = copy_run(calibrated_run, tmp_path_factory.mktemp("model-cascade") / "run")
    assert main(_calibrate(run, second_run)) == 0
    return run


def test_the_second_stage_is_the_other_runs_model_on_the_calibration_crops(
    model_cascade, second_run
):
    record = read_json(RunPaths(model_cascade).policy)
    look = record["second_look"]
    assert look["views"] == "none" and look["model"]["run"] == str(second_run.resolve())
    assert look["model"]["model_name"] == "pitguard_tiny"
    assert "another run's model (pitguard_tiny)" in look["statement"]
    # the certified routes are those of stage 1 and the second run's own calibrated scores
    first, other = load_run(model_cascade), load_run(second_run)
    ev = load_part(first, None, "calib")
    y = ev.labels
    z1 = view_logits(first.net, ev.crops.images, "none").double().numpy()
    z2 = view_logits(other.net, ev.crops.images, "none").double().numpy()
    assert not np.allclose(z1, z2)  # another network, not the first stage scored twice
    with torch.no_grad():
        p1 = DecisionPolicy.from_dict(record["policy"])(torch.from_numpy(z1).float())[0].numpy()
    p2 = torch.softmax(torch.from_numpy(z2 / fit_temperature(z2, y)).float(), 1)[:, 1].numpy()
    th = look["thresholds"]
    routes = cascade_routes(p1, p2, th["t_low"], th["t_high"])
    assert [int((routes == r).sum()) for r in range(3)] == list(look["calib_routes"].values())
    assert th["pit_miss_bound"] <= SESSION_MAX_PIT_MISS


def test_eval_export_and_runtime_route_the_other_models_cascade_alike(model_cascade, tmp_path):
    result = evaluate_run(
        model_cascade,
        policy=load_policy(model_cascade),
        calibration=read_json(RunPaths(model_cascade).policy),
        n_boot=20,
    )
    look = result["policy"]["second_look"]
    assert look["model"] == "pitguard_tiny" and 0 < look["n_second"] <= result["n"]
    lines = (RunPaths(model_cascade).evals / "test" / "predictions.csv").read_text().splitlines()
    want = np.array([line.split(",")[4] for line in lines[1:]])

    out = tmp_path / "bundle"
    export_run(model_cascade, out, onnx=True)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["files"][SECOND_LOOK_WEIGHTS] == "model.second_look.safetensors"
    assert meta["second_look"]["model"]["model_name"] == "pitguard_tiny"
    assert meta["second_look"]["parity"]["route_mismatches"] == 0
    crops = load_part(load_run(model_cascade), None, "test").crops.images.numpy()
    got = Classifier(out, "onnx", "cpu").classify(crops)
    assert np.array_equal(got.routes, want)
    assert int(got.second_look.sum()) == look["n_second"]
    eager = Predictor(out, "eager", "cpu").predict(crops)
    assert np.array_equal(np.array(eager.routes), want)


def test_a_bundle_whose_second_model_was_swapped_or_restated_is_refused(model_cascade, tmp_path):
    out = tmp_path / "bundle"
    export_run(model_cascade, out)
    meta = json.loads((out / "bundle.json").read_text())
    weights = out / meta["files"][SECOND_LOOK_WEIGHTS]
    state = load_file(str(weights))
    weights.chmod(0o644)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    del meta["sha256"]
    write_bundle_json(out, meta)  # the digests match the swapped file: the stamp must catch it
    with pytest.raises(PitguardError, match="second look's weights"):
        Predictor(out, "eager", "cpu")
    meta["second_look"]["model"]["model_kwargs"]["num_classes"] = 3
    write_bundle_json(out, meta)
    with pytest.raises(PitguardError, match="second_look differs"):
        Predictor(out, "eager", "cpu")


def _calibrate_with_second(run, run2) -> None:
    calibrate_run(
        run,
        max_pit_miss=SESSION_MAX_PIT_MISS,
        confidence=SESSION_CONFIDENCE,
        max_false_reject=0.2,
        second_look_model=run2,
    )


def test_a_second_model_that_trained_on_the_calibration_crops_is_refused(
    calibrated_run, second_run, tmp_path
):
    run = copy_run(calibrated_run, tmp_path / "run")
    seen = copy_run(second_run, tmp_path / "seen")
    rows = [  # as if it had trained on the calib part
        replace(row, split="train") if row.split == "calib" else row
        for row in read_manifest(RunPaths(seen).split)
    ]
    write_manifest(RunPaths(seen).split, rows)
    before = RunPaths(run).policy.read_bytes()
    with pytest.raises(PitguardError, match=r"trained on \d+ of the \d+ calibration crops"):
        _calibrate_with_second(run, seen)
    assert RunPaths(run).policy.read_bytes() == before  # stopped before writing


def test_a_second_model_trained_on_copies_of_the_calibration_crops_is_refused(
    calibrated_run, second_run, tmp_path
):
    """Byte-identical copies in another folder are the same crops: the check reads contents."""
    run = copy_run(calibrated_run, tmp_path / "run")
    seen = copy_run(second_run, tmp_path / "seen")
    copies = tmp_path / "copies"
    copies.mkdir()
    rows = []
    for i, row in enumerate(read_manifest(RunPaths(seen).split)):
        copy = copies / f"{i:05d}{row.path.suffix}"
        shutil.copyfile(row.path, copy)
        rows.append(replace(row, path=copy, split="train" if row.split == "calib" else row.split))
    write_manifest(RunPaths(seen).split, rows)
    with pytest.raises(
        PitguardError, match=r"trained on \d+ of the \d+ calibration crops \(the same"
    ):
        _calibrate_with_second(run, seen)


def test_a_second_model_changed_since_calibration_is_refused(calibrated_run, second_run, tmp_path):
    run = copy_run(calibrated_run, tmp_path / "run")
    run2 = copy_run(second_run, tmp_path / "run2")
    assert main(_calibrate(run, run2)) == 0
    shutil.copy(RunPaths(calibrated_run).weights, RunPaths(run2).weights)  # trained again
    calibration = read_json(RunPaths(run).policy)
    with pytest.raises(PitguardError, match="changed since the cascade was calibrated"):
        evaluate_run(run, policy=load_policy(run), calibration=calibration, n_boot=5)
    with pytest.raises(PitguardError, match="changed since the cascade was calibrated"):
        export_run(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    shutil.rmtree(run2)
    with pytest.raises(PitguardError, match="second look's model is gone"):
        export_run(run, tmp_path / "bundle")


def test_a_crossfitted_run_takes_the_other_models_scores_out_of_fold(
    crossfit_run, second_run, tmp_path
):
    run = copy_run(crossfit_run, tmp_path / "cf")
    bound = {"max_pit_miss": 0.05, "confidence": 0.9, "max_false_reject": 0.2}
    with pytest.raises(PitguardError, match="no fold models"):
        calibrate_run(run, **bound, second_look_model=second_run)
    run2 = _train_on_split(run, tmp_path / "cf2", CROSSFIT_SETS, CROSSFIT_FOLDS)
    record = calibrate_run(run, **bound, second_look="hflip", second_look_model=run2)
    look = record["second_look"]
    assert record["mode"] == "oof" and look["views"] == "hflip"
    oof = read_oof(run)
    assert look["thresholds"]["n_pits"] == int((oof.labels == oof.pit_index).sum())
    assert look["model"]["run"] == str(run2.resolve())
