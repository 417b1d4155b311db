"""The line's classifier stage: one frame's crops in, the detector's label codes out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pitguard.runtime import LINE_CODES, LineStage

LINE_SAMPLE = Path(__file__).resolve().parents[3] / "shared/line_sample/crops_226.npy"


def test_codes_follow_the_routes(made, expected):
    stage = LineStage(made / "bundle", device="cpu")
    codes = stage(expected["crops"].astype(np.float32) / 255)
    assert codes.dtype == np.int64 and len(codes) == len(expected["crops"])
    assert list(codes) == [LINE_CODES[r] for r in expected["routes"]]
    assert stage.last is not None and len(stage.last.p_pit) == len(codes)


def test_a_frame_without_cherries_gets_no_codes(made):
    stage = LineStage(made / "bundle", device="cpu")
    assert stage(np.zeros((0, 3, 128, 128), np.float32)).shape == (0,)
    assert stage.last is not None and stage.last.error == "" and len(stage.last) == 0


def test_a_torch_frame_is_answered_in_torch_on_its_device(made, expected):
    torch = pytest.importorskip("torch")
    stage = LineStage(made / "bundle", device="cpu")
    x = expected["crops"].astype(np.float32) / 255
    result = stage.frame(torch.from_numpy(x))
    assert isinstance(result.codes, torch.Tensor) and result.codes.dtype == torch.int64
    assert result.codes.device == torch.device("cpu")
    assert result.codes.tolist() == list(stage(x))
    probs = result.confidence_probs
    assert isinstance(probs, torch.Tensor) and tuple(probs.shape) == (len(x), 3)
    # a clean/pit bundle: (1 - p_pit, 0, p_pit), the detector's columns clean, maybe, pit
    assert np.allclose(probs[:, 2].numpy(), result.p_pit) and probs[:, 1].abs().max() == 0
    assert torch.allclose(probs.sum(1), torch.ones(len(x)))


def test_the_plants_next_lines_run_on_its_output(made, expected):
    """ai_detector3.py's detect(): side cherries get 3, then everything goes to the host."""
    torch = pytest.importorskip("torch")
    stage = LineStage(made / "bundle", device="cpu")
    sub_tensors = torch.from_numpy(expected["crops"][:8].astype(np.float32) / 255)
    boxes = torch.tensor([[100.0, 70, 180, 150]] + [[300.0, 70, 380, 150]] * 7)
    frame = stage.frame(sub_tensors)
    labels_masked, probs = frame.codes, frame.confidence_probs  # what classify() keeps
    labels = torch.where(boxes[:, 0] < 125, 3, labels_masked)
    labels = torch.where(boxes[:, 2] > 2340, 3, labels)
    out, confidence_probs = labels.cpu().numpy(), probs.cpu().numpy()
    assert out[0] == 3 and list(out[1:]) == frame.codes[1:].tolist()
    assert confidence_probs.shape == (8, 3) and confidence_probs.dtype == np.float32


@pytest.mark.gpu
def test_a_cuda_frame_is_answered_on_the_gpu(made, expected):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    stage = LineStage(made / "bundle", device="cpu")
    x = torch.from_numpy(expected["crops"][:4].astype(np.float32) / 255).cuda()
    frame = stage.frame(x)
    assert frame.codes.device == x.device and frame.confidence_probs.device == x.device


def bad_frames(expected) -> list[tuple[str, np.ndarray, int, str]]:
    """(name, crops, crops the answer covers, words its reason holds)."""
    good = expected["crops"][:4].astype(np.float32) / 255
    patch = good.copy()
    patch[1, :, 30:40, 30:40] = np.nan
    return [
        ("one NaN patch", patch, 4, "not finite"),
        ("all NaN", np.full_like(good, np.nan), 4, "not finite"),
        ("an inf", np.where(good > 0.5, np.inf, good).astype(np.float32), 4, "not finite"),
        ("values 0-255", good * 255, 4, "in [0, 1]"),
        ("channels last", good.transpose(0, 2, 3, 1).copy(), 4, "expected (N, 3, 128, 128)"),
        ("100x100", np.zeros((2, 3, 100, 100), np.float32), 2, "expected (N, 3, 128, 128)"),
        ("int32", np.zeros((2, 3, 128, 128), np.int32), 2, "int32"),
        ("empty, channels last", np.zeros((0, 128, 128, 3), np.float32), 0, "(0, 128, 128, 3)"),
        ("flat", np.zeros(1000, np.float32), 1, "shape (1000,)"),
    ]


@pytest.mark.parametrize("index", range(9))
def test_a_bad_frame_is_answered_maybe_never_raised(made, expected, caplog, index):
    name, crops, count, words = bad_frames(expected)[index]
    stage = LineStage(made / "bundle", device="cpu")
    result = stage.frame(crops, label=name)
    assert list(result.codes) == [LINE_CODES["maybe"]] * count, name
    assert words in result.error, (name, result.error)
    assert result.confidence_probs.shape == (count, 3) and np.isnan(result.p_pit).all()
    assert f"{name}: {count} crops sent to review unscored" in caplog.text
    good = expected["crops"][:4].astype(np.float32) / 255
    assert stage.frame(good).error == ""  # the stage goes on


def test_a_frame_over_max_crops_is_refused_unscored(made, expected):
    stage = LineStage(made / "bundle", device="cpu", max_crops=3)
    result = stage.frame(expected["crops"][:4].astype(np.float32) / 255)
    assert list(result.codes) == [LINE_CODES["maybe"]] * 4
    assert "more than max_crops 3" in result.error


def test_warm_up_scores_a_blank_frame(made):
    stage = LineStage(made / "bundle", device="cpu")
    assert stage.warm_up(4) > 0
    assert stage.last is None  # a warm-up is not a frame of the line


@pytest.mark.shared_data
def test_the_lines_own_crops_go_to_review_naming_the_channel(made):
    if not LINE_SAMPLE.is_file():
        pytest.skip(f"{LINE_SAMPLE} is absent")
    crops = np.load(LINE_SAMPLE)  # three live channels: bot1, bot2, top2
    stage = LineStage(made / "bundle", device="cpu")
    assert list(stage(crops)) == [LINE_CODES["maybe"]] * len(crops)
    assert all("channel 1 carries image" in r for r in stage.last.reasons)
