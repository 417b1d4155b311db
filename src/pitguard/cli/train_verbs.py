"""The train verb: one model, cross-fitted folds, or data-parallel; it registers the sweep verb
(sweep_verbs) beside it."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import COUNT, check_out, verb
from pitguard.cli.sweep_verbs import add_sweep, without
from pitguard.core.errors import PitguardError

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs

log = logging.getLogger(__name__)


def cmd_train(args: argparse.Namespace) -> int:
    from pitguard.train.distributed import from_env

    if args.nproc is not None:
        return _launch(args)
    if not from_env().main:
        from pitguard.core.log import quiet

        quiet()  # one voice per job, rank 0's: the others log warnings only
    return _train(args)


def _launch(args: argparse.Namespace) -> int:
    """--nproc N: the same command under torchrun on this machine, N processes."""
    import subprocess
    import sys

    if args.nproc < 1:
        raise PitguardError(f"--nproc {args.nproc}: give 1 or more processes")
    if args.folds is not None:
        raise PitguardError("--nproc trains one model data-parallel; drop --folds (or --nproc)")
    rest = without(args.argv, ("--nproc",))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc-per-node", str(args.nproc), "-m", "pitguard", *rest]
    print(
        "running: torchrun --standalone --nproc-per-node "
        + f"{args.nproc} -m pitguard "
        + " ".join(rest)
    )
    return subprocess.run(command).returncode


def _train(args: argparse.Namespace) -> int:
    from pitguard.config import load_config
    from pitguard.models.runfolder import RunPaths
    from pitguard.train.distributed import from_env
    from pitguard.train.loop import train

    def crossfit(*a, **kw):  # imported when asked for
        from pitguard.train.crossfit import crossfit as run_folds

        return run_folds(*a, **kw)

    if args.workers != 1 and args.folds is None:
        raise PitguardError("--workers shares the models of --folds K; for one model use --nproc")
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
        extra = {"data.path": args.data} if args.data else {}
        if args.tracking:
            extra["train.tracking"] = args.tracking
        cfg = load_config(recipe, args.config, args.set, extra or None)
        _check_run_out(args.out, cfg.data.path)
        if args.dry_run:
            return _dry_run(cfg, args.folds)
        if args.folds is not None:
            return _report_crossfit(crossfit(cfg, args.out, args.folds, workers=args.workers))
        summary = train(cfg, args.out, stop_after=args.stop_after)
    from_env().stop()
    from pitguard.train.distributed import from_env

    if from_env().main:
        print(_describe_summary(summary))
        _say_wrote_and_next(summary["run"])
    return 0


def _say_wrote_and_next(run: str, scores: str | None = None) -> None:
    """The run's main files, and the command that goes on from them: resume an unfinished
    run, calibrate a finished one (on its calib part, its out-of-fold scores, or other crops)."""
    from pitguard.data.manifest import read_manifest
    from pitguard.models.runfolder import RunPaths, unfinished_training

    paths = RunPaths(Path(run))
    files = [paths.weights, paths.summary, paths.history_csv, paths.curves, paths.last_checkpoint]
    files += [paths.oof]  # a cross-fitted run's out-of-fold scores
    names = [f.relative_to(paths.root).as_posix() for f in files if f.is_file()]
    log.info("wrote: %s/ (%s)", paths.root, ", ".join(names))
    if unfinished_training(run):
        command = ["pitguard", "train", "--resume", run]
    elif scores:
        command = ["pitguard", "calibrate", run, "--scores", scores]
    elif paths.split.is_file() and any(r.split == "calib" for r in read_manifest(paths.split)):
        command = ["pitguard", "calibrate", run]
    else:  # no calib part of its own: calibrate needs crops it never trained on
        command = ["pitguard", "calibrate", run, "--data", "CALIB_CROPS"]
    log.info("next: %s", shlex.join(command))


def _check_run_out(out: str, data: str | None) -> None:
    """A new run goes to a new or empty folder, or one a run of pitguard started, never into
    its data (a run folder among the class folders is taken for a class by every verb)."""
    from pitguard.models.runfolder import RunPaths

    check_out(out, "--out", [data], folder=True)
    path, paths = Path(out), RunPaths(Path(out))
    if path.exists() and not path.is_dir():
        raise PitguardError(f"--out {out}: is a file; give a folder for the run")
    others = (
        sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        if path.is_dir()
        else []
    )
    if others and not paths.config.is_file():  # a run starts by writing its config
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise PitguardError(
            f"--out {out}: holds files that are no pitguard run ({shown}); give a new or empty "
            "folder for the run (to go on with an interrupted run: pitguard train --resume RUN)"
        )


def _free_out(out: str) -> str:
    """OUT, or OUT-2, OUT-3 ... when OUT already holds a run (said, with how to continue it)."""
    from pitguard.models.runfolder import RunPaths

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

    from pitguard.train.loop import train

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
    _say_wrote_and_next(record["summary"]["run"], scores="oof")
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
            "pitguard train --recipe lite0 --data runs/cf/split.csv --out runs/cf-lite0 --folds 5",
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
        "--data",
        help="class-folder dir (split here, seeded), split-folder dir or CSV manifest (such as "
        "the one pitguard data split writes: its parts are kept)",
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
        "--workers",
        type=COUNT,
        default=1,
        metavar="W",
        help="with --folds: W processes share the K + 1 models (one GPU each where there are W); "
        "more machines join with pitguard train --resume RUN on the same folder",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this machine (runs torchrun --standalone "
        "--nproc-per-node N -m pitguard train ...; on several machines run torchrun yourself)",
    )
    p.add_argument(
        "--tracking",
        choices=["tensorboard", "mlflow"],
        help="tensorboard: event files in RUN/tensorboard (always written); mlflow: an MLflow run "
        "as well (MLFLOW_TRACKING_URI, else RUN's parent/mlflow.db; pip install 'pitguard[mlflow]')",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCHS",
        help="stop after this many epochs, 1 or more (resume later)",
    )


def add_verbs(sub: Verbs) -> None:
    add_train(sub)
    add_sweep(sub)
