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
    assert stage.last is None


def test_a_tensor_like_batch_is_brought_to_the_host(made, expected):
    class Tensor:  # what the detector holds: a tensor with .detach().cpu().numpy()
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    stage = LineStage(made / "bundle", device="cpu")
    x = expected["crops"].astype(np.float32) / 255
    assert list(stage(Tensor(x))) == list(stage(x))


@pytest.mark.shared_data
def test_the_lines_own_crops_go_to_review_naming_the_channel(made):
    if not LINE_SAMPLE.is_file():
        pytest.skip(f"{LINE_SAMPLE} is absent")
    crops = np.load(LINE_SAMPLE)  # three live channels: bot1, bot2, top2
    stage = LineStage(made / "bundle", device="cpu")
    assert list(stage(crops)) == [LINE_CODES["maybe"]] * len(crops)
    assert all("channel 1 carries image" in r for r in stage.last.reasons)
