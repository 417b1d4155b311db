"""Train a recipe on the shared crops and report test accuracy; writes JSON, prints a short table.

    .venv/bin/python benchmarks/train_accuracy.py [--recipe cpu-fast] [--out runs/bench-cpu-fast]

The split is pitguard's default (seeded, duplicate-aware); the test part is used only here,
after training and model selection on val are finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pitguard.config import load_config
from pitguard.evaluate.run import evaluate_run
from pitguard.train.loop import train

SHARED = Path(__file__).resolve().parents[2] / "shared/data/cherry_classification/train"


def _pct_ci(value: float, ci: list[float]) -> str:
    return f"{100 * value:.2f}% [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="cpu-fast")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--out", default=None, help="run folder (default runs/bench-RECIPE)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides")
    parser.add_argument(
        "--json", default=None, help="result JSON (default RUN/bench_accuracy.json)"
    )
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/bench-{args.recipe}")
    cfg = load_config(args.recipe, sets=args.set, extra={"data.path": args.data})
    start = time.perf_counter()
    summary = train(cfg, out)
    wall = time.perf_counter() - start
    result = evaluate_run(out)
    record = {
        "recipe": args.recipe,
        "overrides": args.set,
        "data": result["data"],
        "n_test": result["n"],
        "accuracy": result["accuracy"],
        "accuracy_ci": result["accuracy_ci"],
        "pit_recall": result["per_class"]["pit"]["recall"],
        "pit_recall_ci": result["per_class"]["pit"]["recall_ci"],
        "roc_auc": result["roc_auc"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "threads": summary["threads"],
        "device": summary["device"],
        "precision": summary["precision"],
    }
    path = Path(args.json or out / "bench_accuracy.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    acc = _pct_ci(record["accuracy"], record["accuracy_ci"])
    recall = _pct_ci(record["pit_recall"], record["pit_recall_ci"])
    print(
        f"{'recipe':<14}{'test n':>7}{'accuracy [95% CI]':>28}{'pit recall [95% CI]':>28}{'train s':>9}"
    )
    print(
        f"{args.recipe:<14}{record['n_test']:>7}{acc:>28}{recall:>28}{record['train_seconds']:>9.0f}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
