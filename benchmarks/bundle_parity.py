"""Does the bundle decide as the run that was certified? `eval`'s routes and p_pit against each
graph of the exported bundle, crop by crop, on any labelled data.

    .venv/bin/python benchmarks/bundle_parity.py RUN BUNDLE [--data DIR] [--split PART] [--json OUT]

RUN is a calibrated run folder and BUNDLE its export. The run is evaluated as `pitguard eval`
does (the calibrated policy, the input guard applied); each ONNX graph of the bundle then scores
the same crops through the line's runtime (`pitguard.runtime.Classifier`). The fp32 graph must
match the run: routes that differ and the largest p_pit difference are reported. An INT8 or FP16
graph holds thresholds certified on its own scores, so it is compared with the routes its own
p_pit and thresholds give (and, for information, with the run's routes).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from pitguard.core.files import read_json, write_json
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import RunPaths, load_part, load_policy, load_run
from pitguard.runtime.backends import BACKENDS
from pitguard.runtime.classifier import Classifier
from pitguard.runtime.routes import ROUTES, route


def _eval_rows(run: Path, data: str | None, split: str | None) -> tuple[list[str], dict]:
    result = evaluate_run(run, data, split, n_boot=1, policy=load_policy(run))
    with (Path(result["outputs"]) / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["path"] for r in rows], {
        "data": result["data"],
        "n": result["n"],
        "p_pit": np.array([float(r["p_pit"]) for r in rows], dtype=np.float32),
        "routes": np.array([r["route"] for r in rows]),
    }


def _crops(run: Path, data: str | None, split: str | None, paths: list[str]) -> np.ndarray:
    """The crops eval scored, decoded by the same loader, in the order of its rows."""
    ev = load_part(load_run(run), data, split)
    if list(ev.crops.paths) != paths:
        raise SystemExit(f"{run}: the evaluated crops and the loaded ones differ in order")
    return ev.crops.images.numpy()


def compare(run: Path, bundle: Path, data: str | None, split: str | None) -> dict:
    paths, ref = _eval_rows(run, data, split)
    crops = _crops(run, data, split, paths)
    meta = read_json(Path(bundle) / "bundle.json") or {}
    out = {"run": str(run), "bundle": str(bundle), "data": ref["data"], "n": ref["n"], "graphs": {}}
    for name, backend in BACKENDS.items():
        if backend.runtime != "onnx" or backend.file_key not in meta.get("files", {}):
            continue
        clf = Classifier(bundle, name, device="cpu")
        for dtype in ("uint8", "float32"):
            x = crops if dtype == "uint8" else crops.astype(np.float32) / np.float32(255)
            got = [clf.classify(x[i : i + 64]) for i in range(0, len(x), 64)]
            p = np.concatenate([g.p_pit for g in got])
            routes = np.concatenate([g.routes for g in got])
            reasons = np.concatenate([g.reasons for g in got])
            pol = (
                clf.meta.get(backend.file_key.removeprefix("onnx_"), {}).get("policy")
                or (clf.meta["policy"])
            )
            own = np.array([ROUTES[r] for r in route(p, pol["t_low"], pol["t_high"])])
            own[reasons != ""] = "maybe"
            out["graphs"][f"{name} {dtype}"] = {
                "routes_differing_from_eval": int((routes != ref["routes"]).sum()),
                "max_p_pit_difference_from_eval": float(np.abs(p - ref["p_pit"]).max()),
                "routes_differing_from_own_thresholds": int((routes != own).sum()),
                "t_low": pol["t_low"],
                "t_high": pol["t_high"],
                "maybe": int((routes == "maybe").sum()),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("bundle")
    parser.add_argument("--data", help="labelled crops (default: the run's own split)")
    parser.add_argument("--split", help="part of the data (default test)")
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args(argv)
    if not RunPaths(Path(args.run)).policy.is_file():
        raise SystemExit(f"{args.run}: not calibrated; run pitguard calibrate first")
    result = compare(Path(args.run), Path(args.bundle), args.data, args.split)
    print(f"{result['data']}  n={result['n']}")
    print(f"{'graph':<20} {'vs eval':>8} {'max |dp|':>10} {'vs own t':>9} {'maybe':>6}")
    for name, g in result["graphs"].items():
        print(
            f"{name:<20} {g['routes_differing_from_eval']:>8} "
            f"{g['max_p_pit_difference_from_eval']:>10.2e} "
            f"{g['routes_differing_from_own_thresholds']:>9} {g['maybe']:>6}"
        )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
