"""Do models trained on one split make the same mistakes? The crops every model gets wrong, and
what averaging their probabilities scores, on one part of their common split.

    .venv/bin/python benchmarks/error_overlap.py RUN RUN [RUN ...] [--part test] [--json OUT]

Each RUN is a run folder of `pitguard train`; all must have been trained on the same split (the
part's crops and labels must match, else the script stops naming the first run that differs).
Each model predicts at argmax, as `pitguard eval` does; the ensemble averages the models'
softmax probabilities and takes the argmax of the mean. Where most errors are shared by every
model, neither another recipe nor an ensemble of them can remove them: they lie in the crops or
their labels (`pitguard data review` lists such crops for a person to check).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.core.files import write_json
from pitguard.evaluate.metrics import classification_report
from pitguard.models.runfolder import load_part, load_run, run_logits


def part_probs(run: Path, part: str) -> tuple[list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    """Paths, labels, softmax probabilities and class names of ``run``'s model on its own part,
    ordered by path so that runs of one split line up crop by crop."""
    model = load_run(run)
    ev = load_part(model, None, part)
    probs = torch.softmax(run_logits(model, ev.crops).double(), dim=1).numpy()
    order = np.argsort(ev.crops.paths)
    paths = [ev.crops.paths[i] for i in order]
    return paths, np.asarray(ev.labels)[order], probs[order], model.classes


def overlap(runs: list[Path], part: str, n_boot: int = 1000) -> dict:
    """Per-model and ensemble reports, and how many crops 0, 1, ... all models got wrong."""
    if len(runs) < 2:
        raise PitguardError("give at least two run folders trained on the same split")
    paths, labels, first, classes = part_probs(runs[0], part)
    all_probs = [first]
    for run in runs[1:]:
        p, y, probs, cls = part_probs(run, part)
        if p != paths or not np.array_equal(y, labels) or cls != classes:
            raise PitguardError(
                f"{run}: its {part} part differs from {runs[0]}'s (other crops, labels or "
                "classes); give runs trained on the same split (data.split_seed and data)"
            )
        all_probs.append(probs)
    wrong = np.stack([p.argmax(1) != labels for p in all_probs])  # (models, crops)
    n_wrong = wrong.sum(0)
    ensemble = np.mean(all_probs, axis=0)
    return {
        "part": part,
        "n": len(paths),
        "runs": [str(r) for r in runs],
        "models": [
            {"run": str(r), "errors": int(w.sum()), **_summary(labels, p, classes, n_boot)}
            for r, w, p in zip(runs, wrong, all_probs, strict=True)
        ],
        "ensemble": {
            "errors": int((ensemble.argmax(1) != labels).sum()),
            **_summary(labels, ensemble, classes, n_boot),
        },
        "wrong_in_all": int((n_wrong == len(runs)).sum()),
        "wrong_in_any": int((n_wrong > 0).sum()),
        "wrong_in_exactly_one": int((n_wrong == 1).sum()),
        "crops_wrong_in_all": [paths[i] for i in np.flatnonzero(n_wrong == len(runs))],
    }


def _summary(labels: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], n_boot: int) -> dict:
    rep = classification_report(labels, probs, classes, n_boot=n_boot)
    keys = ("accuracy", "accuracy_ci", "roc_auc", "roc_auc_ci")
    return {k: rep[k] for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders trained on the same split")
    ap.add_argument("--part", default="test", help="part of the runs' split (default test)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for intervals")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    try:
        result = overlap(args.runs, args.part, args.n_boot)
    except PitguardError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{'model':<40} {'errors':>6} {'accuracy [95% CI]':>26} {'ROC-AUC':>8}")
    rows = [(Path(m["run"]).name, m) for m in result["models"]]
    for name, m in [*rows, ("ensemble (mean probability)", result["ensemble"])]:
        lo, hi = m["accuracy_ci"]
        acc = f"{100 * m['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"
        print(f"{name[:40]:<40} {m['errors']:>6} {acc:>26} {m['roc_auc']:>8.3f}")
    print(
        f"{result['part']} part, n={result['n']}: wrong in all {len(args.runs)} models "
        f"{result['wrong_in_all']}, in exactly one {result['wrong_in_exactly_one']}, "
        f"in any {result['wrong_in_any']}"
    )
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
