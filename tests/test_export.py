import json

import numpy as np
import pytest
import torch
from PIL import Image

import pitguard
from pitguard import export as export_mod
from pitguard.calibrate import calibrate_run
from pitguard.cli import main
from pitguard.data.synth import synthesize
from pitguard.errors import PitguardError
from pitguard.export import export_run
from tests.conftest import train_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model with a calibrated decision (5% bound: the synthetic calib part is small)."""
    root = tmp_path_factory.mktemp("exp")
    # EMA off: with a few epochs the averaged weights would still be near the untrained start
    sets = ["train.epochs=6", "train.ema_decay=0", "model.normalize=data"]
    train_tiny(root, count=600, seed=5, sets=sets)
    calibrate_run(root / "run", max_pit_miss=0.05, confidence=0.9)
    return root / "run"


def test_bundle_with_onnx_and_int8_passes_gates(run, tmp_path):
    bundle = tmp_path / "b"
    meta = export_run(run, bundle, onnx=True, int8=True)
    on_disk = json.loads((bundle / "bundle.json").read_text())
    assert on_disk["files"] == {
        "weights": "model.safetensors",
        "onnx": "model.onnx",
        "onnx_int8": "model.int8.onnx",
    }
    assert on_disk["input"]["mean"] is None  # data normalization folded into the first conv
    assert on_disk["policy"] == json.loads((run / "policy.json").read_text())["policy"]
    assert on_disk["guarantee"]["max_pit_miss"] == 0.05
    parity = meta["onnx"]["parity"]
    assert parity["max_prob_diff"] <= 1e-4 and parity["route_mismatches"] == 0
    assert parity["data"].endswith("[calib]")
    assert meta["int8"]["gate"]["pit_misses"] <= meta["int8"]["gate"]["pit_misses_ref"]
    assert on_disk["provenance"]["data"]["fingerprint"]


def test_predictor_backends_agree_on_routes(run, tmp_path):
    bundle = tmp_path / "b"
    export_run(run, bundle, onnx=True)
    from pitguard.data.synth import make_crops

    crops, _ = make_crops(32, seed=9)
    onnx = pitguard.load(bundle)
    eager = pitguard.load(bundle, backend="torch")
    assert onnx.backend == "onnx"
    a, b = onnx.predict(crops), eager.predict(crops.transpose(0, 3, 1, 2))
    assert a.routes == b.routes and np.allclose(a.p_pit, b.p_pit, atol=1e-5)
    pil = onnx.predict([Image.fromarray(c) for c in crops[:4]])
    assert pil.routes == a.routes[:4]
    with pytest.raises(PitguardError, match=r"expected a uint8 array, got float32"):
        onnx.predict(crops.astype(np.float32))
    with pytest.raises(PitguardError, match=r"expected 128x128 crops, got 64x64"):
        onnx.predict(np.zeros((1, 64, 64, 3), np.uint8))


def test_parity_failure_is_refused_with_numbers(run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "MAX_PROB_DIFF", -1.0)
    with pytest.raises(
        PitguardError,
        match=r"ONNX parity failed on .*\[calib\]: max p\(pit\) difference .* no bundle written",
    ):
        export_run(run, tmp_path / "bad", onnx=True)
    assert not (tmp_path / "bad").exists()


def test_int8_gate_refuses_with_numbers(run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "INT8_MAX_ACCURACY_DROP", -1.0)
    with pytest.raises(
        PitguardError,
        match=r"INT8 refused on .*: accuracy .* pits routed clean .* no bundle written",
    ):
        export_run(run, tmp_path / "bad", int8=True)
    assert not (tmp_path / "bad").exists()


def test_uncalibrated_run_needs_explicit_flag(run, tmp_path):
    (run / "policy.json").rename(run / "policy.json.off")
    try:
        with pytest.raises(PitguardError, match=r"not calibrated; run `pitguard calibrate"):
            export_run(run, tmp_path / "u")
        meta = export_run(run, tmp_path / "u", allow_uncalibrated=True)
        assert (
            meta["guarantee"] is None and meta["policy"]["t_low"] == meta["policy"]["t_high"] == 0.5
        )
    finally:
        (run / "policy.json.off").rename(run / "policy.json")


def test_weights_in_the_denormal_range_are_zeroed():
    from pitguard.bundle import sanitize_denormals

    layer = torch.nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight[0, 0] = 1e-32  # tiny enough to turn denormal in the first products
        layer.weight[0, 1] = -1e-35
    assert sanitize_denormals(layer) == 2
    assert layer.weight[0, 0] == 0 and layer.weight[0, 1] == 0 and layer.weight[1, 1] != 0


def test_predict_cli_lists_bad_files_and_classifies_the_rest(run, tmp_path, capsys):
    bundle = tmp_path / "b"
    assert main(["export", str(run), "--out", str(bundle), "--onnx"]) == 0
    assert "ONNX parity" in capsys.readouterr().out
    crops_dir = tmp_path / "in"
    synthesize(crops_dir, count=6, seed=2)
    (crops_dir / "cherry_pit" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (crops_dir / "cherry_pit" / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(bundle), str(crops_dir), "--out", str(out)]) == 1
    lines = out.read_text().splitlines()
    assert lines[0] == "path,route,p_pit,label,error" and len(lines) == 9
    rows = {line.split(",")[0].rsplit("/", 1)[1]: line.split(",") for line in lines[1:]}
    assert rows["empty.png"][4] == "empty file (0 bytes)"
    assert rows["broken.png"][4].startswith("cannot decode")
    good = [r for r in rows.values() if not r[4]]
    assert len(good) == 6 and all(r[1] in ("clean", "maybe", "pit") for r in good)
    assert "failed 2" in capsys.readouterr().err


def test_bundle_schema_versions(run, tmp_path):
    bundle = tmp_path / "b"
    export_run(run, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["schema_version"] == 2 and meta["input"]["crop"] == 96  # the cpu-fast recipe's
    crops = np.zeros((2, 128, 128, 3), np.uint8)
    expected = pitguard.load(bundle, backend="torch").predict(crops).routes
    # a schema-1 bundle (no crop field) still loads
    old = {**meta, "schema_version": 1, "input": {**meta["input"], "crop": 0}}
    old["input"].pop("crop")
    (bundle / "bundle.json").write_text(json.dumps(old))
    assert len(pitguard.load(bundle, backend="torch").predict(crops).routes) == 2
    # a newer schema is refused with the versions this pitguard reads
    (bundle / "bundle.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(PitguardError, match=r"bundle schema 99, this pitguard reads 1, 2"):
        pitguard.load(bundle, backend="torch")
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert pitguard.load(bundle, backend="torch").predict(crops).routes == expected
