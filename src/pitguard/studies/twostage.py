"""The legacy two-stage "maybe" method, reproduced faithfully, and the routing comparison table.

Stage 1 trains a binary model. Mining relabels as ``maybe`` every train/val crop that stage 1
misclassifies or scores with 0.35 < p(pit) < 0.65. Stage 2 fine-tunes a 3-class model from the
stage 1 weights on the mined labels. Pits that stage 1 missed confidently stay "clean" for good,
and metrics on mined labels are circular: pitguard evaluates it on the untouched test part
against the original labels.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pitguard.config import Config
from pitguard.core.errors import PitguardError
from pitguard.core.files import write_json
from pitguard.data.layout import find_dataset
from pitguard.data.load import DecodeOptions, load_crops
from pitguard.data.manifest import read_manifest, write_manifest
from pitguard.evaluate.metrics import routed_metrics
from pitguard.models.runfolder import RunPaths, is_run, load_part, load_policy, load_run, run_logits
from pitguard.runtime.policy import Route
from pitguard.train.loop import train

_log = logging.getLogger(__name__)

MINE_LOW, MINE_HIGH = 0.35, 0.65


def mine_manifest(stage1: Path, out: Path) -> dict:
    """Relabel stage 1's mistakes and unsure crops of train and val as maybe; calib/test keep labels."""
    run = load_run(stage1)
    manifest = RunPaths(stage1).split
    index = find_dataset(manifest)
    ev_items = [it for it in index.items if it.split in ("train", "val")]
    crops = load_crops(index, DecodeOptions(size=run.net.contract.size), items=ev_items)
    probs = torch.softmax(run_logits(run, crops), 1).numpy()
    p_pit = probs[:, run.pit_index]
    labels = crops.labels.numpy()
    wrong = probs.argmax(1) != labels
    unsure = (p_pit > MINE_LOW) & (p_pit < MINE_HIGH)
    mined = {path for path, m in zip(crops.paths, wrong | unsure, strict=True) if m}
    rows = [
        replace(row, label="maybe")
        if row.split in ("train", "val") and index.relpath(row.path) in mined
        else row
        for row in read_manifest(manifest)
    ]
    write_manifest(out, rows)
    return {
        "mined": len(mined),
        "mined_wrong": int(wrong.sum()),
        "mined_unsure": int(unsure.sum()),
        "of": len(labels),
        "pits_kept_clean_forever": int(((labels == run.pit_index) & (p_pit <= MINE_LOW)).sum()),
    }


def run_twostage(cfg: Config, out: str | Path, stage2_epochs: int | None = None) -> dict:
    """Train stage 1 and stage 2 into OUT/stage1 and OUT/stage2; return the mining summary."""
    out = Path(out)
    if is_run(out / "stage2"):
        raise PitguardError(f"{out}: already holds a two-stage run; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    train(cfg, out / "stage1")
    mined = out / "mined.csv"  # stage 1's split with its mistakes relabelled maybe
    mining = mine_manifest(out / "stage1", mined)
    _log.info("mined %d of %d train/val crops as maybe", mining["mined"], mining["of"])
    cfg2 = replace(
        cfg,
        data=replace(cfg.data, path=str(mined.resolve())),
        model=replace(cfg.model, pretrained_path=str(RunPaths(out / "stage1").weights.resolve())),
        train=replace(
            cfg.train, epochs=stage2_epochs or max(1, cfg.train.epochs // 2), lr=cfg.train.lr / 3
        ),
    )
    train(cfg2, out / "stage2")
    write_json(out / "twostage.json", {"mining": mining, "mine_band": [MINE_LOW, MINE_HIGH]})
    return mining


def _routes_for(run_dir: Path, crops) -> tuple[np.ndarray, str]:
    run = load_run(run_dir)
    logits = run_logits(run, crops)
    if "maybe" in run.classes:
        names = [run.classes[i] for i in logits.argmax(1).tolist()]
        return np.array([Route[n.upper()] for n in names]), "3-class argmax"
    policy = load_policy(run_dir)
    if policy is not None:
        with torch.no_grad():
            return policy(logits)[1].numpy(), "calibrated policy"
    pit = logits.argmax(1).numpy() == run.pit_index
    return np.where(pit, Route.PIT, Route.CLEAN), "argmax (no maybe)"


def routing_table(
    reference: str | Path,
    others: list[str | Path],
    ensemble: list[str | Path] | None = None,
    data: str | Path | None = None,
    part: str | None = None,
) -> dict:
    """Every method's routes on the same crops (the reference run's test part by default)."""
    ref = load_run(reference)
    ev = load_part(ref, data, part)
    rows = []
    for run_dir in [reference, *others]:
        routes, how = _routes_for(Path(run_dir), ev.crops)
        rows.append(
            {
                "method": f"{Path(run_dir).name} ({how})",
                **routed_metrics(routes, ev.labels, ref.classes),
            }
        )
    if ensemble:
        votes = []
        for run_dir in ensemble:
            run = load_run(run_dir)
            votes.append(run_logits(run, ev.crops).argmax(1).numpy() == run.pit_index)
        stacked = np.stack(votes)
        agree_pit, agree_clean = stacked.all(0), (~stacked).all(0)
        routes = np.where(agree_pit, Route.PIT, np.where(agree_clean, Route.CLEAN, Route.MAYBE))
        names = ", ".join(Path(r).name for r in ensemble)
        rows.append(
            {
                "method": f"ensemble disagreement ({names})",
                **routed_metrics(routes, ev.labels, ref.classes),
            }
        )
    return {"data": ev.description, "n": len(ev.labels), "rows": rows}


def format_table(table: dict) -> str:
    def cell(v, ci):
        return f"{100 * v:6.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if v is not None else "n/a"

    lines = [f"{table['data']}  n={table['n']}  (original labels; exact 95% intervals, %)"]
    lines.append(
        f"{'method':<46}{'pit-miss':>24}{'maybe':>24}{'false-reject':>24}{'acc decided':>24}"
    )
    for r in table["rows"]:
        lines.append(
            f"{r['method'][:45]:<46}{cell(r['pit_miss_rate'], r['pit_miss_ci']):>24}{cell(r['maybe_rate'], r['maybe_ci']):>24}"
            f"{cell(r['false_reject_rate'], r['false_reject_ci']):>24}{cell(r['accuracy_decided'], r['accuracy_decided_ci']):>24}"
        )
    return "\n".join(lines)
