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
        # the input size is part of the contract every file holds
        (lambda m: m["input"].update(size=64), "input differ from what model.safetensors"),
    ],
)
def test_a_bundle_json_that_misstates_the_graph_is_refused(copy, change, message):
    _edit(copy, change)
    with pytest.raises(PitguardError, match=message):
        pitguard.load(copy, backend="onnx")


@pytest.mark.parametrize(
    "change, message",
    [
        # the classes and the pit index flipped together: each alone is caught above
        (
            lambda m: (m.update(classes=m["classes"][::-1]), m["policy"].update(pit_index=0)),
            "classes, pit_index differ from what model.safetensors was exported with",
        ),
        (lambda m: m["input"].update(crop=64), "input differ from what model.safetensors"),
        (lambda m: m["input"].update(tta="hflip"), "input differ from what"),
        (lambda m: m["input"].update(downsample=m["input"]["downsample"] + 1), "input differ"),
        (lambda m: m.update(model_name="resnet50"), "model_name differ from what"),
        # a lowered schema with the guard deleted, or its threshold raised, no longer loads
        (
            lambda m: (m.update(schema_version=3), m.pop("input_guard")),
            "states schema 3, but model.safetensors was written for schema 5",
        ),
        (
            lambda m: m["input_guard"].update(threshold=1e9),
            "input_guard differs from the guard exported with model.safetensors",
        ),
        (
            lambda m: (m.update(schema_version=1), m["input_guard"].update(threshold=1e9)),
            "states schema 1",
        ),
    ],
)
@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_an_edited_field_the_runtime_acts_on_is_refused(copy, change, message, backend):
    _edit(copy, change)
    with pytest.raises(PitguardError, match=message):
        pitguard.load(copy, backend=backend)


def test_digests_are_checked_whatever_schema_is_stated(copy):
    meta = json.loads((copy / "bundle.json").read_text())
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    _edit(copy, lambda m: m.update(schema_version=1))
    with pytest.raises(PitguardError, match=r"model\.onnx: its sha256 is not the one"):
        pitguard.load(copy, backend="onnx")
    assert meta["schema_version"] == 5


@pytest.mark.parametrize(
    "change, message",
    [
        # a stronger statement written over the certified one: the counts do not support it
        (
            lambda m: m["guarantee"].update(max_pit_miss=0.001, confidence=0.999),
            r"states pits routed clean <= 0\.1000% with 99\.9% confidence",
        ),
        (lambda m: m["guarantee"].update(confidence=0.9999), "calibration counts"),
        (lambda m: m["calibration"].update(pit_miss_bound=0.0001), "calibration counts"),
        (
            lambda m: m["int8"]["guarantee"].update(max_pit_miss=0.0001),
            r"int8\.guarantee states pits routed clean",
        ),
    ],
)
def test_a_guarantee_its_counts_do_not_certify_is_refused(copy, change, message):
    _edit(copy, change)
    with pytest.raises(PitguardError, match=message):
        pitguard.load(copy, backend="onnx")


def test_the_recorded_guarantees_are_the_ones_their_counts_certify(copy):
    from pitguard.decision.certify import _bound
    from pitguard.runtime.certificate import certified_bound

    meta = json.loads((copy / "bundle.json").read_text())
    cal, g = meta["calibration"], meta["guarantee"]
    ours = certified_bound(cal["calib_pit_misses"], cal["n_pits"], g["confidence"], g["kind"])
    theirs = _bound(cal["calib_pit_misses"], cal["n_pits"], g["confidence"], g["kind"])
    assert abs(ours - theirs) < 1e-9 and abs(ours - cal["pit_miss_bound"]) < 1e-9


def test_a_damaged_weights_file_with_its_digest_rewritten_names_itself(copy):
    from pitguard.core.files import file_sha256

    weights = copy / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])  # the header destroyed
    _edit(copy, lambda m: m["sha256"].update({"model.safetensors": file_sha256(weights)}))
    with pytest.raises(PitguardError, match=r"model\.safetensors: not a readable safetensors"):
        pitguard.load(copy, backend="onnx")


def test_an_absurdly_deep_bundle_json_names_itself(copy):
    (copy / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PitguardError, match=r"bundle\.json: unreadable JSON"):
        pitguard.load(copy)


def test_a_threshold_edited_inside_the_graph_is_caught_by_its_check_crops(copy):
    """Someone who edits a graph's threshold initializer and rewrites its digest: the digests
    cannot tell (only a signature can), but the graph no longer routes by the stated thresholds."""
    from pitguard.core.files import file_sha256
    from pitguard.deploy.graphs import set_thresholds
    from pitguard.runtime import Classifier

    set_thresholds(copy / "model.onnx", 1e-9, 1.0)  # nothing clean, nothing pit
    _edit(copy, lambda m: m["sha256"].update({"model.onnx": file_sha256(copy / "model.onnx")}))
    assert Classifier(copy, device="cpu").graph == "onnx"  # digests alone: it loads
    with pytest.raises(PitguardError, match="the thresholds inside the graph were changed"):
        Classifier(copy, device="cpu", verify=True)
