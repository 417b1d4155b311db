"""What proving a bundle costs at load: opening it with its digests remembered, with a trusted
key (every file hashed afresh, the signature verified), and with its check crops scored again
(``verify``), for each signed bundle given; and what signing costs.

    .venv-runtime/bin/python benchmarks/bundle_load_cost.py BUNDLE [BUNDLE ...] --trust KEY.pub
        [--threads 2] [--repeats 5] [--json OUT]

Each figure is the median of ``--repeats`` loads of ``pitguard.runtime.Classifier`` on the CPU,
in this process, after one load that fills the digest memo. The CPU is named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_latency import cpu_name


def seconds(repeats: int, load) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(bundle: str, trust: str, threads: int, repeats: int) -> dict:
    from pitguard.runtime import Classifier
    from pitguard.runtime.trust import trusted_keys, verify_bundle

    def load(**kw):
        return Classifier(bundle, device="cpu", threads=threads, **kw)

    load()  # fills the digest memo
    size = sum(p.stat().st_size for p in Path(bundle).iterdir() if p.is_file())
    keys = trusted_keys(trust)
    checked = load(verify=True).check
    return {
        "bundle": Path(bundle).name,
        "megabytes": round(size / 2**20, 1),
        "open_remembered_s": seconds(repeats, load),
        "open_trusted_s": seconds(repeats, lambda: load(trust=keys)),
        "signature_only_s": seconds(repeats, lambda: verify_bundle(bundle, keys)),
        "open_verified_s": seconds(repeats, lambda: load(verify=True)),
        "check_crops": checked.n if checked else 0,
        "check_ms": checked.ms if checked else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--trust", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="results/bundle-load-cost.json")
    args = ap.parse_args()
    rows = [measure(b, args.trust, args.threads, args.repeats) for b in args.bundles]
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "repeats": args.repeats,
        "loads": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']}, {args.threads} threads, median of {args.repeats} loads")
    print(f"{'bundle':<22} {'MB':>6} {'open':>7} {'trusted':>8} {'sig':>7} {'verified':>9}")
    for r in rows:
        print(
            f"{r['bundle']:<22} {r['megabytes']:>6} {r['open_remembered_s']:>6.2f}s "
            f"{r['open_trusted_s']:>7.2f}s {r['signature_only_s']:>6.3f}s "
            f"{r['open_verified_s']:>8.2f}s"
        )


if __name__ == "__main__":
    main()
