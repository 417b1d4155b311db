"""Train recipe variants on several split seeds in parallel; choose on val, report test.

    .venv/bin/python benchmarks/recipe_grid.py --grid GRID.yaml --split-seeds 0,1,2,3 \
        --parallel 6 --threads 2 --out runs/grid [--deadline-minutes 9]

GRID.yaml names each variant with its recipe and overrides:

    variants:
      lite0-96:
        recipe: lite0
        set: [train.max_minutes=0, train.epochs=21, train.amp=false]
      student:
        recipe: cpu-fast
        after: lite0-96  # waits for that variant's run on the same seed
        set: ["train.teacher={out}/lite0-96-s{seed}"]

Each job trains one variant on one split seed (``data.split_seed``), calibrates it on its own
calib part (``--max-pit-miss 0.01 --max-false-reject 0.05``, exact holdout bound) and scores its
calib and test parts. The table ranks variants by their mean val accuracy (the value each run
selected its epoch on), or with ``--choose-on calib`` by their calib accuracy, for variants that
train on val (``train.fit_val``); the test columns are reported, never used to choose. A fixed
epoch count (``train.max_minutes=0``) replays on a fast machine the schedule a time budget plans on
a slow one. Jobs on one GPU share it in time slices: 20 at once on an H200 trained at about
500 images/s each, so run fewer there. Writes OUT/grid.json after every finished job; jobs not
started by the deadline are listed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared/data/cherry_classification/train"


def _pitguard(*args: str, log) -> int:
    cmd = [sys.executable, "-m", "pitguard", *args]
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)


def run_job(name: str, spec: dict, seed: int, args, deadline: float, finished: dict) -> dict:
    record: dict = {"variant": name, "split_seed": seed}
    if spec.get("after"):
        finished[(spec["after"], seed)].wait()
    run = Path(args.out) / f"{name}-s{seed}"
    if args.reuse and (run / "test.json").is_file():  # a finished job: read what it wrote
        return collect(run, record)
    if time.time() > deadline:
        return {**record, "status": "not started: deadline"}
    own = [s.format(seed=seed, out=args.out) for s in spec.get("set", [])]
    sets = [f"data.split_seed={seed}", f"train.threads={args.threads}", *own]
    flags = [x for s in sets for x in ("--set", s)]
    with open(f"{run}.log", "w") as log:
        start = time.time()
        code = _pitguard(
            "train", "--recipe", spec["recipe"], "--data", args.data, "--out", str(run),
            *flags, log=log,
        )  # fmt: skip
        if code:
            return {**record, "status": f"train exit {code}", "log": f"{run}.log"}
        record["wall_seconds"] = time.time() - start
        _pitguard(
            "calibrate", str(run), "--max-pit-miss", "0.01", "--max-false-reject", "0.05", log=log
        )  # too few calib pits for the bound: no maybe rate, the rest still scored
        code = _pitguard("eval", str(run), "--json", str(run / "test.json"), log=log)
        if code:
            return {**record, "status": f"eval exit {code}", "log": f"{run}.log"}
        _pitguard(  # the calib part: one no variant trains or chooses epochs on
            "eval", str(run), "--data", str(run / "split.csv"), "--split", "calib",
            "--json", str(run / "calib.json"), log=log,
        )  # fmt: skip
    return collect(run, record)


def collect(run: Path, record: dict) -> dict:
    """One job's record from the files its run folder holds."""
    summary = json.loads((run / "train_summary.json").read_text())
    record |= {
        k: summary.get(k)
        for k in ("epochs_run", "best_epoch", "best_value", "train_seconds", "device")
    }
    record["val_accuracy"] = _kept_val_accuracy(summary)
    if (run / "calib.json").is_file():
        calib = json.loads((run / "calib.json").read_text())
        record |= {
            "n_calib": calib["n"],
            "calib_accuracy": calib["accuracy"],
            "calib_roc_auc": calib["roc_auc"],
            "calib_log_loss": calib.get("log_loss"),
        }
    report = run / "calibration" / "policy_report.json"
    calibrated = report.is_file()
    if calibrated:  # the review rate on the calib scores, never on test
        cost = json.loads(report.read_text()).get("review_cost") or {}
        record |= {
            "calib_review_rate": cost.get("review_rate"),
            "calib_review_rate_ci": cost.get("review_rate_ci"),
            "calib_specificity_at_99_recall": cost.get("specificity_at_recall"),
        }
    test = json.loads((run / "test.json").read_text())
    policy = (test.get("policy") or {}) if calibrated else {}
    record |= {
        "status": "done",
        "n_val": summary.get("n_val"),
        "n_test": test["n"],
        "test_n_pits": test.get("n_pit"),
        "test_accuracy": test["accuracy"],
        "test_accuracy_ci": test["accuracy_ci"],
        "test_pit_recall": test["pit_recall"],
        "test_roc_auc": test["roc_auc"],
        "test_roc_auc_ci": test["roc_auc_ci"],
        "test_maybe_rate": policy.get("maybe_rate"),
        "test_maybe_ci": policy.get("maybe_ci"),
        "test_pits_routed_clean": policy.get("pits_routed_clean"),
        "test_false_reject_rate": policy.get("false_reject_rate"),
    }
    return record


def machine(threads: int) -> str:
    """The CPU named (and the GPU, where one trains), for the figures' record."""
    import torch

    from pitguard.deploy.timing import hardware

    hw = hardware("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f", {hw['gpu']}" if "gpu" in hw else ""
    return f"{hw['cpu']}, {threads} threads per job{gpu}"


def _kept_val_accuracy(summary: dict) -> float | None:
    """Val accuracy of the epoch the run kept: its best, or its last under select_metric=last.

    Summaries written before ``val_accuracy`` hold it only as ``best_value`` (the selection
    metric's value) of a run selected on it.
    """
    if "val_accuracy" in summary:
        return summary["val_accuracy"]
    return summary.get("best_value") if summary.get("selected_on") == "val_accuracy" else None


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def table(records: list[dict], choose_on: str = "val") -> list[dict]:
    names = sorted({r["variant"] for r in records})
    rows = []
    for name in names:
        done = [r for r in records if r["variant"] == name and r["status"] == "done"]
        rows.append(
            {
                "variant": name,
                "runs": len(done),
                "val_accuracy": _mean(done, "val_accuracy"),
                "calib_accuracy": _mean(done, "calib_accuracy"),
                "calib_roc_auc": _mean(done, "calib_roc_auc"),
                "calib_review_rate": _mean(done, "calib_review_rate"),
                "test_accuracy": _mean(done, "test_accuracy"),
                "test_pit_recall": _mean(done, "test_pit_recall"),
                "test_roc_auc": _mean(done, "test_roc_auc"),
                "test_maybe_rate": _mean(done, "test_maybe_rate"),
                "epochs": _mean(done, "epochs_run"),
            }
        )
    if choose_on == "review":  # the fewest crops to review at the certified 1% bound
        return sorted(
            rows, key=lambda r: 1.0 if r["calib_review_rate"] is None else r["calib_review_rate"]
        )
    return sorted(rows, key=lambda r: -(r[f"{choose_on}_accuracy"] or 0))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _auc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _epochs(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", required=True, help="YAML file of variants")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--split-seeds", default="0,1,2,3")
    parser.add_argument("--parallel", type=int, default=1, help="jobs at a time")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    parser.add_argument("--deadline-minutes", type=float, default=0, help="0 = none")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--out", default="runs/grid")
    parser.add_argument("--json", default=None, help="default OUT/grid.json")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read jobs whose run folder under OUT is finished instead of training them again",
    )
    parser.add_argument(
        "--choose-on",
        choices=("val", "calib", "review"),
        default="val",
        help="what the table ranks by: val accuracy; calib accuracy where a variant trains on "
        "val (train.fit_val); review: the calib part's review rate at a 1%% bound (95%%, false "
        "rejects <= 5%%), fewest first",
    )
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    variants = (yaml.safe_load(Path(args.grid).read_text()) or {}).get("variants") or {}
    bad = [n for n, s in variants.items() if not isinstance(s, dict) or "recipe" not in s]
    bad += [n for n, s in variants.items() if n not in bad and s.get("after", n) not in variants]
    if not variants or bad:
        print(f"{args.grid}: each entry under 'variants:' needs a recipe: {bad}", file=sys.stderr)
        return 2
    if args.only:
        variants = {n: variants[n] for n in args.only.split(",")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out_json = Path(args.json or Path(args.out) / "grid.json")
    seeds = [int(s) for s in args.split_seeds.split(",")]
    deadline = time.time() + 60 * args.deadline_minutes if args.deadline_minutes else float("inf")
    jobs = [(n, s, seed) for seed in seeds for n, s in variants.items()]  # paired seed by seed
    records: list[dict] = []

    def save() -> None:
        out_json.write_text(
            json.dumps(
                {
                    "machine": machine(args.threads),
                    "records": records,
                    "table": table(records, args.choose_on),
                },
                indent=1,
            )
            + "\n"
        )

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    finished = {(n, seed): threading.Event() for n, _, seed in jobs}

    def job(name: str, spec: dict, seed: int) -> dict:
        try:
            return run_job(name, spec, seed, args, deadline, finished)
        finally:
            finished[(name, seed)].set()

    # a job that waits for another is queued after every job it could wait for
    jobs.sort(key=lambda j: bool(j[1].get("after")))
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(job, n, s, seed) for n, s, seed in jobs]
        for future in futures:
            records.append(future.result())
            save()
    print(f"{'variant':<24}{'runs':>5}{'val %':>8}{'calib %':>8}{'c AUC':>7}{'c rev %':>8}"
          f"{'test %':>8}{'pit rec':>8}{'AUC':>7}{'maybe %':>8}{'epochs':>7}")  # fmt: skip
    for r in table(records, args.choose_on):
        print(
            f"{r['variant']:<24}{r['runs']:>5}{_pct(r['val_accuracy']):>8}"
            f"{_pct(r['calib_accuracy']):>8}{_auc(r['calib_roc_auc']):>7}"
            f"{_pct(r['calib_review_rate']):>8}"
            f"{_pct(r['test_accuracy']):>8}{_pct(r['test_pit_recall']):>8}"
            f"{_auc(r['test_roc_auc']):>7}{_pct(r['test_maybe_rate']):>8}{_epochs(r['epochs']):>7}"
        )
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
