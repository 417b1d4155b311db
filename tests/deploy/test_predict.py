"""Tests for pitguard.deploy.predict: backends agree, input checks, the predict verb."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import pitguard
from pitguard.cli import main
from pitguard.data.synth import make_crops, synthesize
from pitguard.errors import PitguardError


def test_predictor_backends_agree_on_routes(bundle):
    crops, _ = make_crops(32, seed=9)
    onnx = pitguard.load(bundle)
    eager = pitguard.load(bundle, backend="torch")
    assert onnx.backend == "onnx" and eager.backend == "eager"
    a, b = onnx.predict(crops), eager.predict(crops.transpose(0, 3, 1, 2))
    assert a.routes == b.routes and np.allclose(a.p_pit, b.p_pit, atol=1e-5)
    pil = onnx.predict([Image.fromarray(c) for c in crops[:4]])
    assert pil.routes == a.routes[:4]
    int8 = pitguard.load(bundle, backend="onnx-int8")
    assert len(int8.predict(crops).routes) == 32
    with pytest.raises(PitguardError, match=r"expected a uint8 array, got float32"):
        onnx.predict(crops.astype(np.float32))
    with pytest.raises(PitguardError, match=r"expected 128x128 crops, got 64x64"):
        onnx.predict(np.zeros((1, 64, 64, 3), np.uint8))


def test_unknown_or_missing_backend_is_named(bundle):
    with pytest.raises(
        PitguardError, match=r"backend 'onnx-int9': unknown \(did you mean onnx-int8\?\)"
    ):
        pitguard.load(bundle, backend="onnx-int9")
    with pytest.raises(PitguardError, match=r"has no onnx-fp16 graph; re-export it with .*--fp16"):
        pitguard.load(bundle, backend="onnx-fp16")


def test_predict_cli_lists_bad_files_and_classifies_the_rest(bundle, tmp_path, capsys):
    crops_dir = tmp_path / "in"
    synthesize(crops_dir, count=6, seed=2)
    (crops_dir / "cherry_pit" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (crops_dir / "cherry_pit" / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(bundle), str(crops_dir), "--out", str(out)]) == 1
    lines = out.read_text().splitlines()
    assert lines[0] == "path,true_label,predicted,p_pit,route,error,reason" and len(lines) == 9
    rows = {line.split(",")[0].rsplit("/", 1)[1]: line.split(",") for line in lines[1:]}
    assert rows["empty.png"][5] == "empty file (0 bytes)"
    assert rows["broken.png"][5].startswith("cannot decode")
    good = [r for r in rows.values() if not r[5]]
    assert len(good) == 6 and all(r[4] in ("clean", "maybe", "pit") for r in good)
    assert all(r[1] == "" and r[2] in ("clean", "pit") for r in good)  # truth unknown here
    assert "failed 2" in capsys.readouterr().err


def test_bundle_schema_versions(bundle, tmp_path):
    bundle = shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["schema_version"] == 3 and meta["input"]["crop"] == 96  # the small-fast recipe's
    crops = np.zeros((2, 128, 128, 3), np.uint8)
    expected = pitguard.load(bundle, backend="torch").predict(crops).routes
    # a schema-1 bundle (no crop field) still loads
    old = {**meta, "schema_version": 1, "input": {**meta["input"], "crop": 0}}
    old["input"].pop("crop")
    (bundle / "bundle.json").write_text(json.dumps(old))
    assert len(pitguard.load(bundle, backend="torch").predict(crops).routes) == 2
    # a newer schema is refused with the versions this pitguard reads
    (bundle / "bundle.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(PitguardError, match=r"bundle schema 99, this pitguard reads 1, 2, 3"):
        pitguard.load(bundle, backend="torch")
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert pitguard.load(bundle, backend="torch").predict(crops).routes == expected


def test_a_damaged_bundle_json_is_named_not_a_traceback(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "bundle.json").write_text('{"schema_version": 2, ')
    with pytest.raises(PitguardError, match=r"bundle.json: unreadable JSON .*rerun the step"):
        pitguard.load(copy)


def test_predict_prints_the_files_columns_when_no_out_is_given(bundle, tmp_path, capsys):
    synthesize(tmp_path / "in", count=2, seed=2)
    pngs = sorted((tmp_path / "in").rglob("*.png"))
    assert main(["predict", str(bundle), str(pngs[0])]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "path,true_label,predicted,p_pit,route,error,reason" and len(lines) == 2
    assert "1 file: " in err
