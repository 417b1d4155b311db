"""Tests for pitguard.decision.review: suspects ranked from out-of-fold scores with per-class thresholds,
a contact sheet a person can read, and relabels applied as a new manifest."""

import csv
from pathlib import Path

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from pitguard.data.manifest import read_manifest
from pitguard.decision.review import apply_relabel, rank_suspects, review_run
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import RunPaths


def test_each_class_has_its_own_threshold_not_one_cut_off():
    # columns (clean, pit); the model is sure of clean crops (mean 0.9) and unsure of pits (0.6)
    probs = np.array(
        [
            [0.95, 0.05],
            [0.9, 0.1],
            [0.85, 0.15],
            [0.38, 0.62],  # labelled clean
            [0.3, 0.7],
            [0.4, 0.6],
            [0.5, 0.5],
            [0.55, 0.45],
        ]  # labelled pit
    )
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    suspects, thresholds = rank_suspects(probs, labels)
    assert thresholds == pytest.approx([probs[:4, 0].mean(), probs[4:, 1].mean()])
    # the clean crop at p(pit) 0.62 reaches the pit threshold (0.5625); the pit crop at
    # p(clean) 0.55, below the clean threshold (0.77), is no suspect though argmax says clean
    assert [s.index for s in suspects] == [3]
    assert suspects[0].suggested == 1 and suspects[0].self_confidence == pytest.approx(0.38)


def test_suspects_are_ranked_by_the_probability_of_their_own_label():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    suspects, _ = rank_suspects(probs, labels)
    assert [s.index for s in suspects] == [1, 4, 2]  # self-confidence 0.2, 0.2, 0.4


def test_review_writes_every_suspect_and_a_sheet_of_the_top_ones(crossfit_run, tmp_path):
    result = review_run(crossfit_run, tmp_path / "review", top=3)
    with (tmp_path / "review" / "suspects.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result["n_suspects"] > 0
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    oof = read_oof(crossfit_run)
    assert result["n_scored"] == len(oof.paths)
    assert all((tmp_path / "review" / r["path"]).is_file() for r in rows)
    assert all(r["label"] != r["suggested"] and r["decision"] == "" for r in rows)
    page = (tmp_path / "review" / "suspects.html").read_text()
    assert page.count("<div class=card>") == min(3, len(rows))
    assert page.count("data:image/png;base64,") == 2 * min(3, len(rows))  # two exposures each


def _decide(review: Path, decisions: dict[int, str]) -> Path:
    path = review / "suspects.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, d in decisions.items():
        rows[i]["decision"] = d
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_relabels_become_a_new_manifest_with_every_change_listed(crossfit_run, tmp_path):
    review_run(crossfit_run, tmp_path / "review")
    before = (RunPaths(crossfit_run).split).read_bytes()
    decisions = _decide(tmp_path / "review", {0: "", 1: "drop", 2: "keep"})
    with decisions.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    decisions = _decide(tmp_path / "review", {0: rows[0]["suggested"]})
    result = apply_relabel(crossfit_run, decisions, tmp_path / "fixed")
    assert result["relabelled"] == 1 and result["dropped"] == 1
    assert RunPaths(crossfit_run).split.read_bytes() == before  # the run is untouched
    old = {str(r.path): r for r in read_manifest(RunPaths(crossfit_run).split)}
    new = {str(r.path): r for r in read_manifest(tmp_path / "fixed" / "relabelled.csv")}
    first = str((tmp_path / "review" / rows[0]["path"]).resolve())
    second = str((tmp_path / "review" / rows[1]["path"]).resolve())
    assert len(new) == len(old) - 1 and second not in new
    assert new[first].label == rows[0]["suggested"] != old[first].label
    assert (new[first].split, new[first].fold) == (old[first].split, old[first].fold)
    with (tmp_path / "fixed" / "changes.csv").open(newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert sorted(c["new_label"] for c in listed) == sorted(["drop", rows[0]["suggested"]])


@pytest.mark.parametrize(
    "decision, message", [("maybe-pit", "write one of"), ("pit", "is not a crop of")]
)
def test_a_bad_decision_stops_before_anything_is_written(crossfit_run, tmp_path, decision, message):
    review_run(crossfit_run, tmp_path / "review")
    decisions = _decide(tmp_path / "review", {0: decision})
    if message == "is not a crop of":
        text = decisions.read_text().splitlines()
        text[1] = "1,../elsewhere.png," + text[1].split(",", 2)[2]
        decisions.write_text("\n".join(text) + "\n")
    with pytest.raises(PitguardError, match=message):
        apply_relabel(crossfit_run, decisions, tmp_path / "fixed")
    assert not (tmp_path / "fixed").exists()


def test_review_needs_out_of_fold_scores(trained_run, tmp_path):
    with pytest.raises(PitguardError, match="--folds"):
        review_run(trained_run, tmp_path / "review")


def test_decisions_saved_with_a_byte_order_mark_are_read(tmp_path):
    """Spreadsheet programs save CSV with a UTF-8 byte order mark before the first column."""
    import codecs

    from pitguard.runtime.queue import ReviewQueue
    from tests.conftest import random_crop

    queue = ReviewQueue(tmp_path / "queue")
    for i in range(2):
        queue.offer(random_crop(i), f"line/{i}.png", "maybe", 0.5)
    review_run(tmp_path / "queue", tmp_path / "review")
    with (tmp_path / "review" / "suspects.csv").open(newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    decisions = tmp_path / "review" / "labels.csv"  # a person's own file: path first
    text = "path,decision\r\n" + "".join(
        f"{p},{d}\r\n" for p, d in zip(paths, ("pit", "clean"), strict=True)
    )
    decisions.write_bytes(codecs.BOM_UTF8 + text.encode())
    result = apply_relabel(tmp_path / "queue", decisions, tmp_path / "fixed")
    assert result["relabelled"] == 2 and result["rows"] == 2
