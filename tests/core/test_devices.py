"""Tests for pitguard.core.devices: the device choice names the setting and the way out."""

import pytest
import torch

from pitguard.core.devices import pick_device, usable_cores
from pitguard.core.errors import PitguardError


def test_device_choice_names_the_setting_and_the_choices():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PitguardError, match=r"train.device='tpu': use auto or cpu or cuda"):
        pick_device("tpu", "train.device")
    with pytest.raises(PitguardError, match=r"--device='auto': use cpu or cuda"):
        pick_device("auto", "--device", allowed=("cpu", "cuda"))
    assert usable_cores() >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_use_instead():
    with pytest.raises(PitguardError, match=r"--device=cuda but no CUDA device .*; use cpu$"):
        pick_device("cuda", "--device", allowed=("cpu", "cuda"))
