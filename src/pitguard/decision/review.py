"""Label review: crops whose out-of-fold scores contradict their labels, ranked for a person, and
that person's decisions applied as a new manifest. A review queue (``predict``/``serve
--queue``) is reviewed the same way: its crops carry no label yet, and the decisions label them.

Ranking follows confident learning (Northcutt, Jiang and Chuang 2021): each class j gets its own
threshold, the mean out-of-fold probability of j among crops labelled j; a crop labelled i is a
suspect when its probability of another class j reaches that class's threshold. Suspects are
ranked by how little probability the model gives their own label (self-confidence), lowest
first. The scores come from models that never trained on the crop, so a crop cannot vouch for
its own label.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_write, atomic_write_text
from pitguard.data.load import DecodeOptions, decode_bytes, read_crop
from pitguard.data.manifest import ManifestRow, read_manifest, write_manifest
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import RunPaths
from pitguard.runtime.queue import QUEUE_CSV, is_queue

SUSPECTS_CSV, SUSPECTS_HTML = "suspects.csv", "suspects.html"
RELABELLED, CHANGES = "relabelled.csv", "changes.csv"
KEEP, DROP = "keep", "drop"


@dataclass(frozen=True)
class Suspect:
    index: int  # row of the scores
    label: int
    suggested: int
    self_confidence: float  # probability of the given label


def rank_suspects(probs: np.ndarray, labels: np.ndarray) -> tuple[list[Suspect], np.ndarray]:
    """Suspects, most contradicted first, and the per-class thresholds used."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    n_classes = probs.shape[1]
    thresholds = np.array(
        [probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(n_classes)]
    )
    out = []
    for i, y in enumerate(labels):
        others = [j for j in range(n_classes) if j != y and probs[i, j] >= thresholds[j]]
        if others:
            j = max(others, key=lambda c: probs[i, c])
            out.append(Suspect(i, int(y), j, float(probs[i, y])))
    out.sort(key=lambda s: (s.self_confidence, s.index))
    return out, thresholds


def _queue_rows(queue: Path) -> list[dict]:
    with (queue / QUEUE_CSV).open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def review_queue(queue: Path, out: Path, top: int) -> dict:
    """A queue's crops for labelling, the most pit-like first, in the same two files."""
    rows = sorted(_queue_rows(queue), key=lambda r: -float(r["p_pit"] or 0))
    files = [(queue / r["path"]).resolve() for r in rows]
    out.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["rank", "path", "label", "suggested", "p_pit", "route", "decision"])
            for rank, (r, f) in enumerate(zip(rows, files, strict=True), start=1):
                rel = os.path.relpath(f, out.resolve())
                writer.writerow([rank, rel, "", "", r["p_pit"], r["route"], ""])

    atomic_write(out / SUSPECTS_CSV, write)
    cards = [
        _card(rank, f, "nothing yet", r["route"], float(r["p_pit"] or 0))
        for rank, (r, f) in enumerate(zip(rows[:top], files, strict=False), start=1)
    ]
    atomic_write_text(
        out / SUSPECTS_HTML,
        _page(queue, len(rows), {"unlabelled": len(rows)}, np.array([]), (), cards),
    )
    return {
        "run": str(queue),
        "n_scored": len(rows),
        "n_suspects": len(rows),
        "suspects_by_label": {"unlabelled": len(rows)},
        "shown": len(cards),
        "outputs": {"csv": str(out / SUSPECTS_CSV), "html": str(out / SUSPECTS_HTML)},
    }


def review_run(run: str | Path, out: str | Path, top: int = 60) -> dict:
    """Write OUT/suspects.csv (every suspect) and OUT/suspects.html (the top ones, both exposures).

    RUN is a cross-fitted run (its out-of-fold scores are ranked) or a review queue (its crops
    are listed for labelling)."""
    run, out = Path(run), Path(out)
    if is_queue(run):
        return review_queue(run, out, top)
    oof = read_oof(run)
    probs = torch.softmax(torch.from_numpy(oof.logits), dim=1).numpy()
    suspects, thresholds = rank_suspects(probs, oof.labels)
    out.mkdir(parents=True, exist_ok=True)
    files = [(run / p).resolve() for p in oof.paths]
    pit = oof.pit_index

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["rank", "path", "label", "suggested", "p_pit", "p_label", "fold", "decision"]
            )
            for rank, s in enumerate(suspects, start=1):
                writer.writerow(
                    [
                        rank,
                        os.path.relpath(files[s.index], out.resolve()),
                        oof.classes[s.label],
                        oof.classes[s.suggested],
                        f"{probs[s.index, pit]:.4f}",
                        f"{s.self_confidence:.4f}",
                        int(oof.folds[s.index]),
                        "",
                    ]
                )

    atomic_write(out / SUSPECTS_CSV, write)
    cards = [
        _card(
            rank,
            files[s.index],
            oof.classes[s.label],
            oof.classes[s.suggested],
            probs[s.index, pit],
        )
        for rank, s in enumerate(suspects[:top], start=1)
    ]
    flagged = {c: sum(s.label == i for s in suspects) for i, c in enumerate(oof.classes)}
    atomic_write_text(
        out / SUSPECTS_HTML, _page(run, len(files), flagged, thresholds, oof.classes, cards)
    )
    return {
        "run": str(run),
        "n_scored": len(files),
        "n_suspects": len(suspects),
        "suspects_by_label": flagged,
        "thresholds": {c: float(t) for c, t in zip(oof.classes, thresholds, strict=True)},
        "shown": len(cards),
        "outputs": {"csv": str(out / SUSPECTS_CSV), "html": str(out / SUSPECTS_HTML)},
    }


def _exposure_png(channel: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(channel).resize((192, 192), Image.Resampling.NEAREST).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _card(rank: int, path: Path, label: str, suggested: str, p_pit: float) -> str:
    try:
        data = read_crop(path)  # regular files only: a pipe or device is never opened
        if isinstance(data, str):
            raise ValueError(data)
        rgb, problem = decode_bytes(data, path.name, DecodeOptions(modes="convert", sizes="pad"))
        if rgb is None:
            raise ValueError(problem.reason if problem else "cannot decode")
        images = "".join(
            f'<figure><img alt="{name} exposure" src="data:image/png;base64,{_exposure_png(rgb[..., c])}">'
            f"<figcaption>{name}</figcaption></figure>"
            for c, name in ((0, "R"), (2, "B"))
        )
    except (OSError, ValueError, PitguardError) as err:
        images = f"<p class=err>cannot show: {html.escape(str(err))}</p>"
    return (
        f"<div class=card><div class=imgs>{images}</div><p>#{rank} {html.escape(path.name)}<br>"
        f"labelled <b>{label}</b>, scores say <b>{suggested}</b> (p(pit) {p_pit:.3f})</p></div>"
    )


def _page(run, n, flagged, thresholds, classes, cards) -> str:
    counts = ", ".join(f"{n_} labelled {c}" for c, n_ in flagged.items())
    cuts = ", ".join(f"{c} {t:.3f}" for c, t in zip(classes, thresholds, strict=True))
    intro = (
        f"""{sum(flagged.values())} of {n} crops scored out of fold contradict their label ({counts}).
Per-class thresholds (mean out-of-fold probability of the class among crops labelled with it):
{cuts}. Shown: the {len(cards)} most contradicted, each as its two exposures (R and B)."""
        if classes
        else f"""{n} crops queued for review, the most pit-like first; shown: {len(cards)}, each as
its two exposures (R and B)."""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pitguard label review</title>
<style>body{{font-family:sans-serif;margin:1.5em}}.card{{display:inline-block;margin:.5em;
padding:.5em;border:1px solid #ccc;vertical-align:top;width:410px}}figure{{display:inline-block;
margin:0 4px}}img{{image-rendering:pixelated}}figcaption{{text-align:center;font-size:80%}}</style>
</head><body><h1>Label review: {html.escape(str(run))}</h1>
<p>{intro}
To relabel, fill the <code>decision</code> column of {SUSPECTS_CSV} (a class, {DROP}, or
blank to keep) and run <code>pitguard data review {html.escape(str(run))} --relabel
{SUSPECTS_CSV} --out DIR</code>.</p>
{"".join(cards)}</body></html>
"""


def apply_relabel(run: str | Path, decisions: str | Path, out: str | Path) -> dict:
    """The run's split with a person's decisions applied: OUT/relabelled.csv and OUT/changes.csv.

    Every decision is checked before anything is written; the crop files are never touched.
    """
    run, decisions, out = Path(run), Path(decisions), Path(out)
    if is_queue(run):  # unlabelled crops: the decisions label them
        rows = [ManifestRow((run / r["path"]).resolve(), "") for r in _queue_rows(run)]
        classes = ["clean", "pit"]
    else:
        rows = read_manifest(RunPaths(run).split)
        classes = sorted({r.label for r in rows})
    by_path = {r.path.resolve(): i for i, r in enumerate(rows)}
    if not decisions.is_file():
        raise PitguardError(f"{decisions}: no such file; give the {SUSPECTS_CSV} you filled in")
    with decisions.open(newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM
        reader = csv.DictReader(fh)
        if not {"path", "decision"} <= set(reader.fieldnames or []):
            raise PitguardError(
                f"{decisions}: needs columns path and decision (as in {SUSPECTS_CSV})"
            )
        wanted: dict[int, str] = {}
        for line, rec in enumerate(reader, start=2):
            decision = (rec["decision"] or "").strip().lower()
            if decision in ("", KEEP):
                continue
            if decision not in (*classes, DROP):
                raise PitguardError(
                    f"{decisions}:{line}: decision {decision!r}; write one of "
                    f"{', '.join(classes)}, {DROP}, {KEEP} or leave it blank"
                )
            path = (decisions.parent / rec["path"]).resolve()
            if path not in by_path:
                raise PitguardError(f"{decisions}:{line}: {rec['path']} is not a crop of {run}")
            wanted[by_path[path]] = decision
    changes, kept = [], []
    for i, r in enumerate(rows):
        new = wanted.get(i, r.label)
        if new != r.label:
            changes.append((r.path, r.label or "unlabelled", new))
        if new not in (DROP, ""):  # a queue's crops nobody labelled are left out
            kept.append(ManifestRow(r.path, new, r.split, r.group, r.fold))
    if not kept:
        raise PitguardError(f"{decisions}: no crop is labelled; fill in the decision column")
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / RELABELLED, kept)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "old_label", "new_label"])
            for path, old, new in changes:
                writer.writerow([os.path.relpath(path, out.resolve()), old, new])

    atomic_write(out / CHANGES, write)
    return {
        "manifest": str(out / RELABELLED),
        "changes": str(out / CHANGES),
        "relabelled": sum(new != DROP for _, _, new in changes),
        "dropped": sum(new == DROP for _, _, new in changes),
        "rows": len(kept),
        "listed": [(str(p), old, new) for p, old, new in changes],
    }
