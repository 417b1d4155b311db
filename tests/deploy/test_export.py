"""Tests for pitguard.deploy.export: bundles, ONNX parity and the INT8 gate."""

import json

import pytest
import torch

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.deploy import export as export_mod
from pitguard.deploy.bundle import sanitize_denormals
from pitguard.deploy.export import export_run
from pitguard.models.runfolder import load_run
from tests.conftest import SESSION_MAX_PIT_MISS, copy_run


def test_bundle_with_onnx_and_int8_passes_gates(calibrated_run, bundle):
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["files"] == {
        "weights": "model.safetensors",
        "onnx": "model.onnx",
        "onnx_int8": "model.int8.onnx",
        "checks": "checks.npz",
    }
    # the data normalization stays the graph's first step, as the calibrated model computes it
    assert meta["input"]["mean"] == list(load_run(calibrated_run).net.contract.mean)
    assert meta["policy"] == json.loads((calibrated_run / "policy.json").read_text())["policy"]
    assert meta["guarantee"]["max_pit_miss"] == SESSION_MAX_PIT_MISS
    parity = meta["onnx"]["parity"]
    assert parity["max_prob_diff"] <= 1e-4 and parity["route_mismatches"] == 0
    assert parity["data"].endswith("[calib]")
    # the INT8 graph carries thresholds certified on its own calib scores, with the run's bound
    own = meta["int8"]["guarantee"]
    assert own["established_on"] == "model.int8.onnx's own scores of " + parity["data"]
    assert own["pit_miss_bound"] <= SESSION_MAX_PIT_MISS
    assert meta["int8"]["gate"]["pit_misses"] <= own["calib_pit_misses"]
    assert meta["training"] == {"finished": True, "unfinished": None}
    assert meta["provenance"]["data"]["fingerprint"]


def test_export_cli_reports_parity(calibrated_run, tmp_path, capsys):
    assert main(["export", str(calibrated_run), "--out", str(tmp_path / "b"), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert "ONNX parity passed (limits: p(pit) diff 1e-04, 0 route mismatches)" in out
    assert "0 route mismatches, accuracy" in out


def test_parity_failure_is_refused_with_numbers(calibrated_run, tmp_path, monkeypatch):
    real = export_mod.run_onnx

    def off_by_a_little(session, crops):
        logits, p_pit, routes = real(session, crops)
        return logits, p_pit + 1e-3, routes

    monkeypatch.setattr(export_mod, "run_onnx", off_by_a_little)
    with pytest.raises(
        PitguardError,
        match=r"ONNX parity failed on .*\[calib\]: max p\(pit\) difference .* routes differ from "
        r"the calibrated model's; no bundle written",
    ):
        export_run(calibrated_run, tmp_path / "bad", onnx=True)
    assert not (tmp_path / "bad").exists()


def test_int8_gate_refuses_with_numbers(calibrated_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "INT8_MAX_ACCURACY_DROP", -1.0)
    with pytest.raises(
        PitguardError,
        match=r"INT8 refused on .*: accuracy .* pits routed clean .* no bundle written",
    ):
        export_run(calibrated_run, tmp_path / "bad", int8=True)
    assert not (tmp_path / "bad").exists()


def test_uncalibrated_run_needs_explicit_flag(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    with pytest.raises(PitguardError, match=r"not calibrated; run `pitguard calibrate"):
        export_run(run, tmp_path / "u")
    meta = export_run(run, tmp_path / "u", allow_uncalibrated=True)
    assert meta["guarantee"] is None and meta["policy"]["t_low"] == meta["policy"]["t_high"] == 0.5


def test_weights_in_the_denormal_range_are_zeroed():
    layer = torch.nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight[0, 0] = 1e-32  # tiny enough to turn denormal in the first products
        layer.weight[0, 1] = -1e-35
    assert sanitize_denormals(layer) == 2
    assert layer.weight[0, 0] == 0 and layer.weight[0, 1] == 0 and layer.weight[1, 1] != 0


def test_force_replaces_a_bundle_and_nothing_else(calibrated_run, tmp_path, capsys):
    from pitguard.cli import main

    out = tmp_path / "bundle"
    assert main(["export", str(calibrated_run), "--out", str(out)]) == 0
    first = (out / "bundle.json").read_text()
    assert main(["export", str(calibrated_run), "--out", str(out)]) == 2
    assert "--force to replace" in capsys.readouterr().err
    assert main(["export", str(calibrated_run), "--out", str(out), "--force", "--onnx"]) == 0
    assert (out / "model.onnx").is_file() and (out / "bundle.json").read_text() != first
    assert not list(tmp_path.glob(".bundle.*"))  # nothing left aside
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["export", str(calibrated_run), "--out", str(other), "--force"]) == 2
    assert "replaces only a bundle" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep"


def _predicts_as_the_run(net, bundle) -> None:
    """The bundle's ONNX graph and its rebuilt eager module give the run's own p(pit)."""
    import numpy as np

    from pitguard.deploy.predict import Predictor
    from tests.conftest import random_crop

    crops = np.stack([random_crop(s) for s in range(6)]).transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        want = net(torch.from_numpy(crops).float() / 255).softmax(1)[:, 1].numpy()
    for backend in ("onnx", "eager"):
        got = Predictor(bundle, backend=backend).predict_uint8(crops).p_pit
        assert np.allclose(got, want, atol=1e-4), backend


def test_a_run_with_learned_downsampling_exports_and_predicts_alike(tmp_path):
    """The stacked pixel blocks survive the bundle: ONNX and the rebuilt eager module agree."""
    from pitguard.models.runfolder import load_run
    from tests.conftest import train_tiny

    sets = ["model.crop=96", "model.downsample=2", "model.downsample_mode=learned"]
    run = train_tiny(tmp_path, sets=[*sets, "model.normalize=data"])
    net = load_run(run).net
    assert net.backbone.conv_stem.in_channels == 8 and net.contract.side == 48
    export_run(run, tmp_path / "b", onnx=True, allow_uncalibrated=True)
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["input"]["downsample_mode"] == "learned" and meta["input"]["mean"] is not None
    assert meta["onnx"]["parity"]["max_prob_diff"] <= 1e-4
    _predicts_as_the_run(net, tmp_path / "b")


def test_a_run_that_upsamples_exports_and_predicts_alike(tmp_path):
    """The enlargement inside the model is one graph node: ONNX and eager agree."""
    import onnx

    from pitguard.models.runfolder import load_run
    from tests.conftest import train_tiny

    run = train_tiny(tmp_path, sets=["model.crop=48", "model.upsample=2", "model.normalize=data"])
    net = load_run(run).net
    assert net.contract.side == 96 and net.contract.upsample == 2
    export_run(run, tmp_path / "b", onnx=True, allow_uncalibrated=True)
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["input"]["upsample"] == 2 and meta["input"]["mean"] is not None
    graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
    assert [n.op_type for n in graph.node].count("Resize") == 1
    assert meta["onnx"]["parity"]["max_prob_diff"] <= 1e-4
    _predicts_as_the_run(net, tmp_path / "b")


def test_a_run_with_test_time_views_exports_them_into_the_graph(tmp_path):
    """The eight views are part of the exported graph: ONNX and eager agree, and a quarter
    turn or a mirror of a crop gets the crop's own score."""
    import numpy as np

    from pitguard.deploy.predict import Predictor
    from pitguard.models.runfolder import load_run
    from tests.conftest import random_crop, train_tiny

    run = train_tiny(tmp_path, sets=["model.tta=d8", "model.normalize=data"])
    net = load_run(run).net
    assert net.contract.tta == "d8"
    export_run(run, tmp_path / "b", onnx=True, allow_uncalibrated=True)
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["input"]["tta"] == "d8"
    assert meta["onnx"]["parity"]["max_prob_diff"] <= 1e-4
    _predicts_as_the_run(net, tmp_path / "b")
    crops = np.stack([random_crop(s) for s in range(4)]).transpose(0, 3, 1, 2).copy()
    onnx = Predictor(tmp_path / "b", backend="onnx")
    p = onnx.predict_uint8(crops).p_pit
    turned = onnx.predict_uint8(np.ascontiguousarray(np.rot90(crops, 1, axes=(2, 3)))).p_pit
    mirrored = onnx.predict_uint8(np.ascontiguousarray(crops[..., ::-1])).p_pit
    # a one-view graph of this run moves p by about 5e-5 under these turns and mirrors
    assert np.allclose(turned, p, atol=2e-6) and np.allclose(mirrored, p, atol=2e-6)


def test_the_runs_own_calib_part_is_recognised_however_its_path_was_spelled():
    from types import SimpleNamespace

    from pitguard.deploy.export import _calibrated_on

    here = SimpleNamespace(
        run_part="calib", ev=SimpleNamespace(description="/abs/run/split.csv [calib]")
    )
    then = {"data": "run/split.csv [calib]", "run_part": "calib"}
    assert _calibrated_on(then, here)
    assert not _calibrated_on({**then, "run_part": None}, here)  # calibrated on --data crops
    older = {"data": "run/split.csv [calib]"}  # policy.json before run_part: names must match
    assert not _calibrated_on(older, here)
    assert _calibrated_on({"data": "/abs/run/split.csv [calib]"}, here)
    given = SimpleNamespace(run_part=None, ev=SimpleNamespace(description="crops/ [all]"))
    assert _calibrated_on({"data": "crops/ [all]", "run_part": None}, given)
    assert not _calibrated_on(then, given)


def test_a_signed_export_is_trusted_and_an_unsigned_one_refused(calibrated_run, tmp_path, capsys):
    from pitguard.data.synth import synthesize

    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys)]) == 0
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    sign = ["--sign", str(keys / "signing.key")]
    assert main(["export", str(calibrated_run), "--out", str(signed), "--onnx", *sign]) == 0
    assert main(["export", str(calibrated_run), "--out", str(unsigned), "--onnx"]) == 0
    assert (signed / "bundle.sig").is_file() and not (unsigned / "bundle.sig").exists()
    crops = tmp_path / "crops"
    synthesize(crops, count=4, seed=3)
    trust = ["--trust", str(keys / "signing.pub")]
    out = tmp_path / "p.csv"
    assert main(["predict", str(signed), str(crops), "--out", str(out), *trust]) == 0
    capsys.readouterr()
    assert main(["predict", str(unsigned), str(crops), "--out", str(out), *trust]) == 2
    assert "unsigned (no bundle.sig) and a trusted key was given" in capsys.readouterr().err


def test_a_key_that_cannot_sign_stops_export_before_any_work(calibrated_run, tmp_path):
    bad = tmp_path / "signing.key"
    bad.write_text("not a key")
    with pytest.raises(PitguardError, match=r"signing\.key: not a readable private key"):
        export_run(calibrated_run, tmp_path / "b", onnx=True, sign=bad)
    assert not (tmp_path / "b").exists()


def test_a_failed_forced_export_leaves_the_old_bundle_whole(calibrated_run, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    export_run(calibrated_run, out, onnx=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt  # what SIGINT raises half-way through writing the new bundle

    monkeypatch.setattr(export_mod, "write_check_crops", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(calibrated_run, out, onnx=True, replace=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary left
