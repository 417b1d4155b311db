"""The node's parameters read into typed settings, every bad one named at once (no rclpy)."""

from __future__ import annotations

import pytest

from pitguard.core.errors import PitguardError
from pitguard.ros.params import PARAMETERS, read_settings


def test_defaults_with_a_bundle():
    s = read_settings({"bundle": "/opt/bundles/line"})
    assert (s.device, s.graph, s.threads, s.second_look) == ("auto", "onnx", 0, True)
    assert s.summary_period == 5.0 and s.max_crops == 256


def test_a_whole_number_for_a_period_and_a_word_for_a_switch_are_taken():
    s = read_settings({"bundle": "b", "summary_period": 1, "second_look": "false"})
    assert s.summary_period == 1.0 and s.second_look is False


def test_every_bad_value_is_named_at_once():
    with pytest.raises(PitguardError) as err:
        read_settings({"bundle": "b", "threads": -1, "max_crops": 0, "summary_period": "x"})
    text = str(err.value)
    assert "threads -1" in text and "max_crops 0" in text and "summary_period 'x'" in text


def test_a_missing_bundle_says_how_to_give_it():
    with pytest.raises(PitguardError, match="bundle:=DIR"):
        read_settings({})


def test_an_unknown_name_gets_the_closest():
    with pytest.raises(PitguardError, match="thread: unknown \\(did you mean threads\\?\\)"):
        read_settings({"bundle": "b", "thread": 2})


def test_every_parameter_says_what_it_is_for():
    assert all(len(words) > 10 for _, words in PARAMETERS.values())
