"""One exit-status convention for every verb: 0 done, 1 some inputs failed, 2 bad usage, config
or input (before any work), 3 a file that could not be read or written, or a crash; each
expected failure a one-line ``error:`` naming the file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pitguard.cli import main
from pitguard.core.files import file_sha256


def _resume_with(run: Path, tmp_path: Path, content: bytes) -> Path:
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "checkpoints" / "last.pt").write_bytes(content)
    return copy


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_a_damaged_checkpoint_at_resume_is_named_with_the_fix(trained_run, tmp_path, capsys, cut):
    data = (trained_run / "checkpoints" / "last.pt").read_bytes()
    run = _resume_with(trained_run, tmp_path, data[:1000] if cut == "truncated" else b"x" * 500)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "last.pt: damaged checkpoint" in err and "best.pt" in err


def test_an_output_path_that_cannot_be_written_exits_3(synth_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "split.csv"  # a folder that is a file
    assert main(["data", "split", str(synth_dir), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "afile" in err and "permissions and the free space" in err


def test_a_crash_exits_3_with_its_traceback(monkeypatch, capsys):
    import pitguard.recipes as recipes

    def broken(*_args):
        raise ValueError("a bug")

    monkeypatch.setattr(recipes, "recipe_names", broken)
    assert main(["recipes"]) == 3
    err = capsys.readouterr().err
    assert "ValueError: a bug" in err and "error: pitguard crashed" in err


def test_a_bundle_json_without_its_keys_is_refused(bundle, tmp_path, capsys):
    copy = shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((copy / "bundle.json").read_text())
    del meta["policy"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    assert main(["predict", str(copy), str(tmp_path)]) == 2
    assert "bundle.json: lacks policy" in capsys.readouterr().err


def test_a_graph_onnx_runtime_cannot_load_is_named(bundle, tmp_path, capsys):
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "model.onnx").write_bytes(b"not a graph")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["sha256"]["model.onnx"] = file_sha256(copy / "model.onnx")  # consistent, still broken
    (copy / "bundle.json").write_text(json.dumps(meta))
    assert main(["predict", str(copy), str(tmp_path / "b" / "model.onnx")]) == 2
    assert "model.onnx: ONNX Runtime cannot load it" in capsys.readouterr().err
