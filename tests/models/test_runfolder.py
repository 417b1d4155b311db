"""Tests for pitguard.models.runfolder: the one owner of a run folder's files and data parts."""

import json

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from pitguard.models.runfolder import (
    RunPaths,
    is_run,
    load_part,
    load_policy,
    load_run,
    run_logits,
    split_parts,
)


def test_every_file_a_trained_run_has_is_named_by_run_paths(trained_run):
    paths = RunPaths(trained_run)
    for name in ("config", "data", "split", "model", "weights", "summary", "history_jsonl"):
        assert getattr(paths, name).is_file(), name
    assert paths.last_checkpoint.is_file() and paths.best_checkpoint.is_file()
    assert is_run(trained_run) and not is_run(paths.checkpoints)
    assert load_policy(trained_run) is None  # never calibrated
    assert not list(trained_run.rglob(".*.tmp*"))  # atomic writes leave no temporaries


def test_load_part_records_source_and_part_apart(trained_run):
    run = load_run(trained_run)
    ev = load_part(run, None, None)
    assert ev.source == RunPaths(trained_run).split and ev.part == "test"
    assert ev.description == f"{ev.source} [test]" and len(ev.labels) == len(ev.crops)
    counts = json.loads(RunPaths(trained_run).data.read_text())["counts"]
    assert len(ev.labels) == sum(counts["test"].values())
    whole = load_part(run, trained_run.parent / "crops", None)
    assert whole.part == "all" and len(whole.labels) == 600
    with pytest.raises(PitguardError, match=r"no 'holdout' part; found calib, test, train, val"):
        load_part(run, None, "holdout")
    logits = run_logits(run, ev.crops)
    assert logits.shape == (len(ev.labels), 2) and np.isfinite(logits.numpy()).all()


def test_split_parts_name_each_crop_once(trained_run, calibrated_run):
    parts = split_parts(trained_run)
    assert parts is not None and len(parts) == 600
    assert {part for _, part in parts} == {"train", "val", "calib", "test"}
    assert split_parts(calibrated_run) == parts  # a copied run keeps the same split
    assert load_policy(calibrated_run) is not None
