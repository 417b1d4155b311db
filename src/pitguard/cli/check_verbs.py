"""The verbs that check and certify a trained run: eval, calibrate, thresholds and recipes."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import COUNT, OPEN_SHARE, SHARE, check_out, verb

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs

log = logging.getLogger(__name__)


def cmd_eval(args: argparse.Namespace) -> int:
    from pitguard.core.files import read_json, write_json
    from pitguard.evaluate.run import evaluate_run, format_report
    from pitguard.models.runfolder import (
        EVAL_CONFUSION,
        EVAL_METRICS,
        EVAL_PREDICTIONS,
        EVAL_ROC_PR,
        RunPaths,
        load_policy,
    )

    check_out(args.json, "--json", [args.data])
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
    files = (EVAL_METRICS, EVAL_PREDICTIONS, EVAL_CONFUSION, EVAL_ROC_PR)
    wrote = f"{result['outputs']}/ ({', '.join(_existing(Path(result['outputs']), files))})"
    if args.json:
        write_json(args.json, result)
        wrote += f", {args.json}"
    log.info("wrote: %s", wrote)
    if policy is None:  # export ships a calibrated decision
        log.info("next: %s", shlex.join(["pitguard", "calibrate", args.run]))
    else:
        bundle = str(Path("bundles") / (Path(args.run).resolve().name or "bundle"))
        log.info(
            "next: %s", shlex.join(["pitguard", "export", args.run, "--out", bundle, "--onnx"])
        )
    return 0


def _existing(folder: Path, names: tuple[str, ...], prefix: str = "") -> list[str]:
    """Those of ``names`` that are files in ``folder``, each after ``prefix``."""
    return [prefix + name for name in names if (folder / name).is_file()]


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
        "--n-boot",
        type=COUNT,
        default=1000,
        help="bootstrap resamples for intervals (default 1000)",
    )
    p.add_argument(
        "--classes", metavar="MAP", help="map folder names to classes, e.g. good=clean,bad=pit"
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pitguard.decision.calibrate import calibrate_run

    rec = calibrate_run(
        args.run,
        args.data,
        args.split,
        args.max_pit_miss,
        args.confidence,
        args.max_false_reject,
        args.scores,
        args.allow_unfinished,
        args.guarantee,
        args.second_look,
        args.second_look_model,
    )
    th, cal = rec["thresholds"], rec["calibration_data"]
    pol = rec["policy"]
    print(
        f"temperature {pol['temperature']:.4f}  ECE {rec['ece_before']:.4f} -> {rec['ece_after']:.4f}"
    )
    print(
        f"t_low {th['t_low']:.6f}  t_high {th['t_high']:.6f}  (p_pit < t_low: clean; >= t_high: pit; else maybe)"
    )
    held = (
        f"at {100 * args.confidence:.0f}% confidence" if args.guarantee == "exact" else "on average"
    )
    print(
        f"on {cal['data']} (n={cal['n']}, {cal['n_pits']} pits): {th['calib_pit_misses']} pits routed clean, "
        f"pit-miss bound {100 * th['pit_miss_bound']:.3f}% {held} "
        f"(target {100 * args.max_pit_miss:g}%), maybe rate {100 * th['calib_maybe_rate']:.2f}%"
    )
    print(
        "routes on the calibration crops: "
        + ", ".join(f"{k} {v}" for k, v in rec["calib_routes"].items())
    )
    print(f"guarantee ({rec['mode']}): {rec['guarantee']['statement']}")
    print(format_operating_table(rec["operating_table"], args.confidence))
    print(format_review_cost(rec["review_cost"]))
    if "second_look" in rec:
        print(format_second_look(rec["second_look"], held))
    from pitguard.models.runfolder import (
        CALIB_OPERATING_CURVE,
        CALIB_RELIABILITY,
        CALIB_REPORT,
        RunPaths,
    )

    paths = RunPaths(Path(args.run))
    files = (CALIB_REPORT, CALIB_OPERATING_CURVE, CALIB_RELIABILITY)
    figures = _existing(paths.calibration, files, f"{paths.calibration.name}/")
    log.info("wrote: %s/ (%s)", paths.root, ", ".join([paths.policy.name, *figures]))
    # eval reads the run's own test part; a run without a split (imported) needs crops named
    evaluate = ["pitguard", "eval", args.run] + (
        [] if paths.split.is_file() else ["--data", "TEST_CROPS"]
    )
    log.info("next: %s", shlex.join(evaluate))
    return 0


def format_operating_table(rows: list[dict], confidence: float) -> str:
    """Share of the calibration crops sent to review at each certified point."""
    caps = sorted({r["max_false_reject"] for r in rows})
    lines = [
        f"review rate on these scores at each certified point ({100 * confidence:g}% "
        "confidence; rows: pit-miss bound, columns: false-reject cap, 0% = nothing routed pit):",
        "  bound " + "".join(f"{100 * c:>8g}%" for c in caps),
    ]
    for bound in sorted({r["max_pit_miss"] for r in rows}):
        cells = [_rate(r["maybe_rate"]) for r in rows if r["max_pit_miss"] == bound]
        lines.append(f"  {100 * bound:>4g}% " + "".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def format_second_look(look: dict, held: str) -> str:
    """The cascade as certified, and what it changed on the calibration crops."""
    th, pol, alone = look["thresholds"], look["policy"], look["without_second_look"]
    cost = look["review_cost"]
    ci = cost["review_rate_ci"]
    rate = (
        f"{_rate(cost['review_rate'])} [{_rate(ci[0])}, {_rate(ci[1])}]"
        if cost["review_rate"] is not None
        else "n/a"
    )
    return "\n".join(
        [
            f"second look ({_stage(look)}): {look['n_second']} crops in doubt "
            f"({_rate(look['share'])}) scored again, temperature {pol['temperature']:.4f}; "
            f"both stages route by t_low {th['t_low']:.6f}, t_high {th['t_high']:.6f}",
            f"cascade: {th['calib_pit_misses']} pits routed clean in either stage, pit-miss "
            f"bound {100 * th['pit_miss_bound']:.3f}% {held}, maybe rate "
            f"{_rate(th['calib_maybe_rate'])} (without the second look "
            f"{_rate(alone['calib_maybe_rate'])}); routes "
            + ", ".join(f"{k} {v}" for k, v in look["calib_routes"].items()),
            f"cascade review rate at the reference point: {rate} (n={cost['n']}, "
            f"{cost['n_pits']} pits, 95% bootstrap)",
        ]
    )


def _stage(look: dict) -> str:
    """The second stage in a few words: its views, and whose model when not the run's."""
    model = look.get("model")
    return (
        look["views"]
        if not model
        else f"{model['model_name']} of {model['run']}, views {look['views']}"
    )


def format_review_cost(cost: dict) -> str:
    """The reference review rate and the specificity at 99% recall, with their intervals."""
    ref = cost["reference"]
    point = (
        f"{_rate(cost['review_rate'])} [{_rate(cost['review_rate_ci'][0])}, "
        f"{_rate(cost['review_rate_ci'][1])}]"
        if cost["review_rate"] is not None
        else f"n/a ({cost['why']})"
    )
    lo, hi = cost["specificity_ci"]
    return (
        f"review rate at a {100 * ref['max_pit_miss']:g}% bound ({100 * ref['confidence']:g}%, "
        f"false rejects <= {100 * ref['max_false_reject']:g}%): {point}; specificity at "
        f"{100 * cost['recall']:g}% pit recall {_rate(cost['specificity_at_recall'])} "
        f"[{_rate(lo)}, {_rate(hi)}] (n={cost['n']}, {cost['n_pits']} pits, 95% bootstrap)"
    )


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


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
            "pitguard calibrate runs/cf --max-false-reject 0.05 --second-look-model runs/cf-lite0",
        ],
        cmd_calibrate,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="calibration crops (default: the run's own calib part)")
    p.add_argument("--split", help="part of a split --data to use (default calib)")
    p.add_argument(
        "--max-pit-miss",
        type=OPEN_SHARE,
        default=0.01,
        help="bound on pits routed clean (default 0.01)",
    )
    p.add_argument(
        "--confidence", type=OPEN_SHARE, default=0.95, help="confidence of the bound (default 0.95)"
    )
    p.add_argument("--max-false-reject", type=OPEN_SHARE, help="also bound clean crops routed pit")
    p.add_argument(
        "--scores",
        choices=("holdout", "oof"),
        help="holdout: the model's scores on its calib part or --data (exact bound); oof: a "
        "--folds run's out-of-fold scores (more pits, cross-fit bound). Default: oof for a "
        "--folds run, else holdout",
    )
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="calibrate a run whose training stopped before its planned epochs (recorded in "
        "policy.json)",
    )
    p.add_argument(
        "--guarantee",
        choices=("exact", "expected"),
        default="exact",
        help="exact (default): with --confidence, the rate of pits routed clean is at most "
        "--max-pit-miss; expected: that rate is at most --max-pit-miss on average over "
        "calibrations (conformal risk control; weaker, fewer crops to review, --confidence unused)",
    )
    p.add_argument(
        "--second-look",
        choices=("none", "hflip", "rot4", "d8"),
        metavar="VIEWS",
        help="a second stage: the crops left between the thresholds are scored again by the "
        "same network under test-time views (hflip: 2 passes, rot4: 4, d8: 8) and routed by the "
        "same thresholds, each certified for the cascade as a whole (t_high on the clean crops, "
        "t_low on the pits; out of fold for a --folds run), so both bounds cover every crop "
        "either stage routes; needs --max-false-reject. Default: the recipe's "
        "model.second_look (none with --second-look-model); none: one stage",
    )
    p.add_argument(
        "--second-look-model",
        metavar="RUN2",
        help="the second stage is RUN2's model (a larger one, say) instead of the run's own, "
        "under --second-look's views if given; RUN2 must be trained on the run's split (--data "
        "RUN/split.csv) and, for --scores oof, cross-fitted there too, so that no crop is "
        "scored by a model that trained on it; export puts its network in the bundle",
    )


def cmd_thresholds(args: argparse.Namespace) -> int:
    from pitguard.decision.calibrate import sweep_run

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
    p.add_argument("--min-recall", type=SHARE, default=0.99, help="pit recall floor (default 0.99)")
    p.add_argument(
        "--every", type=COUNT, default=5, help="print every Nth threshold of the 101 (default 5)"
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
    add_eval(sub)
    add_calibrate(sub)
    add_thresholds(sub)
    add_recipes(sub)
