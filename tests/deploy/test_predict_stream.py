"""predict streams and loses nothing: the output is checked before any inference, rows are
written in batches to a file that appears whole, and every unreadable entry of a folder gets
a row of its own."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

import pitguard
from pitguard.cli import main
from pitguard.data.synth import synthesize
from pitguard.deploy.predict import Predictor, predict_files, walk_images


@pytest.fixture
def crops(tmp_path) -> Path:
    out = tmp_path / "in"
    synthesize(out, count=10, seed=4)
    return out


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_an_output_that_cannot_be_written_stops_before_any_inference(
    bundle, crops, tmp_path, monkeypatch, capsys
):
    calls = []
    monkeypatch.setattr(Predictor, "predict_uint8", lambda self, x: calls.append(x))
    (tmp_path / "afile").write_text("")
    assert (
        main(["predict", str(bundle), str(crops), "--out", str(tmp_path / "afile" / "p.csv")]) == 3
    )
    assert main(["predict", str(bundle), str(crops), "--out", str(tmp_path)]) == 2  # a folder
    assert calls == [] and "is a folder" in capsys.readouterr().err


def test_rows_are_streamed_in_bounded_batches_in_input_order(bundle, crops, tmp_path, monkeypatch):
    sizes = []
    real = Predictor.predict_uint8

    def counted(self, x):
        sizes.append(len(x))
        return real(self, x)

    monkeypatch.setattr(Predictor, "predict_uint8", counted)
    (crops / "cherry_clean" / "bad.png").write_bytes(b"no image")
    seen = []
    out = tmp_path / "p.csv"
    result = predict_files(pitguard.load(bundle), [crops], out, batch_size=4, on_row=seen.append)
    assert sizes == [4, 4, 2] and result["n"] == 11 and result["failed"] == 1
    assert result["rows"] is None  # nothing kept in memory unless asked
    rows = _rows(out)
    assert [r["path"] for r in rows] == [r["path"] for r in seen] == sorted(r["path"] for r in rows)
    assert sum(bool(r["error"]) for r in rows) == 1


def test_a_crash_midway_leaves_no_partial_csv(bundle, crops, tmp_path, monkeypatch):
    real = Predictor.predict_uint8
    calls = iter(range(10))

    def dies_second_time(self, x):
        if next(calls) == 1:
            raise RuntimeError("power cut")
        return real(self, x)

    monkeypatch.setattr(Predictor, "predict_uint8", dies_second_time)
    out = tmp_path / "p.csv"
    with pytest.raises(RuntimeError):
        predict_files(pitguard.load(bundle), [crops], out, batch_size=4)
    assert not out.exists() and not list(tmp_path.glob(".p.csv.tmp*"))


def test_broken_links_link_loops_and_unreadable_folders_get_rows(crops, tmp_path, monkeypatch):
    pit = crops / "cherry_pit"
    os.symlink(tmp_path / "gone.png", pit / "broken.png")
    os.symlink(crops, pit / "loop")  # a folder linking back to the walk's root
    (pit / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = dict(walk_images([crops]))
    assert found[pit / "broken.png"].startswith("broken symbolic link")
    assert found[pit / "loop"].startswith("symbolic link loop")
    assert found[pit / "locked"].startswith("cannot list this folder: Permission denied")
    assert sum(reason is None for reason in found.values()) == 10
