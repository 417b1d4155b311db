"""Tests for pitguard.runtime.backends: one registry of backend names, files and export flags."""

import pytest

from pitguard.core.errors import PitguardError
from pitguard.runtime.backends import BACKENDS, auto_backend, get_backend


def test_names_aliases_and_auto():
    assert get_backend("torch") is BACKENDS["eager"]  # predict's historical name
    assert get_backend("onnx-int8").file_name == "model.int8.onnx"
    assert auto_backend({"weights": "model.safetensors", "onnx": "model.onnx"}).name == "onnx"
    assert auto_backend({"weights": "model.safetensors"}).name == "eager"
    for b in BACKENDS.values():  # every ONNX graph can be asked for at export
        assert (b.runtime == "onnx") == (b.export_flag is not None)


def test_unknown_and_unservable_backends_are_refused_with_choices():
    with pytest.raises(PitguardError, match=r"backend 'onxx': unknown \(did you mean onnx\?\)"):
        get_backend("onxx")
    with pytest.raises(PitguardError, match=r"bench only, not loaded by predict or serve"):
        get_backend("eager-bf16", serving=True)
    with pytest.raises(PitguardError, match=r"choose from auto, eager, onnx, onnx-int8, onnx-fp16"):
        get_backend("tensorrt", serving=True)
