"""Tests for pitguard.studies.denormal: both flush settings timed, weights counted."""

import pytest

from pitguard.studies.denormal import denormal_effect


def test_denormal_effect_reports_both_settings_and_the_counts():
    result = denormal_effect(
        "pitguard_tiny", batch_size=2, threads=1, warmup=1, min_runs=3, min_seconds=0
    )
    assert result["model"] == "pitguard_tiny" and result["model_name"] == "pitguard_tiny"
    assert result["separate_processes"] is False
    as_is, scaled = result["as_is"], result["scaled_copy"]
    assert as_is["weights"]["denormal"] == 0  # fresh random weights hold no denormals
    assert scaled["weights"]["denormal"] > 0
    assert scaled["weights"]["values"] == as_is["weights"]["values"]
    for part in (as_is, scaled):
        assert part["flush_on"]["runs"] >= 3 and part["flush_off"]["runs"] >= 3
        assert part["slowdown_without_flush"] == pytest.approx(
            part["flush_off"]["p50_ms"] / part["flush_on"]["p50_ms"]
        )
    assert "meaningless" in scaled["note"]


def test_denormal_effect_on_a_bundle_names_its_model(bundle):
    result = denormal_effect(
        str(bundle),
        batch_size=1,
        threads=1,
        scaled=False,
        warmup=0,
        min_runs=2,
        min_seconds=0,
    )
    assert result["kind"] == "bundle" and result["model_name"] == "pitguard_tiny"
    assert result["denormals_zeroed_at_export"] is not None
    assert "scaled_copy" not in result
