"""The second look: a cascade certified on its own output, the same in eval, export and runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json
from pitguard.core.stats import cp_upper
from pitguard.decision.calibrate import calibrate_run
from pitguard.decision.cascade import (
    SECOND_LOOK_VIEWS,
    cascade_routes,
    certify_cascade,
    check_views,
    oof_view_logits,
)
from pitguard.deploy.export import export_run
from pitguard.deploy.predict import Predictor
from pitguard.evaluate.oof import read_oof
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import RunPaths, load_part, load_policy, load_run, view_logits
from pitguard.runtime.classifier import Classifier
from pitguard.runtime.policy import Route, route
from tests.conftest import (
    SESSION_CONFIDENCE,
    SESSION_MAX_PIT_MISS,
    copy_run,
    load_benchmark,
)

BOUND = {"max_pit_miss": SESSION_MAX_PIT_MISS, "confidence": SESSION_CONFIDENCE}


def test_the_cascade_is_certified_on_both_stages_misses():
    rng = np.random.default_rng(0)
    is_pit = np.arange(2000) < 900
    p1 = np.where(is_pit, rng.beta(5, 2, 2000), rng.beta(2, 5, 2000)).astype(np.float32)
    p2 = np.clip(p1 + np.where(is_pit, 0.15, -0.15) + rng.normal(0, 0.05, 2000), 0, 1)
    p2 = p2.astype(np.float32)
    cascade, alone = certify_cascade(p1, p2, is_pit, 0.02, 0.95, 0.05)
    t_low, t_high = cascade.t_low, cascade.t_high
    assert (alone.t_low, alone.t_high) == (t_low, t_high) and t_low <= t_high
    final = cascade_routes(p1, p2, t_low, t_high)
    r1 = route(p1, t_low, t_high)
    assert np.array_equal(final[r1 != 1], r1[r1 != 1])  # outside the band stage 1 decides
    assert np.array_equal(final[r1 == 1], route(p2[r1 == 1], t_low, t_high))
    misses = int((is_pit & (final == int(Route.CLEAN))).sum())
    assert misses == cascade.calib_pit_misses >= alone.calib_pit_misses  # both stages counted
    assert cascade.pit_miss_bound <= 0.02 and alone.pit_miss_bound <= 0.02
    # t_low is the highest the pits allow: one step up would break the bound
    low = np.minimum(p1, np.where(p1 < np.float32(t_high), p2, np.float32(1)))
    above = np.sort(low[is_pit])[misses]  # the next pit the clean side would take
    k_max = int((cp_upper(np.arange(900), 900, 0.95) <= 0.02).sum()) - 1
    assert misses == k_max or t_low == t_high or above >= t_high
    # t_high is certified on the clean crops, counting any either stage could route pit
    rejects = int((~is_pit & (np.maximum(p1, p2) >= np.float32(t_high))).sum())
    assert cascade.false_reject_bound == pytest.approx(float(cp_upper(rejects, 1100, 0.95)))
    assert cascade.false_reject_bound <= 0.05
    # a sharper second look sends fewer of the crops in doubt to review
    assert cascade.calib_maybe_rate < alone.calib_maybe_rate
    with pytest.raises(PitguardError, match="needs --max-false-reject"):
        certify_cascade(p1, p2, is_pit, 0.02, 0.95, None)


def test_the_cascades_bound_holds_on_fresh_crops_in_simulation():
    bench = load_benchmark("cascade_coverage")
    sim = bench.simulate(draws=60, n=2000, bound=0.02, confidence=0.9)
    # at most 10% of calibrations may break a bound held at 90%: 60 draws, allow sampling noise
    assert sim["broken"] <= 12
    assert sim["mean_maybe_rate"] < sim["mean_single_stage_maybe_rate"]


def test_a_second_look_with_unknown_views_is_refused_before_any_work(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    with pytest.raises(PitguardError, match=r"second look 'd4': choose hflip, rot4, d8"):
        calibrate_run(run, second_look="d4", max_false_reject=0.2, **BOUND)
    with pytest.raises(PitguardError, match="--second-look needs --max-false-reject"):
        calibrate_run(run, second_look="d8", **BOUND)
    assert not RunPaths(run).policy.exists()
    with pytest.raises(PitguardError, match="choose hflip"):
        check_views("none")
    with pytest.raises(SystemExit):  # the verb offers exactly the views the cascade knows
        main(["calibrate", str(run), "--second-look", "d4"])
    assert SECOND_LOOK_VIEWS == ("hflip", "rot4", "d8")


def test_the_recipes_second_look_is_the_default_and_none_turns_it_off(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    meta = json.loads((run / "model.json").read_text())
    meta["config"]["model"]["second_look"] = "hflip"  # as a recipe with model.second_look sets it
    (run / "model.json").write_text(json.dumps(meta))
    record = calibrate_run(run, max_false_reject=0.2, **BOUND)
    assert record["second_look"]["views"] == "hflip"
    assert "second_look" not in calibrate_run(
        run, max_false_reject=0.2, second_look="none", **BOUND
    )
    # without a false-reject cap the recipe's second look cannot be certified: one stage
    assert "second_look" not in calibrate_run(run, **BOUND)
    assert "second_look" not in read_json(RunPaths(run).policy)


def test_view_logits_average_the_views_of_each_crop(trained_run):
    run = load_run(trained_run)
    images = load_part(run, None, "calib").crops.images[:6]
    got = view_logits(run.net, images, "hflip")
    run.net.eval()
    with torch.no_grad():
        x = images.float() / 255
        want = (run.net(x) + run.net(x.flip(-1))) / 2
    assert torch.allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def cascade_run(calibrated_run, tmp_path_factory):
    run = copy_run(calibrated_run, tmp_path_factory.mktemp("cascade") / "run")
    argv = ["calibrate", str(run), "--max-pit-miss", str(SESSION_MAX_PIT_MISS)]
    argv += ["--confidence", str(SESSION_CONFIDENCE), "--second-look", "d8"]
    argv += ["--max-false-reject", "0.2"]
    assert main(argv) == 0
    return run


def test_calibrate_records_the_cascade_and_what_its_first_stage_certifies_alone(
    cascade_run, calibrated_run
):
    record = read_json(RunPaths(cascade_run).policy)
    plain = read_json(RunPaths(calibrated_run).policy)
    look = record["second_look"]
    th, alone = look["thresholds"], record["thresholds"]
    # both stages route by one pair of thresholds, each with its own temperature
    for key in ("t_low", "t_high"):
        assert record["policy"][key] == look["policy"][key] == th[key] == alone[key]
    assert record["policy"]["temperature"] == plain["policy"]["temperature"]
    single = look["without_second_look"]  # the single-stage policy at the same bounds
    assert single["pit_miss_bound"] <= SESSION_MAX_PIT_MISS and single["false_reject_bound"] <= 0.2
    assert th["pit_miss_bound"] <= SESSION_MAX_PIT_MISS >= alone["pit_miss_bound"]
    assert th["false_reject_bound"] <= 0.2  # the cap the fixture calibrates with
    n = record["calibration_data"]["n"]
    assert (
        look["n_second"] == record["calib_routes"]["maybe"]
        and look["share"] == look["n_second"] / n
    )
    assert sum(look["calib_routes"].values()) == n
    assert look["calib_routes"]["maybe"] <= record["calib_routes"]["maybe"]
    assert "cascade" in record["guarantee"] and "either stage" in record["guarantee"]["cascade"]


def test_eval_export_and_runtime_route_the_cascade_alike(cascade_run, tmp_path):
    result = evaluate_run(
        cascade_run,
        policy=load_policy(cascade_run),
        calibration=read_json(RunPaths(cascade_run).policy),
        n_boot=20,
    )
    look = result["policy"]["second_look"]
    assert look["views"] == "d8" and 0 < look["n_second"] <= result["n"]
    lines = (RunPaths(cascade_run).evals / "test" / "predictions.csv").read_text().splitlines()
    want = np.array([line.split(",")[4] for line in lines[1:]])
    assert sum(result["policy"]["routes"].values()) == len(want)

    out = tmp_path / "bundle"
    export_run(cascade_run, out, onnx=True)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["files"]["onnx_second_look"] == "model.second_look.onnx"
    assert meta["second_look"]["parity"]["route_mismatches"] == 0
    crops = load_part(load_run(cascade_run), None, "test").crops.images.numpy()
    graphs = Classifier(out, "onnx", "cpu")
    got = graphs.classify(crops)
    assert np.array_equal(got.routes, want)  # the bundle routes as eval measured
    assert int(got.second_look.sum()) == look["n_second"]
    eager = Predictor(out, "eager", "cpu").predict(crops)
    assert np.array_equal(np.array(eager.routes), want)
    alone = Classifier(out, "onnx", "cpu", second_look=False).classify(crops)
    assert alone.second_look is None
    changed = alone.routes != got.routes
    assert (alone.routes[changed] == "maybe").all()  # the second look only settles crops in doubt
    assert (alone.routes == "maybe").sum() >= (got.routes == "maybe").sum()


def test_a_bundle_whose_second_look_was_edited_is_refused(cascade_run, tmp_path):
    out = tmp_path / "bundle"
    export_run(cascade_run, out, onnx=True)
    meta = json.loads((out / "bundle.json").read_text())
    meta["second_look"]["policy"]["t_low"] = 0.9
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(PitguardError, match="second_look differs from the one exported"):
        Predictor(out, "eager", "cpu")
    del meta["second_look"]  # removing it would quietly drop the second stage
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(PitguardError, match="second_look differs"):
        Classifier(out, "onnx", "cpu")


def test_a_second_look_ships_in_float32_only(cascade_run, tmp_path):
    with pytest.raises(PitguardError, match=r"second look, which ships in float32 only.*--int8"):
        export_run(cascade_run, tmp_path / "b", onnx=True, int8=True)
    assert not (tmp_path / "b").exists()


def test_a_crossfitted_run_takes_its_second_look_out_of_fold(crossfit_run, tmp_path):
    run = copy_run(crossfit_run, tmp_path / "cf")
    oof = read_oof(run)
    z = oof_view_logits(run, oof.paths, "hflip")
    assert z.shape == oof.logits.shape and np.isfinite(z).all()
    # each row is its own fold model's: the first crop of fold 2, scored by fold 2's model
    row = int(np.flatnonzero(oof.folds == 2)[0])
    fold = load_run(RunPaths(run).fold(2))
    ev = load_part(fold, RunPaths(fold.run).split, "val")
    names = [str((RunPaths(fold.run).split.parent / p).resolve()) for p in ev.crops.paths]
    at = names.index(str((run / oof.paths[row]).resolve()))
    want = view_logits(fold.net, ev.crops.images[at : at + 1], "hflip")[0].double().numpy()
    assert np.allclose(z[row], want, atol=1e-5)
    record = calibrate_run(
        run, max_pit_miss=0.05, confidence=0.9, max_false_reject=0.2, second_look="hflip"
    )
    assert record["mode"] == "oof" and record["second_look"]["views"] == "hflip"
    assert record["second_look"]["thresholds"]["n_pits"] == int((oof.labels == oof.pit_index).sum())


def test_bench_costs_the_cascade_at_the_share_that_takes_the_second_look(cascade_run, tmp_path):
    from pitguard.deploy.bench import bench

    out = tmp_path / "bundle"
    export_run(cascade_run, out, onnx=True)
    share = json.loads((out / "bundle.json").read_text())["second_look"]["share"]
    result = bench([str(out)], [4], ["onnx"], threads=1, warmup=1, min_runs=2, min_seconds=0)
    first, cascade = result["results"]
    assert (first["backend"], cascade["backend"]) == ("onnx", "onnx+second-look")
    parts = cascade["second_look"]
    assert parts["share"] == share and parts["stage1_ms_per_crop"] == first["ms_per_crop"]
    want = first["ms_per_crop"] + share * parts["second_ms_per_crop"]
    assert cascade["ms_per_crop"] == pytest.approx(want)
    assert cascade["crops_per_s"] == pytest.approx(1000 / want)
