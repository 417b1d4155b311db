"""The whole pipeline on a built-in default: what ``make demo`` runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pitguard.data.audit import audit, format_audit
from pitguard.data.split import split_dataset
from pitguard.data.synth import synthesize


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, data: str | None = None, fast: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    if data is None:
        t = _step("synthesize crops")
        data_dir = out / "crops"
        if not (data_dir / "cherry_clean").exists():
            info = synthesize(data_dir, count=240 if fast else 1200, seed=0)
            print(f"{info['count']} synthetic crops in {data_dir}")
        else:
            print(f"reusing {data_dir}")
        timings["synth_s"] = time.perf_counter() - t
    else:
        data_dir = Path(data)

    t = _step(f"audit {data_dir}")
    report = audit(data_dir)
    print(format_audit(report))
    (out / "audit.json").write_text(json.dumps(report, indent=2))
    timings["audit_s"] = time.perf_counter() - t

    t = _step("split (duplicate-aware, seed 0)")
    result = split_dataset(data_dir, out / "split.csv", seed=0)
    for split, per in result["counts"].items():
        print(f"  {split:<6} " + ", ".join(f"{k} {v}" for k, v in per.items()))
    timings["split_s"] = time.perf_counter() - t

    print("\n== done: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"outputs in {out}")
    return 0
