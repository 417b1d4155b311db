"""The whole pipeline on a built-in default: what ``make demo`` runs.

synthesize -> audit -> split -> train -> eval -> calibrate -> export (+ parity) -> bench
-> predict -> report, on synthetic crops (or the user's own with ``--data``).
"""

from __future__ import annotations

import time
from pathlib import Path

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


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, data: str | None = None, fast: bool = False) -> int:
    from pitguard.config import load_config
    from pitguard.core.files import write_json
    from pitguard.data.audit import audit, format_audit
    from pitguard.data.manifest import read_manifest
    from pitguard.data.synth import synthesize
    from pitguard.decision.calibrate import calibrate_run
    from pitguard.deploy.bench import bench, format_table
    from pitguard.deploy.export import export_run
    from pitguard.deploy.predict import load, predict_files
    from pitguard.evaluate.run import evaluate_run, format_report
    from pitguard.models.runfolder import RunPaths, load_policy
    from pitguard.report import write_report
    from pitguard.train.loop import train

    started = time.perf_counter()
    prepare_out(out)
    run = out / "run"
    timings: dict[str, float] = {}

    if data is None:
        t = _step("synthesize crops")
        data_dir = out / "crops"
        info = synthesize(data_dir, count=800 if fast else 1200, seed=0)
        print(f"{info['count']} synthetic crops in {data_dir}")
        timings["synth"] = time.perf_counter() - t
    else:
        data_dir = Path(data)

    t = _step(f"audit {data_dir}")
    report = audit(data_dir)
    print(format_audit(report))
    write_json(out / "audit.json", report)
    timings["audit"] = time.perf_counter() - t

    t = _step("train (small-fast recipe; split seeded and duplicate-aware)")
    sets = ["train.epochs=2", "model.name=pitguard_tiny"] if fast else ["train.epochs=12"]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(data_dir)})
    train(cfg, run)
    timings["train"] = time.perf_counter() - t

    t = _step("calibrate the clean/maybe/pit decision on the calib part")
    rec = calibrate_run(run, max_pit_miss=DEMO_MAX_PIT_MISS, confidence=DEMO_CONFIDENCE)
    th = rec["thresholds"]
    print(
        f"temperature {rec['policy']['temperature']:.3f}, t_low {th['t_low']:.4f}, t_high {th['t_high']:.4f}; "
        f"pit-miss bound {100 * th['pit_miss_bound']:.2f}% at {100 * DEMO_CONFIDENCE:.0f}% confidence "
        f"on {rec['calibration_data']['n_pits']} calib pits"
    )
    timings["calibrate"] = time.perf_counter() - t

    t = _step("evaluate on the untouched test part")
    result = evaluate_run(run, policy=load_policy(run))
    print(format_report(result))
    timings["eval"] = time.perf_counter() - t

    t = _step("export the bundle (ONNX, parity checked on the calib part)")
    bundle = out / "bundle"
    meta = export_run(run, bundle, onnx=True)
    parity = meta["onnx"]["parity"]
    print(
        f"{bundle}: max p(pit) difference {parity['max_prob_diff']:.2e}, {parity['route_mismatches']} route mismatches"
    )
    timings["export"] = time.perf_counter() - t

    t = _step("benchmark the bundle (CPU, end to end from uint8 crops)")
    bench_result = bench(
        [str(bundle)],
        batch_sizes=(1, 32),
        backends=("eager", "onnx"),
        min_seconds=0.5 if fast else 2.0,
    )
    print(format_table(bench_result))
    write_json(RunPaths(run).bench, bench_result)
    timings["bench"] = time.perf_counter() - t

    t = _step("predict a few crops through the bundle")
    test = [r for r in read_manifest(RunPaths(run).split) if r.split == "test"]
    sample = [r for r in test if r.label == "clean"][:3] + [r for r in test if r.label == "pit"][:3]
    truth = {str(r.path): r.label for r in sample}
    predicted = predict_files(
        load(bundle), [r.path for r in sample], out / "predictions.csv", keep_rows=True
    )
    for row in predicted["rows"]:
        print(
            f"  {Path(row['path']).name:<22} true {truth[row['path']]:<5} -> route "
            f"{row['route']:<6} p(pit) {row['p_pit']}"
        )
    timings["predict"] = time.perf_counter() - t

    t = _step("report")
    written = write_report([run], out / "report")
    timings["report"] = time.perf_counter() - t

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
    print(
        "timings (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; total {time.perf_counter() - started:.0f}"
    )
    print(f"report: {written['files']['html']}")
    return 0
