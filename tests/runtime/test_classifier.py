"""The line's runtime: a bundle scored with numpy and onnxruntime alone, exactly as the full
install scores it, with its file checks and input guard."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from pitguard.runtime import Classifier
from tests.runtime.conftest import RUNTIME_ONLY


def test_importing_the_runtime_loads_no_torch():
    code = "import sys, pitguard.runtime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    if RUNTIME_ONLY:  # the base install: torch is not even installed
        assert importlib.util.find_spec("torch") is None


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_the_runtime_scores_as_the_full_install(made, expected, dtype):
    crops = expected["crops"]
    x = crops if dtype == "uint8" else crops.astype(np.float32) / np.float32(255)
    clf = Classifier(made / "bundle", device="cpu")
    out = clf.classify(x)
    assert clf.provider == "CPUExecutionProvider" and clf.device == "cpu"
    assert list(out.routes) == list(expected["routes"])
    assert np.abs(out.p_pit - expected["p_pit"]).max() <= 1e-4
    assert out.p_pit.dtype == np.float32 and out.logits.shape == (len(crops), 2)
    assert set(out.routes) <= {"clean", "maybe", "pit"}


def test_an_fp16_graph_scores_with_its_own_thresholds(made, expected):
    clf = Classifier(made / "bundle", graph="onnx-fp16", device="cpu")
    out = clf.classify(expected["crops"].astype(np.float32) / 255)
    policy = clf.meta["fp16"]["policy"]
    unguarded = out.reasons == ""
    clean = out.routes == "clean"
    assert np.array_equal(clean[unguarded], (out.p_pit < policy["t_low"])[unguarded])
    assert np.abs(out.p_pit - expected["p_pit"]).max() < 0.02


def test_one_crop_without_a_batch_axis(made, expected):
    one = Classifier(made / "bundle", device="cpu").classify(expected["crops"][0])
    assert len(one) == 1 and one.routes[0] == expected["routes"][0]


@pytest.mark.parametrize(
    "crops, message",
    [
        (np.zeros((2, 128, 128, 3), np.uint8), r"expected shape \(N, 3, 128, 128\)"),
        (np.full((1, 3, 128, 128), 2.0, np.float32), r"must be finite and in \[0, 1\]"),
        (np.full((1, 3, 128, 128), np.nan, np.float32), r"must be finite and in \[0, 1\]"),
        (np.zeros((1, 3, 128, 128), np.int32), r"expected float32 in \[0, 1\] or uint8"),
        (np.zeros((0, 3, 128, 128), np.uint8), "empty batch"),
        ([[0]], "expected a numpy array"),
    ],
)
def test_bad_input_is_named(made, crops, message):
    with pytest.raises(PitguardError, match=message):
        Classifier(made / "bundle", device="cpu").classify(crops)


def test_a_gpu_asked_for_without_a_gpu_provider_is_refused(made):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(PitguardError, match=r"device cuda: this onnxruntime has no CUDAExecution"):
        Classifier(made / "bundle", device="cuda")
    assert Classifier(made / "bundle", device="auto").device == "cpu"


def test_an_edited_bundle_is_refused_by_the_runtime_too(made, tmp_path):
    copy = Path(shutil.copytree(made / "bundle", tmp_path / "b"))
    meta = json.loads((copy / "bundle.json").read_text())
    meta["policy"]["t_low"] = meta["policy"]["t_low"] * 2 + 0.01
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(PitguardError, match="policy t_low is"):
        Classifier(copy, device="cpu")


def test_crops_unlike_the_training_crops_go_to_review_with_a_reason(made, expected):
    crops = expected["crops"].copy()
    crops[:, 1] = crops[:, 0]  # a live middle channel, as today's line sends
    out = Classifier(made / "bundle", device="cpu").classify(crops)
    assert (out.reasons != "").all() and (out.routes == "maybe").all()


@pytest.mark.skipif(not RUNTIME_ONLY, reason="the full install has the command's modules")
def test_the_command_in_the_base_install_names_the_extra_it_needs():
    out = subprocess.run(
        [sys.executable, "-m", "pitguard", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "needs the training install" in out.stderr and "pitguard[train]" in out.stderr


def test_the_names_bundles_carry_on_disk_stay_as_written():
    """Bundles written by earlier versions carry these names in their files: they never move."""
    from pitguard.runtime import bundle

    assert bundle.GUARD_METADATA_KEY == "pitguard.input_guard"
    assert bundle.POLICY_METADATA_KEY == "pitguard.policy"
    assert bundle.BUNDLE_JSON == "bundle.json"


def test_many_crops_are_scored_in_chunks_alike(made, expected, monkeypatch):
    import pitguard.runtime.classifier as classifier_module

    clf = Classifier(made / "bundle", device="cpu")
    whole = clf.classify(expected["crops"])
    seen: list[int] = []
    real = clf.session.run

    def counting(names, feeds):
        seen.append(len(feeds["crops"]))
        return real(names, feeds)

    monkeypatch.setattr(classifier_module, "CHUNK", 16)
    monkeypatch.setattr(clf.session, "run", counting, raising=False)
    chunked = clf.classify(expected["crops"])
    assert max(seen) <= 16 and sum(seen) == len(expected["crops"])
    assert list(chunked.routes) == list(whole.routes)
    assert np.array_equal(chunked.p_pit, whole.p_pit) and list(chunked.reasons) == list(
        whole.reasons
    )
