"""A cascade's second stage taken from another run: its model, and the checks that it scores only
crops it never trained on (:mod:`pitguard.decision.cascade` certifies the cascade).

``policy.json``'s ``second_look`` names that run under ``model``: where it lies, its network and
the sha256 of its weights, so a run trained again or replaced after calibration is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from pitguard.core.errors import PitguardError
from pitguard.core.files import file_sha256
from pitguard.models.runfolder import EvalData, RunModel, RunPaths, is_run, load_run, split_parts

SEEN_PARTS = ("train", "val")  # what a run trained on or chose its epoch on


def crop_keys(ev: EvalData) -> list[str]:
    """The real paths of ``ev``'s crops (links followed: two manifests may reach one crop by
    different names)."""
    root = Path(ev.source).parent if Path(ev.source).is_file() else Path(ev.source)
    return [os.path.realpath(root / p) for p in ev.crops.paths]


def crop_contents(ev: EvalData) -> list[str]:
    """The sha256 of each of ``ev``'s crop files: the same crop copied to another folder, or
    reached by another split, is the same crop."""
    root = Path(ev.source).parent if Path(ev.source).is_file() else Path(ev.source)
    return [content_key(root / p) for p in ev.crops.paths]


def content_key(path: str | Path) -> str:
    """A crop file's identity by content (its path where it cannot be read)."""
    try:
        return "sha256:" + file_sha256(path)
    except OSError:
        return "path:" + os.path.realpath(path)


def second_model_facts(run2: RunModel) -> dict:
    """What ``policy.json`` records of the run whose model is the second stage."""
    return {
        "run": str(run2.run.resolve()),
        "model_name": run2.model_name,
        "sha256": file_sha256(RunPaths(run2.run).weights),
    }


def check_second_model(run: RunModel, run2: RunModel) -> None:
    """``run2`` can score what ``run`` scores: the same classes in the same order, crops of the
    same size."""
    if tuple(run2.classes) != tuple(run.classes):
        raise PitguardError(
            f"{run2.run}: classes {', '.join(run2.classes)}, but {run.run} has "
            f"{', '.join(run.classes)}; a second stage must decide the same classes"
        )
    if run2.net.contract.size != run.net.contract.size:
        raise PitguardError(
            f"{run2.run}: reads {run2.net.contract.size} px crops, {run.run} "
            f"{run.net.contract.size} px; both stages take the same crops"
        )


def refuse_seen(run2: RunModel, keys: list[str], what: str) -> None:
    """Refuse a second stage that trained on (or chose its epoch on) any of the crops whose
    contents are ``keys`` (:func:`crop_contents`), wherever its copies lie: its scores of them
    would be too confident and the bounds would not hold."""
    parts = split_parts(run2.run)
    if parts is None:
        raise PitguardError(
            f"{run2.run}: records no split, so what it trained on is unknown; a second stage "
            "must be trained by pitguard train on the first stage's split (give its split.csv "
            "as --data)"
        )
    seen = {content_key(path) for path, part in parts if part in SEEN_PARTS}
    hits = [k for k in keys if k in seen]
    if hits:
        raise PitguardError(
            f"{run2.run}: trained on {len(hits)} of the {len(keys)} {what} (the same bytes, "
            f"wherever they lie; first: {hits[0]}); "
            "a second stage scores only crops it never trained on: train it on the first "
            "stage's split (give RUN/split.csv as --data, with the same --folds for a cross-fit)"
        )


def load_second_model(look: dict | None) -> RunModel | None:
    """The run a second look names under ``model`` (None when the second look is the first
    stage's own network), refused if it moved or changed since calibration."""
    facts = (look or {}).get("model")
    if not facts:
        return None
    where = Path(facts["run"])
    if not is_run(where):
        raise PitguardError(
            f"{where}: the second look's model is gone; put the run back or calibrate again "
            "with --second-look-model"
        )
    if file_sha256(RunPaths(where).weights) != facts.get("sha256"):
        raise PitguardError(
            f"{RunPaths(where).weights}: changed since the cascade was calibrated on it; "
            "calibrate again"
        )
    return load_run(where)
