"""Find run folders and read each one into a record of its stored numbers, notes and figures.

Every number is copied from the run's own files (its evaluations, policy and bench results);
nothing is re-measured (the paired comparison with a baseline is ``report.baseline``'s).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pitguard.core.errors import PitguardError
from pitguard.core.files import file_sha256, read_json
from pitguard.models.runfolder import (
    BENCH_FILE,
    CALIB_OPERATING_CURVE,
    CALIB_RELIABILITY,
    EVAL_CONFUSION,
    EVAL_PREDICTIONS,
    EVAL_ROC_PR,
    INNER_FOLDERS,
    RunPaths,
    evaluated_part,
    is_run,
)

PREFERRED_BATCH = 32
# Timestamps this close to an evaluation count as the same step (coarse file-system clocks).
STALE_SLACK_S = 2.0
EVAL_FIGURES = (("confusion_matrix", EVAL_CONFUSION), ("roc_pr", EVAL_ROC_PR))
PREDICTIONS = EVAL_PREDICTIONS
CALIBRATION_FIGURES = (
    ("reliability", CALIB_RELIABILITY),
    ("operating_curve", CALIB_OPERATING_CURVE),
)
TEST_KEYS = (
    "accuracy",
    "accuracy_ci",
    "macro_f1",
    "macro_f1_ci",
    "pit_recall",
    "pit_recall_ci",
    "roc_auc",
    "roc_auc_ci",
    "input_guard",
    "plain_summary",
)


# --------------------------------------------------------------------------- discovery


def find_run_dirs(path: str | Path) -> list[Path]:
    """PATH itself when it is a run folder, else the run folders one or two levels below it."""
    path = Path(path)
    model = RunPaths(path).model.name
    if not path.exists():
        raise PitguardError(
            f"{path}: no such folder; give a run folder written by pitguard train "
            f"(one with {model}) or a folder holding run folders"
        )
    if is_run(path):
        return [path]
    if not path.is_dir():
        raise PitguardError(
            f"{path}: is a file; give a run folder (one with {model}) or a folder holding runs"
        )
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if child.name.startswith(".") or child.name in INNER_FOLDERS | {"__pycache__"}:
            continue
        if is_run(child):
            found.append(child)
            continue
        found += [
            g
            for g in sorted(p for p in child.iterdir() if p.is_dir())
            if not g.name.startswith(".") and is_run(g)
        ]
    if not found:
        raise PitguardError(
            f"{path}: not a run folder and holds none (no {model} here or one or two levels "
            "below); give run folders written by pitguard train, e.g. pitguard report runs/"
        )
    return found


def _count_parameters(weights: Path) -> int | None:
    """Sum of the tensor sizes in the safetensors file, read from its header without loading data."""
    if not weights.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118  (safe_open is not a mapping)
            total += math.prod(fh.get_slice(key).get_shape())
    return int(total)


def _config(run: Path) -> dict | None:
    paths = RunPaths(run)
    return read_json(paths.config) or (read_json(paths.model) or {}).get("config")


def _own_source(run: Path, config: dict | None) -> Path | None:
    """The data a run was split from: its own split manifest, else the path in its config."""
    split = RunPaths(run).split
    if split.is_file():
        return split
    path = ((config or {}).get("data") or {}).get("path")
    return Path(path) if path else None


def _data_root(source: Path) -> Path:
    return source.parent if source.suffix.lower() == ".csv" else source


def crop_roots(rec: dict) -> list[Path]:
    """Folders the prediction paths of REC's test evaluation may be relative to: the evaluated
    data's root (the folder holding the split manifest for the run's own test part), then the
    run's split root, then the run."""
    run = Path(rec["path"])
    roots = []
    metrics = read_json(run / rec["test"]["metrics_file"]) if rec["test"] else None
    source = evaluated_part(metrics)[0] if metrics else ""
    if source:
        roots.append(_data_root(Path(source)))
    own = _own_source(run, _config(run))
    if own is not None:
        roots.append(_data_root(own))
    return [*roots, run]


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _pick_eval(run: Path, config: dict | None) -> tuple[Path | None, dict | None, str]:
    """The newest evaluation of a run, preferring its own test part, then any test part.

    Returns (metrics file, its content, "own" | "other test" | "not test").
    """
    source = _own_source(run, config)
    split_name = RunPaths(run).split.name
    tiers: dict[str, list] = {"own": [], "other test": [], "not test": []}
    for path in RunPaths(run).eval_metrics():
        metrics = read_json(path)
        if not metrics:
            continue
        src, part = evaluated_part(metrics)
        src_path = Path(src)
        is_own = (
            bool(src)
            and source is not None
            and (
                same_file(src_path, source)
                or src == str(source)
                # A run folder moved after its evaluation still names its own split manifest.
                or (src_path.name == split_name and src_path.parent.name == run.name)
            )
        )
        tier = "not test" if part != "test" else ("own" if is_own else "other test")
        tiers[tier].append((path.stat().st_mtime, str(path), path, metrics))
    for tier, group in tiers.items():
        if group:
            _, _, path, metrics = max(group)
            return path, metrics, tier
    return None, None, ""


def pick_latency(bench: dict, run_name: str | None = None) -> dict | None:
    """CPU ms per crop: ONNX at batch 32, else eager at 32, else the largest batch of either.

    Of several targets, the one named like the run (bundles/<run>) is taken, else the first.
    """
    results = [r for r in bench.get("results", []) if r.get("device", "cpu") == "cpu"]
    if not results:
        return None
    # A bench run with --baseline also times the baseline model; it is not this run.
    own = [r for r in results if r.get("target") != bench.get("baseline")] or results
    named = [r for r in own if Path(str(r.get("target"))).name == run_name]
    target = (named or own)[0].get("target")
    own = [r for r in own if r.get("target") == target]
    order = [
        ("onnx", lambda r: r["batch_size"] == PREFERRED_BATCH),
        ("eager", lambda r: r["batch_size"] == PREFERRED_BATCH),
        ("onnx", lambda r: True),
        ("eager", lambda r: True),
    ]
    for backend, ok in order:
        cands = [r for r in own if r.get("backend") == backend and ok(r)]
        if cands:
            rec = max(cands, key=lambda r: r["batch_size"])
            break
    else:
        rec = max(own, key=lambda r: r["batch_size"])
    hw = bench.get("hardware") or {}
    choice = f"{rec['backend']}, batch {rec['batch_size']}"
    if (rec["backend"], rec["batch_size"]) != ("onnx", PREFERRED_BATCH):
        choice += f" ({BENCH_FILE} has no onnx result at batch {PREFERRED_BATCH})"
    return {
        "bench_file": BENCH_FILE,
        "target": rec.get("target"),
        "backend": rec["backend"],
        "batch_size": rec["batch_size"],
        "ms_per_crop": rec["ms_per_crop"],
        "p50_ms": rec.get("p50_ms"),
        "crops_per_s": rec.get("crops_per_s"),
        "threads": bench.get("threads"),
        "cpu": hw.get("cpu"),
        "choice": choice,
    }


# --------------------------------------------------------------------------- one run


def run_record(run: Path, name: str) -> dict:
    """Everything the report shows of one run, as stored, with a note for each missing piece."""
    paths = RunPaths(run)
    model = read_json(paths.model) or {}
    config = read_json(paths.config) or model.get("config")
    notes: list[str] = []
    weights = paths.weights
    rec: dict = {
        "run": name,
        "path": str(run),
        "recipe": (config or {}).get("recipe"),
        "architecture": model.get("model_name") or ((config or {}).get("model") or {}).get("name"),
        "classes": model.get("classes"),
        "parameters": _count_parameters(weights),
        "parameters_note": f"sum of tensor sizes in {weights.name}",
        "size_bytes": weights.stat().st_size if weights.is_file() else None,
        "test": None,
        "calibration": None,
        "policy_test": None,
        "latency_cpu": None,
        "figures": {},
        "vs_baseline": None,
        "notes": notes,
    }
    figures = rec["figures"]
    if paths.curves.is_file():
        figures["training_curves"] = {"file": paths.curves.name, "data": "train and val parts"}
    else:
        notes.append(
            f"no training curves: {paths.curves.name} is written by pitguard train --out {run}"
        )

    metrics_path, metrics, tier = _pick_eval(run, config)
    policy = read_json(paths.policy)
    own_data = _own_source(run, config) is not None
    eval_hint = f"pitguard eval {run}" + ("" if own_data else " --data DIR")
    if metrics is None or metrics_path is None:
        notes.append(f"no test metrics: run {eval_hint}")
    else:
        eval_dir = metrics_path.parent
        rel = eval_dir.relative_to(run)
        rec["test"] = {
            "metrics_file": str(metrics_path.relative_to(run)),
            "data": metrics.get("data"),
            "part": evaluated_part(metrics)[1],
            "n": metrics.get("n"),
            **{k: metrics.get(k) for k in TEST_KEYS},
        }
        measured = {"data": metrics.get("data"), "n": metrics.get("n")}
        for key, file in EVAL_FIGURES:
            if (eval_dir / file).is_file():
                figures[key] = {"file": str(rel / file), **measured}
        if (eval_dir / PREDICTIONS).is_file():
            figures["most_wrong"] = {"file": str(rel / PREDICTIONS), **measured}
        if tier != "own":
            notes.append(
                f"metrics are from {metrics.get('data')}, not the run's own test part"
                + (f": run {eval_hint}" if own_data else "")
            )
        evaluated = metrics_path.stat().st_mtime + STALE_SLACK_S
        measured_on = metrics.get("model_sha256")
        if measured_on and weights.is_file() and measured_on != file_sha256(weights):
            notes.append(
                f"{rec['test']['metrics_file']} measured other weights than {weights.name} "
                f"holds now: run pitguard eval {run} again"
            )
        elif not measured_on and weights.is_file() and weights.stat().st_mtime > evaluated:
            notes.append(
                f"{weights.name} is newer than {rec['test']['metrics_file']}, so the metrics "
                f"may be stale: run pitguard eval {run} again"
            )
        if metrics.get("policy"):
            rec["policy_test"] = {
                "data": metrics.get("data"),
                "n": metrics.get("n"),
                **metrics["policy"],
            }
            used = metrics["policy"].get("policy_used")
            if policy and used is not None and used != policy.get("policy"):
                notes.append(
                    f"the measured maybe and pit-miss rates belong to an earlier policy than "
                    f"{paths.policy.name} holds now: run pitguard eval {run} again"
                )
            elif policy and used is None and paths.policy.stat().st_mtime > evaluated:
                notes.append(
                    f"{paths.policy.name} is newer than the test evaluation, so the measured "
                    f"rates may belong to an earlier policy: run pitguard eval {run} again"
                )
        elif policy:
            notes.append(
                f"calibrated after the last test evaluation: run pitguard eval {run} "
                "to measure pit-miss and maybe rates on test"
            )

    if policy is None:
        notes.append(
            f"not calibrated: run pitguard calibrate {run}"
            + ("" if own_data else " --data CALIB_DIR")
            + " --max-pit-miss 0.01 --confidence 0.95"
        )
    else:
        calib_data = policy.get("calibration_data") or {}
        rec["calibration"] = {
            "policy_file": paths.policy.name,
            "guarantee": policy.get("guarantee"),
            "pit_miss_bound_on_calib": (policy.get("thresholds") or {}).get("pit_miss_bound"),
            "data": calib_data.get("data"),
            "n": calib_data.get("n"),
            "ece_before": policy.get("ece_before"),
            "ece_after": policy.get("ece_after"),
        }
        calib = {"data": calib_data.get("data"), "n": calib_data.get("n")}
        for key, file in CALIBRATION_FIGURES:
            figure = paths.calibration / file
            if figure.is_file():
                figures[key] = {"file": str(figure.relative_to(run)), **calib}

    bench = read_json(paths.bench)
    bench_hint = (
        f"pitguard export {run} --out bundles/{run.name} --onnx, then "
        f"pitguard bench bundles/{run.name} --json {paths.bench}"
    )
    if bench is None:
        notes.append(f"no CPU latency: run {bench_hint}")
    else:
        rec["latency_cpu"] = pick_latency(bench, run.name)
        if rec["latency_cpu"] is None:
            notes.append(f"{paths.bench.name} holds no CPU results: run {bench_hint}")
    return rec


# --------------------------------------------------------------------------- many runs


def run_names(runs: list[Path]) -> list[str]:
    """Folder names, or paths below the common parent where two runs share a name."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    resolved = [r.resolve() for r in runs]
    common = Path(os.path.commonpath([str(r) for r in resolved]))
    return [str(r.relative_to(common)) for r in resolved]


def run_dirs(paths) -> list[Path]:
    """The run folders under each of PATHS (see find_run_dirs), each once, in order."""
    if isinstance(paths, str | Path):
        paths = [paths]
    runs: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for run in find_run_dirs(p):
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    if not runs:
        raise PitguardError("no runs given; name run folders or folders holding runs")
    return runs
