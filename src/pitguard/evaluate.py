"""Evaluate a run on any dataset layout: metrics with intervals, per-item predictions, plots."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pitguard import metrics
from pitguard.data.layout import find_dataset, parse_class_mapping
from pitguard.data.load import Crops, DecodeOptions, load_crops
from pitguard.errors import PitguardError
from pitguard.models import infer_logits
from pitguard.runs import RunModel, load_run, write_json


@dataclass
class EvalData:
    crops: Crops
    labels: np.ndarray  # class indices of the run's classes
    description: str  # what was evaluated: path and part


def run_split_source(run: RunModel) -> Path:
    """The manifest a run was trained from (its own split.csv, or the data it was given)."""
    own = run.run / "split.csv"
    if own.is_file():
        return own
    if run.config is not None and run.config.data.path:
        return Path(run.config.data.path)
    raise PitguardError(f"{run.run}: the run records no data; pass --data DIR")


def load_eval_data(
    run: RunModel, data: str | Path | None, part: str | None, classes: str | None = None
) -> EvalData:
    """Crops to evaluate: DATA's ``part`` when it has splits (default test), else all of DATA."""
    source = Path(data) if data is not None else run_split_source(run)
    index = find_dataset(source, parse_class_mapping(classes))
    size = run.net.contract.size
    opts = DecodeOptions(
        size=size,
        modes=run.config.data.modes if run.config else "skip",
        sizes=run.config.data.sizes if run.config else "skip",
    )
    has_splits = any(it.split for it in index.items)
    if has_splits:
        part = part or "test"
        items = [it for it in index.items if it.split == part]
        if not items:
            raise PitguardError(
                f"{source}: no '{part}' part; found {', '.join(index.splits())}; choose --split"
            )
        description = f"{source} [{part}]"
    else:
        if part:
            raise PitguardError(
                f"{source}: has no splits, so --split {part} does not apply; it is evaluated whole"
            )
        items = index.items
        description = f"{source} [all]"
    unknown = [c for c in index.classes if c not in run.classes]
    if unknown:
        raise PitguardError(
            f"{source}: class(es) {', '.join(unknown)} are not among the run's classes {', '.join(run.classes)}"
        )
    crops = load_crops(index, opts, items=items)
    if len(crops) == 0:
        raise PitguardError(f"{description}: no readable crops")
    remap = np.array([run.classes.index(c) for c in index.classes])
    return EvalData(crops, remap[crops.labels.numpy()], description)


def run_logits(
    run: RunModel, crops: Crops, device: str = "auto", batch_size: int = 256
) -> torch.Tensor:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    torch.set_flush_denormal(True)
    run.net.to(dev)
    try:
        return infer_logits(run.net, crops.images, dev, batch_size)
    finally:
        run.net.cpu()


def write_predictions(
    path: Path,
    crops: Crops,
    labels: np.ndarray,
    probs: np.ndarray,
    classes,
    pit_index: int,
    routes=None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["path", "label", "predicted", "p_pit"] + (["route"] if routes is not None else [])
        )
        for i, p in enumerate(crops.paths):
            row = [
                p,
                classes[labels[i]],
                classes[int(probs[i].argmax())],
                f"{probs[i, pit_index]:.6f}",
            ]
            writer.writerow(row + ([routes[i]] if routes is not None else []))


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    part: str | None = None,
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
    classes: str | None = None,
    device: str = "auto",
    policy: torch.nn.Module | None = None,
) -> dict:
    """Metrics of a run's argmax predictions, and of the routes of ``policy`` (logits -> p_pit, route)."""
    run = load_run(run_dir)
    ev = load_eval_data(run, data, part, classes)
    logits = run_logits(run, ev.crops, device)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    report = metrics.classification_report(ev.labels, probs, list(run.classes), n_boot=n_boot)
    result = {"run": str(run.run), "data": ev.description, "n": len(ev.labels), **report}
    out = Path(out_dir) if out_dir else run.run / "eval" / _slug(ev.description)
    out.mkdir(parents=True, exist_ok=True)
    routes = None
    if policy is not None:
        with torch.no_grad():
            _, route_ids = policy(logits)
        result["policy"] = metrics.routed_metrics(route_ids.numpy(), ev.labels, run.classes)
        names = ("clean", "maybe", "pit")
        routes = [names[int(r)] for r in route_ids]
    write_predictions(
        out / "predictions.csv", ev.crops, ev.labels, probs, run.classes, run.pit_index, routes
    )
    metrics.plot_confusion_matrix(
        np.array(report["confusion_matrix"]), list(run.classes), out / "confusion_matrix.png"
    )
    metrics.plot_roc_pr(
        (ev.labels == run.pit_index).astype(int), probs[:, run.pit_index], out / "roc_pr.png"
    )
    result["outputs"] = str(out)
    write_json(out / "metrics.json", result)
    return result


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)
    return keep.strip("_")[-80:] or "data"


def format_report(result: dict) -> str:
    def ci(key):
        lo, hi = result[key + "_ci"]
        return f"{100 * result[key]:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"

    lines = [
        f"{result['data']}  n={result['n']}",
        f"accuracy          {ci('accuracy')}",
        f"balanced accuracy {ci('balanced_accuracy')}",
        f"macro F1          {ci('macro_f1')}",
    ]
    for cls, m in result["per_class"].items():
        lines.append(
            f"  {cls:<6} precision {_pct(m['precision'])} recall {_pct(m['recall'])} f1 {_pct(m['f1'])} (support {m['support']})"
        )
    if result.get("roc_auc") is not None:
        lines.append(
            f"ROC-AUC {result['roc_auc']:.4f} [{result['roc_auc_ci'][0]:.4f}, {result['roc_auc_ci'][1]:.4f}]  "
            f"PR-AUC {result['pr_auc']:.4f}"
        )
    lines.append(
        f"log-loss {result['log_loss']:.4f}  Brier {result['brier']:.4f}  ECE {result['ece']:.4f}"
    )
    lines.append("confusion (rows true, cols predicted): " + str(result["confusion_matrix"]))
    pol = result.get("policy")
    if pol:
        lines.append("calibrated decision (exact 95% intervals):")
        for key, label in (
            ("pit_miss", "pit-miss rate"),
            ("false_reject", "false-reject rate"),
            ("maybe", "maybe rate"),
            ("accuracy_decided", "accuracy decided"),
        ):
            value = pol[key if key == "accuracy_decided" else key + "_rate"]
            lo, hi = pol[key + "_ci"]
            lines.append(f"  {label:<18} {_pct(value)} [{100 * lo:.2f}, {100 * hi:.2f}]")
        lines.append("  routes: " + ", ".join(f"{k} {v}" for k, v in pol["routes"].items()))
    return "\n".join(lines)


def _pct(x) -> str:
    return "  n/a " if x is None else f"{100 * x:6.2f}%"
