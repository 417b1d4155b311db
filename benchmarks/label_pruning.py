"""Does a recipe learn more from cleaner labels? Drops the train part's label suspects (confident
learning on out-of-fold scores), trains the recipe on the rest and reports it on val, calib and
test; writes JSON, prints a short table.

    .venv/bin/python benchmarks/label_pruning.py [--recipe cpu-fast] [--split-seed 0] [--out DIR]
        [--fold-epochs 24] [--set SECTION.KEY=VALUE ...] [--prune-only]

1. The data is split as a plain run splits it (`data.split_seed`, duplicate-aware).
2. The train part alone is dealt into two stratified folds, duplicate groups whole. A model of
   the recipe (`--fold-epochs` epochs, its last epoch kept) trains on each fold and scores the
   other, so every train crop gets a score from a model that never saw it.
3. Train crops whose score contradicts their label are dropped (`pitguard.decision.review.rank_suspects`:
   each class has its own threshold, the mean score of its own crops). Val, calib and test keep
   every crop and label, so the figures compare with a run of the recipe on the whole train part,
   and the calibration's promise still holds for the labels as given.
4. The recipe trains on OUT/pruned.csv into OUT/run (the `--set` overrides apply to it and to the
   fold models); it is evaluated on each of val, calib and test that the split has, and
   OUT/result.json holds the pruning and those figures. With `--prune-only` the script stops
   after writing OUT/pruned.csv and OUT/pruning.json (every crop dropped, with its score).

Fold models already in OUT/fold1 and OUT/fold2 (each with its split.csv) are reused, so a pruning can be reproduced without
training them again.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pitguard.config import Config, load_config
from pitguard.core.errors import PitguardError
from pitguard.core.files import write_json
from pitguard.data.manifest import ManifestRow, write_manifest
from pitguard.decision.review import rank_suspects
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import RunPaths, load_part, load_run, run_logits
from pitguard.train.crossfit import deal_folds, fixed_run, fold_split, split_rows
from pitguard.train.loop import train

SHARED = Path(__file__).resolve().parents[2] / "shared/data/cherry_classification/train"
PARTS = ("val", "calib", "test")


def prune(rows: list[ManifestRow], p_pit: dict[Path, float]) -> tuple[list[ManifestRow], list]:
    """The rows without the train part's suspects, and the suspects (row, p_pit), most
    contradicted first. ``p_pit`` scores every train crop out of fold; other parts are kept."""
    train_rows = [r for r in rows if r.split == "train"]
    missing = [r.path for r in train_rows if r.path not in p_pit]
    if missing:
        raise PitguardError(
            f"{len(missing)} train crops have no out-of-fold score, e.g. {missing[0]}: a crop "
            "that cannot be read is skipped by training; mend or remove it and run again"
        )
    pits = np.array([r.label == "pit" for r in train_rows], dtype=int)
    p = np.array([p_pit[r.path] for r in train_rows])
    suspects, _ = rank_suspects(np.stack([1 - p, p], axis=1), pits)
    dropped = [(train_rows[s.index], float(p[s.index])) for s in suspects]
    gone = {id(r) for r, _ in dropped}
    return [r for r in rows if id(r) not in gone], dropped


def out_of_fold(cfg: Config, rows: list[ManifestRow], out: Path, fold_epochs: int) -> dict:
    """p(pit) of every train crop from the fold model that never saw it."""
    train_rows = [r for r in rows if r.split == "train"]
    folds = deal_folds(train_rows, 2, cfg.data.split_seed)
    scores: dict[Path, float] = {}
    pool = [replace(r, fold=f) for r, f in zip(train_rows, folds, strict=True)]
    for fold in ("1", "2"):
        run = out / f"fold{fold}"
        manifest = fold_split(pool, fold, run)
        if not RunPaths(run).summary.exists():
            train(fixed_run(cfg, manifest, fold_epochs), run)
        model = load_run(run)
        held_out = load_part(model, manifest, "val")
        probs = torch.softmax(run_logits(model, held_out.crops).double(), dim=1).numpy()
        pit = model.classes.index("pit")
        scores.update(zip(map(Path, held_out.crops.paths), probs[:, pit], strict=True))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="cpu-fast")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder (default runs/prune-RECIPE-sSEED)")
    parser.add_argument("--fold-epochs", type=int, default=24)
    parser.add_argument("--set", action="append", default=[], help="extra overrides")
    parser.add_argument("--prune-only", action="store_true", help="stop after pruned.csv")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/prune-{args.recipe}-s{args.split_seed}")
    out.mkdir(parents=True, exist_ok=True)
    extra = {"data.path": args.data, "data.split_seed": args.split_seed}
    cfg = load_config(args.recipe, sets=args.set, extra=extra)
    start = time.perf_counter()
    rows = split_rows(cfg, out / "split.csv")
    write_manifest(out / "split.csv", rows)  # also where the data came already split
    scores = out_of_fold(cfg, rows, out, args.fold_epochs)
    kept, dropped = prune(rows, scores)
    write_manifest(out / "pruned.csv", kept)
    train_rows = [r for r in rows if r.split == "train"]
    is_pit = np.array([r.label == "pit" for r in train_rows])
    p_pit = np.array([scores[r.path] for r in train_rows])
    record = {
        "recipe": args.recipe,
        "overrides": args.set,
        "split_seed": args.split_seed,
        "fold_epochs": args.fold_epochs,
        "n_train": len(train_rows),
        "oof_accuracy": float(np.mean((p_pit >= 0.5) == is_pit)),
        "dropped": {
            c: sum(r.label == c for r, _ in dropped) for c in sorted({r.label for r in rows})
        },
        "dropped_crops": [
            {"path": str(r.path), "label": r.label, "p_pit": round(p, 4)} for r, p in dropped
        ],
        "pruning_seconds": time.perf_counter() - start,
    }
    write_json(out / "pruning.json", record)
    print(f"dropped {len(dropped)} of {len(train_rows)} train crops {record['dropped']}")
    if args.prune_only:
        print(f"wrote {out / 'pruned.csv'} and {out / 'pruning.json'}")
        return 0
    pruned = load_config(
        args.recipe, sets=args.set, extra={**extra, "data.path": str(out / "pruned.csv")}
    )
    summary = train(pruned, out / "run")
    record["train_seconds"] = summary["train_seconds"]
    record["epochs_run"] = summary["epochs_run"]
    print(
        f"{'part':<7}{'n':>6}{'accuracy [95% CI]':>26}{'pit recall':>12}{'ROC-AUC':>9}{'log loss':>10}"
    )
    for part in [p for p in PARTS if any(r.split == p for r in rows)]:
        result = evaluate_run(out / "run", part=part)
        record[part] = {
            key: result[key] for key in ("n", "accuracy", "accuracy_ci", "roc_auc", "log_loss")
        } | {"pit_recall": result["per_class"]["pit"]["recall"]}
        r = record[part]
        acc = f"{100 * r['accuracy']:.2f}% [{100 * r['accuracy_ci'][0]:.2f}, {100 * r['accuracy_ci'][1]:.2f}]"
        print(
            f"{part:<7}{r['n']:>6}{acc:>26}{100 * r['pit_recall']:>11.1f}%"
            f"{r['roc_auc']:>9.3f}{r['log_loss']:>10.3f}"
        )
    write_json(out / "result.json", record)
    print(f"wrote {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
