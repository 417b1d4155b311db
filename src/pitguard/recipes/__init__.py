"""The shipped recipes: named YAML files of overrides, each opening with what it reproduces."""

from __future__ import annotations

import difflib
from importlib import resources

from pitguard.errors import PitguardError

__all__ = ["recipe_names", "recipe_summary", "recipe_text"]


def recipe_names() -> list[str]:
    folder = resources.files("pitguard.recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_text(name: str) -> str:
    names = recipe_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise PitguardError(f"unknown recipe {name!r}{hint} (see `pitguard recipes`)")
    return (resources.files("pitguard.recipes") / f"{name}.yaml").read_text()


def recipe_summary(name: str) -> str:
    """The first comment line of a recipe: the experiment it reproduces."""
    for line in recipe_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
