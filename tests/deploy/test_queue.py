"""The review queue as data: predict and serve keep the crops routed to review, unlabelled, and
people's decisions turn them into a manifest training reads."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pitguard.core.errors import PitguardError
from pitguard.data.layout import find_dataset
from pitguard.data.manifest import read_manifest
from pitguard.decision.review import apply_relabel, review_run
from pitguard.deploy.predict import Predictor, predict_files
from pitguard.deploy.serve import create_app
from pitguard.runtime.queue import ReviewQueue, parse_routes


@pytest.fixture(scope="module")
def pngs(trained_run) -> list[Path]:
    return sorted((trained_run.parent / "crops").rglob("*.png"))[::10]


def _queue_rows(queue: Path) -> list[dict]:
    with (queue / "queue.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_queues_exactly_the_crops_routed_to_review(bundle, pngs, tmp_path):
    queue = ReviewQueue(tmp_path / "q", ("maybe", "pit"))
    result = predict_files(Predictor(bundle), pngs, None, queue=queue, keep_rows=True)
    wanted = {r["path"]: r for r in result["rows"] if r["route"] in ("maybe", "pit")}
    rows = _queue_rows(tmp_path / "q")
    assert wanted and result["queued"] == len(rows) == len(wanted)
    for row in rows:
        source = wanted[row["source"]]
        assert row["label"] == "" and row["route"] == source["route"]
        assert float(row["p_pit"]) == pytest.approx(float(source["p_pit"]), abs=1e-6)
        kept = np.asarray(Image.open(tmp_path / "q" / row["path"]))
        assert np.array_equal(kept, np.asarray(Image.open(row["source"])))  # the crop as scored


def test_a_sample_of_every_route_can_be_kept_too(bundle, pngs, tmp_path):
    queue = ReviewQueue(tmp_path / "q", ("maybe",), sample=1.0)
    predict_files(Predictor(bundle), pngs, None, queue=queue)
    assert len(_queue_rows(tmp_path / "q")) == len(pngs)


def test_bad_queue_settings_are_refused(tmp_path):
    with pytest.raises(PitguardError, match="choose from clean, maybe, pit"):
        parse_routes("maybe,review")
    with pytest.raises(PitguardError, match="between 0 and 1"):
        ReviewQueue(tmp_path / "q", sample=1.5)


def test_serve_queues_what_it_routes_to_review(bundle, pngs, tmp_path):
    queue = ReviewQueue(tmp_path / "q", ("clean", "maybe", "pit"))
    with TestClient(create_app(bundle, queue=queue)) as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in pngs[:5]]
        answer = client.post("/v1/classify", files=files).json()
    rows = _queue_rows(tmp_path / "q")
    assert [r["route"] for r in rows] == [r["route"] for r in answer["results"]]
    assert [r["source"] for r in rows] == [f"http:{p.name}" for p in pngs[:5]]


def test_a_labelled_queue_becomes_a_manifest_training_reads(bundle, pngs, tmp_path):
    queue = ReviewQueue(tmp_path / "q", ("clean", "maybe", "pit"))
    predict_files(Predictor(bundle), pngs[:6], None, queue=queue)
    with pytest.raises(PitguardError, match="no label"):
        read_manifest(tmp_path / "q" / "queue.csv")  # unlabelled: refused, with the fix
    summary = review_run(tmp_path / "q", tmp_path / "review", top=3)
    assert summary["n_scored"] == 6
    sheet = tmp_path / "review" / "suspects.csv"
    with sheet.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    p = [float(r["p_pit"]) for r in rows]
    assert p == sorted(p, reverse=True)  # the most pit-like first
    for r, decision in zip(rows, ["pit", "clean", "drop", "", "pit", "clean"], strict=True):
        r["decision"] = decision
    with sheet.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = apply_relabel(tmp_path / "q", sheet, tmp_path / "labelled")
    index = find_dataset(result["manifest"])
    assert len(index.items) == 4 and index.counts() == {"clean": 2, "pit": 2}
