"""Find the run folders a report covers, each once, and name them."""

from __future__ import annotations

import os
from pathlib import Path

from pitguard.core.errors import PitguardError
from pitguard.models.runfolder import INNER_FOLDERS, RunPaths, is_run


def find_run_dirs(path: str | Path) -> list[Path]:
    """PATH itself when it is a run folder, else the run folders one or two levels below it."""
    path = Path(path)
    model = RunPaths(path).model.name
    if not path.exists():
        raise PitguardError(
            f"{path}: no such folder; give a run folder written by pitguard train "
            f"(one with {model}) or a folder holding run folders"
        )
    if is_run(path):
        return [path]
    if not path.is_dir():
        raise PitguardError(
            f"{path}: is a file; give a run folder (one with {model}) or a folder holding runs"
        )
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if child.name.startswith(".") or child.name in INNER_FOLDERS | {"__pycache__"}:
            continue
        if is_run(child):
            found.append(child)
            continue
        found += [
            g
            for g in sorted(p for p in child.iterdir() if p.is_dir())
            if not g.name.startswith(".") and is_run(g)
        ]
    if not found:
        raise PitguardError(
            f"{path}: not a run folder and holds none (no {model} here or one or two levels "
            "below); give run folders written by pitguard train, e.g. pitguard report runs/"
        )
    return found


def run_names(runs: list[Path]) -> list[str]:
    """Folder names, or paths below the common parent where two runs share a name."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    resolved = [r.resolve() for r in runs]
    common = Path(os.path.commonpath([str(r) for r in resolved]))
    return [str(r.relative_to(common)) for r in resolved]


def run_dirs(paths) -> list[Path]:
    """The run folders under each of PATHS (see find_run_dirs), each once, in order."""
    if isinstance(paths, str | Path):
        paths = [paths]
    runs: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for run in find_run_dirs(p):
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    if not runs:
        raise PitguardError("no runs given; name run folders or folders holding runs")
    return runs
