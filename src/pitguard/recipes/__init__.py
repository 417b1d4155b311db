"""Override files: the shipped recipes (named YAML, each opening with what it reproduces) and
users' YAML, read flat as ``section.key`` with the line each key is written on."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pitguard.core.errors import ConfigError, PitguardError

__all__ = ["flatten", "read_overrides", "recipe_names", "recipe_summary", "recipe_text"]


def recipe_names() -> list[str]:
    folder = resources.files("pitguard.recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_text(name: str) -> str:
    """A shipped recipe by name, or a recipe file (``.yaml``, e.g. a sweep's best-recipe.yaml)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise PitguardError(f"recipe file {name}: no such file")
        return path.read_text()
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


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def read_overrides(text: str, source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Flat ``section.key`` overrides from YAML text, and the line each key is written on."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise PitguardError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise PitguardError(
            f"{source}: expected a mapping of sections (data, model, augment, train)"
        )
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        for key_node, value_node in node.value:
            key = prefix + str(key_node.value)
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, key + ".")
            else:
                lines[key] = key_node.start_mark.line + 1

    if isinstance(root, yaml.MappingNode):
        walk(root, "")
    return flatten(loaded), lines


def parse_set(items: list[str] | None) -> dict[str, str]:
    """``--set section.key=value`` strings into overrides (values are parsed by the field's type)."""
    out: dict[str, str] = {}
    problems = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            problems.append(f"--set {item!r}: write section.key=value, e.g. train.lr=3e-4")
            continue
        out[key.strip()] = value.strip()
    if problems:
        raise ConfigError(problems)
    return out
