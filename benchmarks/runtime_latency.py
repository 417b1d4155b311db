"""What the line's runtime costs: the time from a fresh interpreter's import to its first
prediction, and milliseconds per crop at a frame's batch, for each bundle given.

    PYTHON benchmarks/runtime_latency.py BUNDLE [BUNDLE ...] [--batch 16] [--threads 2]
        [--device cpu] [--graph onnx] [--repeats 50] [--json OUT]

Runs with the base install alone (no torch): PYTHON may be the runtime-only environment that
`make test-runtime` builds (.venv-runtime/bin/python). Each bundle is timed in a subprocess
(import, load, first prediction), then in this process: a warm-up, then ``--repeats`` batches of
random float32 crops in [0, 1], the median and the 10th-90th percentiles of the milliseconds per
crop. The CPU is named from /proc/cpuinfo, the provider from the session.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIRST = """
import time, sys
t0 = time.perf_counter()
import numpy as np
from pitguard.runtime import Classifier
t1 = time.perf_counter()
c = Classifier(sys.argv[1], graph=sys.argv[2], device=sys.argv[3], threads=int(sys.argv[4]))
x = np.random.default_rng(0).random((int(sys.argv[5]), 3, c.size, c.size), dtype=np.float32)
c.classify(x)
t2 = time.perf_counter()
print(t1 - t0, t2 - t0, "torch" in sys.modules)
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_bundle(bundle: str, args: argparse.Namespace) -> dict:
    from pitguard.runtime import Classifier

    cmd = [sys.executable, "-c", FIRST, bundle, args.graph, args.device, str(args.threads)]
    out = subprocess.run([*cmd, str(args.batch)], capture_output=True, text=True, check=True)
    import_s, first_s, torch_loaded = out.stdout.split()
    clf = Classifier(bundle, graph=args.graph, device=args.device, threads=args.threads)
    x = np.random.default_rng(1).random((args.batch, 3, clf.size, clf.size), dtype=np.float32)
    for _ in range(3):
        clf.classify(x)
    per_crop = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        clf.classify(x)
        per_crop.append((time.perf_counter() - t) * 1000 / args.batch)
    lo, median, hi = np.percentile(per_crop, [10, 50, 90])
    return {
        "bundle": bundle,
        "model": clf.meta.get("model_name"),
        "graph": args.graph,
        "provider": clf.provider,
        "import_s": float(import_s),
        "import_to_first_prediction_s": float(first_s),
        "torch_imported": torch_loaded == "True",
        "ms_per_crop_median": float(median),
        "ms_per_crop_p10_p90": [float(lo), float(hi)],
        "ms_per_frame_median": float(median * args.batch),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--batch", type=int, default=16, help="crops a frame (default 16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--graph", default="onnx")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    rows = [time_bundle(b, args) for b in args.bundles]
    result = {
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "rows": rows,
    }
    print(f"{result['cpu']}, Python {result['python']}, batch {args.batch}, {args.threads} threads")
    print(f"{'bundle':<28} {'provider':<22} {'import->1st s':>13} {'ms/crop':>8} {'p10-p90':>13}")
    for r in rows:
        lo, hi = r["ms_per_crop_p10_p90"]
        print(
            f"{Path(r['bundle']).name:<28} {r['provider']:<22} "
            f"{r['import_to_first_prediction_s']:>13.2f} {r['ms_per_crop_median']:>8.2f} "
            f"{lo:>6.2f}-{hi:<6.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
