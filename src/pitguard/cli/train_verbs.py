"""The training verbs: train, eval, calibrate, thresholds and recipes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import verb, write_json_out
from pitguard.errors import PitguardError

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs


def cmd_train(args: argparse.Namespace) -> int:
    from pitguard.config import load_config
    from pitguard.runfolder import RunPaths
    from pitguard.train import train

    def crossfit(*a, **kw):  # imported when asked for
        from pitguard.crossfit import crossfit as run_folds

        return run_folds(*a, **kw)

    if args.folds is not None and args.stop_after is not None:
        raise PitguardError("--stop-after applies to one model, not to --folds; stop with Ctrl-C")
    if args.resume:
        if args.recipe or args.config or args.set or args.data or args.folds:
            raise PitguardError(
                "--resume continues a run with its saved config; "
                "drop --recipe/--config/--set/--data/--folds"
            )
        if RunPaths(args.resume).crossfit.is_file():
            return _report_crossfit(crossfit(None, args.resume, resume=True))
        summary = train(None, args.resume, resume=True)  # type: ignore[arg-type]
    else:
        if not args.out:
            raise PitguardError("--out RUN is required (the run folder to create)")
        if args.stop_after is not None and args.stop_after < 1:
            raise PitguardError(f"--stop-after {args.stop_after}: give 1 or more epochs")
        args.out = _free_out(args.out)
        recipe = args.recipe or (None if args.config else _default_recipe())
        extra = {"data.path": args.data} if args.data else None
        cfg = load_config(recipe, args.config, args.set, extra)
        if args.dry_run:
            return _dry_run(cfg, args.folds)
        if args.folds is not None:
            return _report_crossfit(crossfit(cfg, args.out, args.folds))
        summary = train(cfg, args.out, stop_after=args.stop_after)
    print(_describe_summary(summary))
    return 0


def _free_out(out: str) -> str:
    """OUT, or OUT-2, OUT-3 ... when OUT already holds a run (said, with how to continue it)."""
    from pitguard.runfolder import RunPaths

    def taken(path: str) -> bool:
        paths = RunPaths(Path(path))
        return paths.last_checkpoint.exists() or paths.crossfit.exists() or paths.model.exists()

    if not taken(out):
        return out
    n = 2
    while taken(f"{out}-{n}") or Path(f"{out}-{n}").exists():
        n += 1
    print(f"{out} holds a run (continue it with --resume {out}); this run goes to {out}-{n}")
    return f"{out}-{n}"


def _dry_run(cfg, folds: int | None) -> int:
    """Print the resolved config and how long training would take here; train nothing."""
    import tempfile

    import yaml

    from pitguard.train import train

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    with tempfile.TemporaryDirectory(prefix="pitguard-dry-run-") as tmp:
        est = train(cfg, Path(tmp) / "run", plan_only=True)
    models = 1.0 if folds is None else folds + folds / max(folds - 1, 1)
    minutes = est["estimate_s"] * models / 60
    what = "" if folds is None else f" ({folds} fold models and the final one)"
    print(
        f"estimate: {est['epochs']} epochs at {est['seconds_per_epoch']:.1f} s each on "
        f"{est['device']} ({est['precision']}): about {minutes:.0f} min{what}; nothing trained"
    )
    if est["device"] == "cpu" and minutes > 60:
        print("warning: over an hour on this CPU; a GPU or --recipe cpu-fast is faster")
    return 0


def _report_crossfit(record: dict) -> int:
    oof = record["oof"]
    lo, hi = oof["accuracy_ci"]
    print(
        f"{record['folds']} folds: out-of-fold accuracy {100 * oof['accuracy']:.2f}% "
        f"[{100 * lo:.2f}, {100 * hi:.2f}] on {oof['n']:,} crops, ROC-AUC {oof['roc_auc']:.4f}"
    )
    print(_describe_summary(record["summary"]) + " (the final model, trained on every fold)")
    print(
        f"next: pitguard calibrate {record['summary']['run']} --scores oof, "
        "then pitguard eval and export as for any run"
    )
    return 0


def _describe_summary(summary: dict) -> str:
    n = summary["epochs_run"]
    kept = (
        "the last epoch kept"
        if summary["selected_on"] == "last"
        else f"best epoch {summary['best_epoch']} ({summary['selected_on']} "
        f"{summary['best_value']:.4f} on val)"
    )
    return (
        f"run {summary['run']}: {n} epoch{'' if n == 1 else 's'}, {kept}, "
        f"{summary['stop_reason']}, {summary['train_seconds']:.0f} s on {summary['device']}"
    )


def _default_recipe() -> str:
    """cpu-fast on a machine without a GPU; with one, the choice is the user's."""
    import torch

    if torch.cuda.is_available():
        raise PitguardError(
            "--recipe NAME is required on a GPU machine (see `pitguard recipes`; e.g. "
            "--recipe resnet50-aug); without one, pitguard train uses cpu-fast"
        )
    print("no --recipe given: training cpu-fast, the recipe for a CPU (see `pitguard recipes`)")
    return "cpu-fast"


def add_train(sub: Verbs) -> None:
    p = verb(
        sub,
        "train",
        "Train a recipe on a dataset into a run folder, or resume an interrupted run.",
        [
            "pitguard train --recipe cpu-fast --data ../shared/data/cherry_classification/train --out runs/cpu-fast",
            "pitguard train --recipe resnet50-aug --data split.csv --out runs/r50 --set train.epochs=10",
            "pitguard train --recipe cpu-fast --data ../shared/data/cherry_classification/train --out runs/cf --folds 5",
            "pitguard train --resume runs/cpu-fast",
            "pitguard train --recipe resnet50-aug --data crops/ --out runs/r50 --dry-run",
        ],
        cmd_train,
    )
    p.add_argument(
        "--recipe",
        help="a shipped recipe by name (see pitguard recipes); default cpu-fast on a CPU",
    )
    p.add_argument("--config", help="a YAML file of overrides (applied after the recipe)")
    p.add_argument(
        "--data", help="class-folder dir (split here, seeded), split-folder dir or CSV manifest"
    )
    p.add_argument("--out", help="run folder to create")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable)",
    )
    p.add_argument(
        "--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and how long training would take here, then stop",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="cross-fit: K fold models score every crop outside the test part out of fold "
        "(for calibrate --scores oof), then a final model trains on all of them",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCHS",
        help="stop after this many epochs, 1 or more (resume later)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from pitguard.evaluate import evaluate_run, format_report
    from pitguard.files import read_json
    from pitguard.runfolder import RunPaths, load_policy

    policy = load_policy(args.run)
    result = evaluate_run(
        args.run,
        args.data,
        args.split,
        n_boot=args.n_boot,
        classes=args.classes,
        policy=policy,
        calibration=read_json(RunPaths(Path(args.run)).policy),
    )
    print(format_report(result))
    print(f"outputs in {result['outputs']}")
    write_json_out(result, args.json)
    return 0


def add_eval(sub: Verbs) -> None:
    p = verb(
        sub,
        "eval",
        "Evaluate a run: metrics with 95% intervals, per-crop predictions and plots.",
        [
            "pitguard eval runs/cpu-fast                      # the run's own test part",
            "pitguard eval runs/cpu-fast --data other_crops/ --json eval.json",
            "pitguard eval runs/cpu-fast --data runs/cpu-fast/split.csv --split calib",
        ],
        cmd_eval,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="dataset (any layout); default: the run's own split")
    p.add_argument("--split", help="part of a split dataset to evaluate (default test)")
    p.add_argument("--json", metavar="OUT", help="also write the metrics JSON here")
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples for intervals (default 1000)"
    )
    p.add_argument(
        "--classes", metavar="MAP", help="map folder names to classes, e.g. good=clean,bad=pit"
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pitguard.calibrate import calibrate_run

    rec = calibrate_run(
        args.run,
        args.data,
        args.split,
        args.max_pit_miss,
        args.confidence,
        args.max_false_reject,
        args.scores,
    )
    th, cal = rec["thresholds"], rec["calibration_data"]
    pol = rec["policy"]
    print(
        f"temperature {pol['temperature']:.4f}  ECE {rec['ece_before']:.4f} -> {rec['ece_after']:.4f}"
    )
    print(
        f"t_low {th['t_low']:.6f}  t_high {th['t_high']:.6f}  (p_pit < t_low: clean; >= t_high: pit; else maybe)"
    )
    print(
        f"on {cal['data']} (n={cal['n']}, {cal['n_pits']} pits): {th['calib_pit_misses']} pits routed clean, "
        f"pit-miss bound {100 * th['pit_miss_bound']:.3f}% at {100 * args.confidence:.0f}% confidence "
        f"(target {100 * args.max_pit_miss:g}%), maybe rate {100 * th['calib_maybe_rate']:.2f}%"
    )
    print(
        "routes on the calibration crops: "
        + ", ".join(f"{k} {v}" for k, v in rec["calib_routes"].items())
    )
    print(f"guarantee ({rec['mode']}): {rec['guarantee']['statement']}")
    from pitguard.runfolder import RunPaths

    paths = RunPaths(Path(args.run))
    print(f"wrote {paths.policy} and {paths.calibration}/")
    return 0


def add_calibrate(sub: Verbs) -> None:
    p = verb(
        sub,
        "calibrate",
        "Calibrate the clean/maybe/pit decision with a stated bound on pits routed clean.",
        [
            "pitguard calibrate runs/cpu-fast --max-pit-miss 0.01 --confidence 0.95",
            "pitguard calibrate runs/cpu-fast --max-pit-miss 0.02 --max-false-reject 0.05",
            "pitguard calibrate runs/prod --data held_out_calib/",
            "pitguard calibrate runs/cf --scores oof --max-pit-miss 0.01 --max-false-reject 0.05",
        ],
        cmd_calibrate,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="calibration crops (default: the run's own calib part)")
    p.add_argument("--split", help="part of a split --data to use (default calib)")
    p.add_argument(
        "--max-pit-miss", type=float, default=0.01, help="bound on pits routed clean (default 0.01)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence of the bound (default 0.95)"
    )
    p.add_argument("--max-false-reject", type=float, help="also bound clean crops routed pit")
    p.add_argument(
        "--scores",
        choices=("holdout", "oof"),
        help="holdout: the model's scores on its calib part or --data (exact bound); oof: a "
        "--folds run's out-of-fold scores (more pits, cross-fit bound). Default: oof for a "
        "--folds run, else holdout",
    )


def cmd_thresholds(args: argparse.Namespace) -> int:
    from pitguard.calibrate import sweep_run

    sweep = sweep_run(args.run, args.data, args.split, args.min_recall)
    print(f"{sweep['data']}  n={sweep['n']}  (pit when p_pit >= threshold)")
    print(
        f"{'thr':>6}{'acc':>8}{'prec':>8}{'recall':>8}{'f1':>8}{'spec':>8}{'tp':>6}{'fp':>6}{'tn':>6}{'fn':>6}"
    )

    def f(x):
        return f"{'n/a':>8}" if x is None else f"{x:>8.4f}"

    for r in sweep["rows"][:: max(1, args.every)]:
        print(
            f"{r['threshold']:>6.2f}{f(r['accuracy'])}{f(r['precision'])}{f(r['recall'])}{f(r['f1'])}"
            f"{f(r['specificity'])}{r['tp']:>6}{r['fp']:>6}{r['tn']:>6}{r['fn']:>6}"
        )
    best = sweep["best"]
    if best:
        print(
            f"best F1 with recall >= {args.min_recall}: threshold {best['threshold']:.2f}, F1 {best['f1']:.4f}, "
            f"recall {best['recall']:.4f}, precision {best['precision']:.4f}"
        )
    else:
        print(f"no threshold reaches recall {args.min_recall}")
    print(f"wrote {sweep['outputs']}/sweep.json and sweep.png")
    return 0


def add_thresholds(sub: Verbs) -> None:
    p = verb(
        sub,
        "thresholds",
        "Sweep one threshold on p(pit) (the old reports' analysis): table, JSON and plot.",
        [
            "pitguard thresholds runs/cpu-fast --min-recall 0.99",
            "pitguard thresholds runs/cpu-fast --data other_crops/ --every 5",
        ],
        cmd_thresholds,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="crops to sweep on (default: the run's calib part)")
    p.add_argument("--split", help="part of a split --data (default calib)")
    p.add_argument("--min-recall", type=float, default=0.99, help="pit recall floor (default 0.99)")
    p.add_argument(
        "--every", type=int, default=5, help="print every Nth threshold of the 101 (default 5)"
    )


def cmd_recipes(args: argparse.Namespace) -> int:
    from pitguard.recipes import recipe_names, recipe_summary, recipe_text

    if args.name:
        print(recipe_text(args.name), end="")
        return 0
    for name in recipe_names():
        print(f"{name:<26} {recipe_summary(name)}")
    return 0


def add_recipes(sub: Verbs) -> None:
    p = verb(
        sub,
        "recipes",
        "List the shipped recipes, or print one.",
        ["pitguard recipes", "pitguard recipes cpu-fast"],
        cmd_recipes,
    )
    p.add_argument("name", nargs="?", help="print this recipe's YAML")


def add_verbs(sub: Verbs) -> None:
    add_train(sub)
    add_eval(sub)
    add_calibrate(sub)
    add_thresholds(sub)
    add_recipes(sub)
