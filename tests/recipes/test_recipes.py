"""The published recipes: each one ships as a file, reads, and names its purpose in one line."""

from __future__ import annotations

import pytest
import yaml

from pitguard.config import load_config
from pitguard.core.errors import PitguardError
from pitguard.recipes import recipe_names, recipe_summary, recipe_text


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_reads_and_keeps_its_history_out(name):
    text = recipe_text(name)
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert len(comments) <= 3, f"{name}: {len(comments)} comment lines; history goes to the log"
    assert yaml.safe_load(text), name
    assert load_config(recipe=name).recipe == name
    assert recipe_summary(name)


def test_unknown_recipe_is_refused_with_the_names():
    with pytest.raises(PitguardError, match="cpu-fast"):
        recipe_text("cpu-fastt")
