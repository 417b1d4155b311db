"""The sweep verb: an Optuna study of a recipe whose trials are run folders, shared by worker
processes; and how a verb relaunches its own command line (sweep's workers, train's --nproc)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import check_out, verb
from pitguard.core.errors import PitguardError

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs


def without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """The command line with these options and their values taken out (to relaunch it)."""
    rest, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in options:
            args.pop(0)
        elif not arg.startswith(tuple(f"{o}=" for o in options)):
            rest.append(arg)
    return rest


def cmd_sweep(args: argparse.Namespace) -> int:
    from pitguard.config import load_config
    from pitguard.train.sweep import read_space, sweep

    if args.trials < 1:
        raise PitguardError(f"--trials {args.trials}: give 1 or more")
    if args.workers < 1:
        raise PitguardError(f"--workers {args.workers}: give 1 or more")
    space = read_space(args.space)  # a bad space stops before any worker starts
    recipe = args.recipe or (None if args.config else "cpu-fast")
    cfg = load_config(recipe, args.config, args.set, {"data.path": args.data})
    check_out(args.out, "--out", [cfg.data.path], folder=True)
    storage = args.storage or f"sqlite:///{Path(args.out).absolute() / 'study.db'}"
    study = args.study or Path(args.out).name
    if args.workers > 1:
        failed = _sweep_workers(args, storage, study)
        if failed:
            return failed
    record = sweep(
        cfg,
        args.out,
        args.trials,
        storage,
        study,
        space,
        args.set or [],
        recipe,
        args.config,
        args.seed,
        args.choose_on,
    )
    states = ", ".join(f"{n} {s}" for s, n in record["states"].items() if n)
    print(f"study {record['study']} in {storage}: {states}")
    best = record["best"]
    if best:
        print(
            f"best: trial {best['number']}, {record['metric']} {best['value']:.4f}; "
            f"recipe written to {best['recipe']} (pitguard train --recipe {best['recipe']} ...)"
        )
    return 0


def _sweep_workers(args: argparse.Namespace, storage: str, study: str) -> int:
    """--workers W: W processes of this sweep on one storage, the cores shared among them."""
    import subprocess
    import sys

    from pitguard.core.devices import usable_cores

    rest = without(args.argv, ("--workers", "--storage", "--study", "--seed"))
    rest += ["--storage", storage, "--study", study]
    if not any("train.threads=" in s for s in args.set or []):
        rest += ["--set", f"train.threads={max(1, usable_cores() // args.workers)}"]
    seeds = [None if args.seed is None else args.seed + w for w in range(args.workers)]
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "pitguard", *rest, *([] if s is None else ["--seed", str(s)])]
        )
        for s in seeds
    ]
    codes = [job.wait() for job in jobs]
    bad = [c for c in codes if c]
    if bad:
        print(f"{len(bad)} of {args.workers} sweep workers failed (exit {bad[0]}); see above")
    return bad[0] if bad else 0


def add_sweep(sub: Verbs) -> None:
    p = verb(
        sub,
        "sweep",
        "Tune a recipe with an Optuna study: TPE sampling, median pruning on val, trials as runs.",
        [
            "pitguard sweep --recipe cpu-fast --data crops/ --out runs/sweep --trials 20",
            "pitguard sweep --recipe cpu-fast --data crops/ --out runs/sweep --trials 8 --workers 2",
            "pitguard sweep --recipe cpu-fast --data crops/ --out runs/sweep --trials 40 "
            "--space space.yaml --storage postgresql://pg@db/pitguard",
        ],
        cmd_sweep,
    )
    p.add_argument("--recipe", help="the recipe to tune (default cpu-fast)")
    p.add_argument("--config", help="a YAML file of overrides (applied after the recipe)")
    p.add_argument("--data", required=True, help="dataset (its val part scores every trial)")
    p.add_argument(
        "--out", required=True, help="sweep folder: trials/, sweep.json, best-recipe.yaml"
    )
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="fixed override (repeatable)"
    )
    p.add_argument(
        "--space",
        metavar="FILE",
        help="YAML search space: section.key: {type: float|int, low, high, log} or "
        "{type: categorical, choices: [...]}; default: lr, weight decay, label smoothing, brightness",
    )
    p.add_argument(
        "--trials", type=int, required=True, help="trials the study holds when done (all workers)"
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage every worker shares: sqlite:///PATH (one machine, default "
        "OUT/study.db) or postgresql://... (several machines)",
    )
    p.add_argument("--study", help="study name in the storage (default: OUT's folder name)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine (default 1)")
    p.add_argument("--seed", type=int, help="sampler seed (worker k uses seed + k)")
    p.add_argument(
        "--choose-on",
        choices=("val", "review"),
        default="val",
        help="val (default): the recipe's val metric, trials pruned by the median rule; review: "
        "the share of val crops a 1%% pit-miss bound at 95%% (false rejects <= 5%%) sends to "
        "review, lowest wins, certified exactly where val has 299 pits or more, else on "
        "average (conformal risk control); no pruning",
    )
