"""A bundle proves what it is: files unchanged since export and inside the bundle, and a
bundle.json that states what the weights and graphs compute."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pitguard
from pitguard.core.errors import PitguardError


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "b"))


def _edit(folder: Path, change) -> None:
    meta = json.loads((folder / "bundle.json").read_text())
    change(meta)
    (folder / "bundle.json").write_text(json.dumps(meta))


def test_an_exported_bundle_records_a_sha256_per_file_and_loads(copy):
    meta = json.loads((copy / "bundle.json").read_text())
    assert set(meta["sha256"]) == set(meta["files"].values())
    assert all(len(d) == 64 for d in meta["sha256"].values())
    for backend in ("onnx", "onnx-int8", "eager"):
        assert pitguard.load(copy, backend=backend).backend == backend


@pytest.mark.parametrize("name, backend", [("model.onnx", "onnx"), ("model.safetensors", "eager")])
def test_a_damaged_file_is_refused(copy, name, backend):
    data = bytearray((copy / name).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(b ^ 0xFF for b in data[middle : middle + 2000])
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(PitguardError, match=f"{name}: its sha256 is not the one"):
        pitguard.load(copy, backend=backend)


def test_another_graph_copied_in_is_refused(copy):
    shutil.copyfile(copy / "model.int8.onnx", copy / "model.onnx")
    with pytest.raises(PitguardError, match="changed or replaced after export"):
        pitguard.load(copy, backend="onnx")


def test_file_entries_must_stay_inside_the_bundle(copy):
    shutil.copyfile(copy / "model.onnx", copy.parent / "outside.onnx")
    _edit(copy, lambda m: m["files"].update(onnx="../outside.onnx"))
    with pytest.raises(PitguardError, match=r"files.onnx is '../outside.onnx', not a file of"):
        pitguard.load(copy, backend="onnx")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(classes=m["classes"][::-1]), "put pit at index 0"),
        (lambda m: m["policy"].update(t_low=m["policy"]["t_low"] / 2), "policy t_low is"),
        (lambda m: m["policy"].update(t_high=0.999), "policy t_high is 0.999"),
        (lambda m: m["input"].update(size=64), "input size 64 px, but model.onnx takes 128x128"),
    ],
)
def test_a_bundle_json_that_misstates_the_graph_is_refused(copy, change, message):
    _edit(copy, change)
    with pytest.raises(PitguardError, match=message):
        pitguard.load(copy, backend="onnx")
