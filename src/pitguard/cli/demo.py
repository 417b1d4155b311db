"""The whole pipeline on a built-in default: what ``make demo`` runs.

synthesize -> audit -> split -> train -> eval -> calibrate -> export (+ parity) -> bench
-> predict -> report, on synthetic crops (or the user's own with ``--data``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pitguard.core.errors import PitguardError

# The demo's calib part is small (about 120 pits), so its bound is 5% rather than the line's 1%:
# 1% needs at least 299 calibration pits with no miss.
DEMO_MAX_PIT_MISS = 0.05
DEMO_CONFIDENCE = 0.95


# What a demo writes into its folder: an earlier demo made of these alone is replaced.
DEMO_OUTPUTS = frozenset({"crops", "run", "bundle", "report", "audit.json", "predictions.csv"})


def prepare_out(out: Path) -> None:
    """An empty output folder: an earlier demo's outputs are removed, anything else refused."""
    import shutil

    if out.exists() and not out.is_dir():
        raise PitguardError(f"{out}: is a file; pass --out with a folder for the demo")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in present if name not in DEMO_OUTPUTS]
    if foreign:
        raise PitguardError(
            f"{out}: holds {', '.join(foreign[:5])}, which pitguard demo did not write; "
            "pass --out with a new or empty folder"
        )
    if present:
        print(f"replacing the earlier demo in {out}", flush=True)
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


T = TypeVar("T")  # what a step returns


def _timed(timings: dict[str, float], key: str, title: str, step: Callable[..., T], *args) -> T:
    """Run one step of the demo under its heading; its seconds go into ``timings[key]``."""
    print(f"\n== {title}", flush=True)
    t = time.perf_counter()
    result = step(*args)
    timings[key] = time.perf_counter() - t
    return result


def run_demo(out: Path, data: str | None = None, fast: bool = False) -> int:
    """Run the pipeline into ``out`` on ``data`` (synthetic crops when None), then print the
    test part's routing table; ``fast`` trains a tiny model for two epochs on fewer crops."""
    from pitguard.report import write_report

    started = time.perf_counter()
    prepare_out(out)
    run, bundle = out / "run", out / "bundle"
    timings: dict[str, float] = {}
    if data is None:
        data_dir = out / "crops"
        _timed(timings, "synth", "synthesize crops", _synthesize, data_dir, fast)
    else:
        data_dir = Path(data)
    _timed(timings, "audit", f"audit {data_dir}", _audit, data_dir, out)
    title = "train (small-fast recipe; split seeded and duplicate-aware)"
    _timed(timings, "train", title, _train, data_dir, run, fast)
    title = "calibrate the clean/maybe/pit decision on the calib part"
    _timed(timings, "calibrate", title, _calibrate, run)
    result = _timed(timings, "eval", "evaluate on the untouched test part", _evaluate, run)
    title = "export the bundle (ONNX, parity checked on the calib part)"
    _timed(timings, "export", title, _export, run, bundle)
    title = "benchmark the bundle (CPU, end to end from uint8 crops)"
    _timed(timings, "bench", title, _bench, run, bundle, fast)
    title = "predict a few crops through the bundle"
    _timed(timings, "predict", title, _predict, run, bundle, out / "predictions.csv")
    written = _timed(timings, "report", "report", write_report, [run], out / "report")
    _print_table(result)
    print(
        "timings (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; total {time.perf_counter() - started:.0f}"
    )
    print(f"report: {written['files']['html']}")
    return 0


def _synthesize(data_dir: Path, fast: bool) -> None:
    from pitguard.data.synth import synthesize

    info = synthesize(data_dir, count=800 if fast else 1200, seed=0)
    print(f"{info['count']} synthetic crops in {data_dir}")


def _audit(data_dir: Path, out: Path) -> None:
    from pitguard.core.files import write_json
    from pitguard.data.audit import audit, format_audit

    report = audit(data_dir)
    print(format_audit(report))
    write_json(out / "audit.json", report)


def _train(data_dir: Path, run: Path, fast: bool) -> None:
    from pitguard.config import load_config
    from pitguard.train.loop import train

    sets = ["train.epochs=2", "model.name=pitguard_tiny"] if fast else ["train.epochs=12"]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(data_dir)})
    train(cfg, run)


def _calibrate(run: Path) -> None:
    from pitguard.decision.calibrate import calibrate_run

    rec = calibrate_run(run, max_pit_miss=DEMO_MAX_PIT_MISS, confidence=DEMO_CONFIDENCE)
    th = rec["thresholds"]
    print(
        f"temperature {rec['policy']['temperature']:.3f}, t_low {th['t_low']:.4f}, t_high {th['t_high']:.4f}; "
        f"pit-miss bound {100 * th['pit_miss_bound']:.2f}% at {100 * DEMO_CONFIDENCE:.0f}% confidence "
        f"on {rec['calibration_data']['n_pits']} calib pits"
    )


def _evaluate(run: Path) -> dict:
    from pitguard.evaluate.run import evaluate_run, format_report
    from pitguard.models.runfolder import load_policy

    result = evaluate_run(run, policy=load_policy(run))
    print(format_report(result))
    return result


def _export(run: Path, bundle: Path) -> None:
    from pitguard.deploy.export import export_run

    meta = export_run(run, bundle, onnx=True)
    parity = meta["onnx"]["parity"]
    print(
        f"{bundle}: max p(pit) difference {parity['max_prob_diff']:.2e}, {parity['route_mismatches']} route mismatches"
    )


def _bench(run: Path, bundle: Path, fast: bool) -> None:
    from pitguard.core.files import write_json
    from pitguard.deploy.bench import bench, format_table
    from pitguard.models.runfolder import RunPaths

    bench_result = bench(
        [str(bundle)],
        batch_sizes=(1, 32),
        backends=("eager", "onnx"),
        min_seconds=0.5 if fast else 2.0,
    )
    print(format_table(bench_result))
    write_json(RunPaths(run).bench, bench_result)


def _predict(run: Path, bundle: Path, csv: Path) -> None:
    """Three clean and three pit crops of the test part, through the bundle."""
    from pitguard.data.manifest import read_manifest
    from pitguard.deploy.predict import load, predict_files
    from pitguard.models.runfolder import RunPaths

    test = [r for r in read_manifest(RunPaths(run).split) if r.split == "test"]
    sample = [r for r in test if r.label == "clean"][:3] + [r for r in test if r.label == "pit"][:3]
    truth = {str(r.path): r.label for r in sample}
    predicted = predict_files(load(bundle), [r.path for r in sample], csv, keep_rows=True)
    for row in predicted["rows"]:
        print(
            f"  {Path(row['path']).name:<22} true {truth[row['path']]:<5} -> route "
            f"{row['route']:<6} p(pit) {row['p_pit']}"
        )


def _print_table(result: dict) -> None:
    """The routing table and the headline on the test part."""
    pol = result["policy"]
    print("\n== routing table on the test part (n={}, exact 95% intervals)".format(result["n"]))
    for key, label in (
        ("pit_miss", "pits routed clean"),
        ("false_reject", "clean routed pit"),
        ("maybe", "sent to review"),
    ):
        value, (lo, hi) = pol[key + "_rate"], pol[key + "_ci"]
        print(f"  {label:<18} {100 * value:6.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]")
    print("  routes: " + ", ".join(f"{k} {v}" for k, v in pol["routes"].items()))
    lo, hi = result["accuracy_ci"]
    print(
        f"\nheadline: test accuracy {100 * result['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] (n={result['n']}), "
        f"pit-miss {100 * pol['pit_miss_rate']:.2f}%, maybe {100 * pol['maybe_rate']:.2f}%"
    )
