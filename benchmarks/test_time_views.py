"""Test-time views: what averaging a trained model's logits over mirrored and quarter-turned
crops (`model.tta`) changes, paired on the same weights.

    .venv/bin/python benchmarks/test_time_views.py RUN [RUN ...] [--views none,hflip,d8]
        [--out DIR] [--json OUT]

Each RUN is a run folder of `pitguard train` on a split with val, calib and test parts. Training
never reads the views (its per-epoch val reads one), so a run trained with `model.tta=V` has the
same weights as the run trained without. For each RUN and view set the script copies the run's
model into DIR/NAME-VIEWS with `model.tta` set, calibrates it on its calib part (by default with
the recipe grid's bound: `--max-pit-miss 0.01 --confidence 0.95 --max-false-reject 0.05`; a
calib part with too few pits for it leaves the routes out), and evaluates its
val, calib and test parts as `pitguard eval` does. It prints the mean over the runs per view
set and writes every figure to JSON (default DIR/test_time_views.json). The views cost their
number in inference time: `pitguard bench` on an exported bundle says what that is per crop.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json, write_json
from pitguard.core.fmt import pct
from pitguard.data.manifest import read_manifest, write_manifest
from pitguard.decision.calibrate import calibrate_run
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import INNER_FOLDERS, RunPaths, is_run
from pitguard.models.views import TEST_TIME_VIEWS
from pitguard.runtime.policy import DecisionPolicy

PARTS = ("val", "calib", "test")
# A copy keeps what evaluating it needs. Checkpoints, plots, folds and everything scored or
# fitted with one view (evaluations, policies, out-of-fold scores, benchmark results) stay behind.
SKIP = shutil.ignore_patterns(
    *INNER_FOLDERS,
    "tensorboard",
    "*.png",
    "oof.csv",
    "crossfit.json",
    "policy.json",
    "test.json",
    "bench_accuracy.json",
)


def with_views(run: Path, dest: Path, views: str) -> Path:
    """A copy of ``run``'s model reading ``views``; its split still points at the same crops."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run, dest, ignore=SKIP)
    paths, source = RunPaths(dest), RunPaths(run)
    if source.split.is_file():  # its paths are relative to the run folder: rewrite them
        write_manifest(paths.split, read_manifest(source.split))
    meta = read_json(paths.model) or {}
    meta["input"]["tta"] = views
    if meta.get("config"):
        meta["config"]["model"]["tta"] = views
    write_json(paths.model, meta)
    config = read_json(paths.config)
    if config:
        config["model"]["tta"] = views
        write_json(paths.config, config)
    return dest


def measure(run: Path, views: str, out: Path, n_boot: int, bound: dict) -> dict:
    """Calibrate the copy reading ``views`` on its calib part under ``bound`` (calibrate_run's
    max_pit_miss, confidence, max_false_reject), then evaluate every part."""
    copy = with_views(run, out / f"{run.name}-{views}", views)
    row: dict = {"run": str(run), "views": views, "copy": str(copy)}
    try:
        record = calibrate_run(copy, part="calib", **bound)  # what it wrote to policy.json
        policy = DecisionPolicy.from_dict(record["policy"])
    except PitguardError as exc:  # too few calib pits for the bound: no routes, the rest scored
        policy = record = None
        row["calibration_error"] = str(exc)
    for part in PARTS:
        res = evaluate_run(copy, part=part, n_boot=n_boot, policy=policy, calibration=record)
        row[part] = {
            k: res.get(k)
            for k in ("n", "accuracy", "accuracy_ci", "pit_recall", "roc_auc", "roc_auc_ci")
        }
        row[part]["log_loss"] = res.get("log_loss")
        routed = res.get("policy") or {}
        row[part] |= {
            "maybe_rate": routed.get("maybe_rate"),
            "maybe_ci": routed.get("maybe_ci"),
            "pits_routed_clean": routed.get("pits_routed_clean"),
        }
    return row


def summarize(rows: list[dict], views: list[str]) -> list[dict]:
    """Per view set: the mean over runs of each part's figures, and the test figures' paired
    difference from the first view set, with the spread of that difference over the runs."""
    first = {r["run"]: r for r in rows if r["views"] == views[0]}
    out = []
    for v in views:
        mine = [r for r in rows if r["views"] == v]
        entry: dict = {"views": v, "runs": len(mine)}
        for part in PARTS:
            for key in ("accuracy", "roc_auc", "maybe_rate", "log_loss"):
                vals = [r[part][key] for r in mine if r[part].get(key) is not None]
                entry[f"{part}_{key}"] = float(np.mean(vals)) if vals else None
        diffs = [r["test"]["accuracy"] - first[r["run"]]["test"]["accuracy"] for r in mine]
        entry["test_accuracy_gain"] = float(np.mean(diffs))
        entry["test_accuracy_gain_range"] = [float(min(diffs)), float(max(diffs))]
        entry["test_pits_routed_clean"] = sum(r["test"]["pits_routed_clean"] or 0 for r in mine)
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    ap.add_argument("--views", default="none,hflip,d8", help=f"from {', '.join(TEST_TIME_VIEWS)}")
    ap.add_argument("--out", type=Path, default=Path("runs/test-time-views"))
    ap.add_argument("--json", type=Path, help="default OUT/test_time_views.json")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--max-pit-miss", type=float, default=0.01)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--max-false-reject", type=float, default=0.05)
    args = ap.parse_args(argv)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    bad = [v for v in views if v not in TEST_TIME_VIEWS]
    if bad or not views:
        raise PitguardError(f"--views {args.views}: choose from {', '.join(TEST_TIME_VIEWS)}")
    not_runs = [str(r) for r in args.runs if not is_run(r)]
    if not_runs:
        raise PitguardError(
            f"not run folders: {', '.join(not_runs)}; give `pitguard train` outputs"
        )
    names = [r.name for r in args.runs]
    if len(set(names)) < len(names):
        raise PitguardError("runs share a folder name; their copies would collide: rename one")
    bound = {
        "max_pit_miss": args.max_pit_miss,
        "confidence": args.confidence,
        "max_false_reject": args.max_false_reject,
    }
    rows = [measure(r, v, args.out, args.n_boot, bound) for r in args.runs for v in views]
    summary = summarize(rows, views)
    write_json(args.json or args.out / "test_time_views.json", {"summary": summary, "runs": rows})
    print(f"{'views':>6}{'val %':>8}{'calib %':>9}{'calib AUC':>10}{'test %':>8}"
          f"{'gain':>7}{'test AUC':>9}{'maybe %':>8}{'missed':>7}")  # fmt: skip
    for s in summary:
        print(
            f"{s['views']:>6}{pct(s['val_accuracy'], sign=''):>8}"
            f"{pct(s['calib_accuracy'], sign=''):>9}"
            f"{s['calib_roc_auc']:>10.4f}{pct(s['test_accuracy'], sign=''):>8}"
            f"{100 * s['test_accuracy_gain']:>+7.2f}{s['test_roc_auc']:>9.4f}"
            f"{pct(s['test_maybe_rate'], sign=''):>8}{s['test_pits_routed_clean']:>7}"
        )
    print(f"means over {len(args.runs)} run(s); gain: test accuracy paired against {views[0]}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except PitguardError as exc:
        raise SystemExit(f"error: {exc}") from None
