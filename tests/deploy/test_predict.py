"""Tests for pitguard.deploy.predict: backends agree, input checks, the predict verb."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pitguard
from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.data.synth import make_crops, synthesize


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
    # float crops are taken in [0, 1], as the line sends them; 0-255 floats are named
    with pytest.raises(PitguardError, match=r"in \[0, 1\].*divide uint8 images by 255"):
        onnx.predict(crops.astype(np.float32))
    with pytest.raises(PitguardError, match=r"expected 128x128 crops, got 64x64"):
        onnx.predict(np.zeros((1, 64, 64, 3), np.uint8))


def test_unknown_or_missing_backend_is_named(bundle):
    with pytest.raises(
        PitguardError, match=r"backend 'onnx-int9': unknown \(did you mean onnx-int8\?\)"
    ):
        pitguard.load(bundle, backend="onnx-int9")
    with pytest.raises(PitguardError, match=r"has no onnx-fp16 graph; export it with .*--fp16"):
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
    # class folders give the true label; the summary counts routes per labelled class
    assert all(r[1] in ("clean", "pit") and r[2] in ("clean", "pit") for r in good)
    assert {r[1] for r in good} == {"clean", "pit"}
    err = capsys.readouterr().err
    assert "labelled clean (3): clean" in err and "labelled pit (3): clean" in err
    assert "failed 2" in err


def as_schema_1(bundle: Path, out: Path) -> Path:
    """The bundle as pitguard wrote it at schema 1: weights without stamps, no digests, no
    crop field in the input contract, no ONNX graph."""
    from safetensors.numpy import load_file, save_file

    out.mkdir()
    meta = json.loads((bundle / "bundle.json").read_text())
    save_file(load_file(str(bundle / "model.safetensors")), str(out / "model.safetensors"))
    old = {**meta, "schema_version": 1, "files": {"weights": "model.safetensors"}}
    for key in ("sha256", "input_guard", "onnx"):
        old.pop(key, None)
    old["input"] = {k: v for k, v in meta["input"].items() if k != "crop"}
    (out / "bundle.json").write_text(json.dumps(old))
    return out


def test_bundle_schema_versions(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((copy / "bundle.json").read_text())
    assert meta["schema_version"] == 5 and meta["input"]["crop"] == 96  # the small-fast recipe's
    crops = np.zeros((2, 128, 128, 3), np.uint8)
    expected = pitguard.load(copy, backend="torch").predict(crops).routes
    # a bundle written at schema 1 (no crop field, no stamps, no digests) still loads
    old = as_schema_1(copy, tmp_path / "old")
    assert len(pitguard.load(old, backend="torch").predict(crops).routes) == 2
    # a newer schema is refused with the versions this pitguard reads
    (copy / "bundle.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(PitguardError, match=r"bundle schema 99, this pitguard reads 1, 2, 3, 4, 5"):
        pitguard.load(copy, backend="torch")
    # a schema-5 bundle told it is schema 1 is refused: its files say what they were written for
    (copy / "bundle.json").write_text(json.dumps({**meta, "schema_version": 1}))
    with pytest.raises(PitguardError, match=r"states schema 1, but model.safetensors was written"):
        pitguard.load(copy, backend="torch")
    (copy / "bundle.json").write_text(json.dumps(meta))
    assert pitguard.load(copy, backend="torch").predict(crops).routes == expected


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


def test_predict_lists_pipes_devices_and_huge_files_and_predicts_the_rest(bundle, tmp_path):
    import csv
    import os
    import subprocess
    import sys

    from pitguard.data.load import MAX_CROP_BYTES

    crops = tmp_path / "in"
    synthesize(crops, count=4, seed=2)
    pit = crops / "cherry_pit"
    os.mkfifo(pit / "pipe.png")  # opening it for reading waits for a writer: forever
    (pit / "zero.png").symlink_to("/dev/zero")  # never ends
    (pit / "link.png").symlink_to(next((crops / "cherry_clean").glob("*.png")))  # a crop
    with (pit / "huge.png").open("wb") as fh:
        fh.truncate(MAX_CROP_BYTES + 1)  # sparse: no disk used
    out = tmp_path / "preds.csv"
    done = subprocess.run(
        [sys.executable, "-m", "pitguard", "predict", str(bundle), str(crops), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # some inputs failed, each listed
    with out.open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert rows["pipe.png"]["error"] == "not a regular file (a named pipe); not read"
    assert rows["zero.png"]["error"] == "not a regular file (a character device); not read"
    assert rows["huge.png"]["error"].endswith(
        "bytes is no crop (the limit is 67,108,864); not read"
    )
    predicted = [r for r in rows.values() if not r["error"]]
    assert len(predicted) == 5 and rows["link.png"]["route"] in ("clean", "maybe", "pit")
    assert "failed 3" in done.stderr


def test_a_full_disk_names_the_output_and_leaves_no_partial_file(
    bundle, tmp_path, monkeypatch, capsys
):
    import csv
    import errno
    import os

    crops, out = tmp_path / "in", tmp_path / "out" / "preds.csv"
    synthesize(crops, count=4, seed=2)
    out.parent.mkdir()
    written = []
    real_writerow = csv.DictWriter.writerow

    def full_disk(self, row):  # the header and one row fit, then the disk is full
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(row)
        return real_writerow(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", full_disk)
    assert main(["predict", str(bundle), str(crops), "--out", str(out)]) == 3
    assert f"error: {out}: No space left on device; check the path" in capsys.readouterr().err
    assert os.listdir(out.parent) == []  # neither a partial CSV nor its temporary


@pytest.mark.parametrize("backend", ["onnx", "eager"])
def test_float_crops_as_the_line_sends_them_score_as_their_uint8(bundle, backend):
    from tests.conftest import random_crop

    crops = np.stack([random_crop(s) for s in range(6)]).transpose(0, 3, 1, 2).copy()
    predictor = pitguard.load(bundle, backend=backend)
    as_uint8 = predictor.predict(crops)
    as_float = predictor.predict(crops.astype(np.float32) / 255)
    assert as_float.routes == as_uint8.routes and as_float.reasons == as_uint8.reasons
    assert np.abs(as_float.p_pit - as_uint8.p_pit).max() < 1e-6
    with pytest.raises(PitguardError, match=r"finite and in \[0, 1\]"):
        predictor.predict(np.full((1, 3, 128, 128), 3.0, np.float32))
