"""Read each run folder into a record of its stored numbers, notes and figures.

Every number is copied from the run's own files (its evaluations, policy and bench results);
nothing is re-measured (the paired comparison with a baseline is ``report.baseline``'s).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from pitguard.core.files import file_sha256, read_json
from pitguard.deploy.bench_result import BenchRecord, BenchResult
from pitguard.evaluate.results import EvalReport, plain_summary
from pitguard.models.runfolder import (
    BENCH_FILE,
    CALIB_OPERATING_CURVE,
    CALIB_RELIABILITY,
    CALIB_REPORT,
    EVAL_CONFUSION,
    EVAL_PREDICTIONS,
    EVAL_ROC_PR,
    RunPaths,
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
    metrics = _read_eval(run / rec["test"]["metrics_file"]) if rec["test"] else None
    source = metrics.evaluated_part()[0] if metrics else ""
    if source:
        roots.append(_data_root(Path(source)))
    own = _own_source(run, _config(run))
    if own is not None:
        roots.append(_data_root(own))
    return [*roots, run]


def _read_eval(path: Path) -> EvalReport | None:
    d = read_json(path)
    return EvalReport.from_dict(d) if d else None


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _pick_eval(run: Path, config: dict | None) -> tuple[Path | None, EvalReport | None, str]:
    """The newest evaluation of a run, preferring its own test part, then any test part.

    Returns (metrics file, its content, "own" | "other test" | "not test").
    """
    source = _own_source(run, config)
    split_name = RunPaths(run).split.name
    tiers: dict[str, list] = {"own": [], "other test": [], "not test": []}
    for path in RunPaths(run).eval_metrics():
        metrics = _read_eval(path)
        if not metrics:
            continue
        src, part = metrics.evaluated_part()
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
            _, _, path, metrics = max(group, key=lambda g: g[:2])
            return path, metrics, tier
    return None, None, ""


def pick_latency(bench: BenchResult | dict, run_name: str | None = None) -> dict | None:
    """CPU ms per crop: ONNX at batch 32, else eager at 32, else the largest batch of either.

    Of several targets, the one named like the run (bundles/<run>) is taken, else the first.
    """
    if isinstance(bench, dict):
        bench = BenchResult.from_dict(bench)
    results = [r for r in bench.results if r.on_cpu]
    if not results:
        return None
    # A bench run with --baseline also times the baseline model; it is not this run.
    own = [r for r in results if r.target != bench.baseline] or results
    named = [r for r in own if Path(str(r.target)).name == run_name]
    target = (named or own)[0].target
    rec = _preferred([r for r in own if r.target == target])
    choice = f"{rec.backend}, batch {rec.batch_size}"
    if (rec.backend, rec.batch_size) != ("onnx", PREFERRED_BATCH):
        choice += f" ({BENCH_FILE} has no onnx result at batch {PREFERRED_BATCH})"
    return {
        "bench_file": BENCH_FILE,
        "target": rec.target,
        "backend": rec.backend,
        "batch_size": rec.batch_size,
        "ms_per_crop": rec.ms_per_crop,
        "p50_ms": rec.p50_ms,
        "crops_per_s": rec.crops_per_s,
        "threads": bench.threads,
        "cpu": bench.hardware.get("cpu"),
        "choice": choice,
    }


def _preferred(records: list[BenchRecord]) -> BenchRecord:
    """ONNX at batch 32, else eager at 32, else the largest batch of ONNX, of eager, of any."""

    def batch(r: BenchRecord) -> int:
        return r.batch_size or 0

    order = [
        ("onnx", lambda r: r.batch_size == PREFERRED_BATCH),
        ("eager", lambda r: r.batch_size == PREFERRED_BATCH),
        ("onnx", lambda r: True),
        ("eager", lambda r: True),
    ]
    for backend, ok in order:
        cands = [r for r in records if r.backend == backend and ok(r)]
        if cands:
            return max(cands, key=batch)
    return max(records, key=batch)


# --------------------------------------------------------------------------- one run


def run_record(run: Path, name: str, pit_share: float | None = None) -> dict:
    """Everything the report shows of one run, as stored, with a note for each missing piece.

    ``pit_share`` is the line's share of pits for the plain-words summary (default: the share in
    the evaluated test part).
    """
    paths = RunPaths(run)
    model = read_json(paths.model) or {}
    config = read_json(paths.config) or model.get("config")
    rec = _identity(run, name, model, config)
    if paths.curves.is_file():
        rec["figures"]["training_curves"] = {
            "file": paths.curves.name,
            "data": "train and val parts",
        }
    else:
        rec["notes"].append(
            f"no training curves: {paths.curves.name} is written by pitguard train --out {_q(run)}"
        )
    policy = read_json(paths.policy)
    own_data = _own_source(run, config) is not None
    eval_hint = f"pitguard eval {_q(run)}" + ("" if own_data else " --data DIR")
    metrics_path, metrics, tier = _pick_eval(run, config)
    if metrics is None or metrics_path is None:
        rec["notes"].append(f"no test metrics: run {eval_hint}")
    else:
        _add_test(rec, run, metrics_path, metrics, pit_share)
        if tier != "own":
            rec["notes"].append(
                f"metrics are from {metrics.data}, not the run's own test part"
                + (f": run {eval_hint}" if own_data else "")
            )
        rec["notes"] += _stale_notes(run, metrics_path, metrics, policy)
    if policy is None:
        rec["notes"].append(
            f"not calibrated: run pitguard calibrate {_q(run)}"
            + ("" if own_data else " --data CALIB_DIR")
            + " --max-pit-miss 0.01 --confidence 0.95"
        )
    else:
        _add_calibration(rec, run, policy)
    _add_latency(rec, run)
    return rec


def _identity(run: Path, name: str, model: dict, config: dict | None) -> dict:
    """The record's frame: what the run is (recipe, architecture, size), nothing measured yet."""
    weights = RunPaths(run).weights
    return {
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
        "notes": [],
    }


def _add_test(
    rec: dict, run: Path, metrics_path: Path, metrics: EvalReport, pit_share: float | None
) -> None:
    """The test evaluation's numbers, its figures and, with a policy, the measured routes."""
    eval_dir = metrics_path.parent
    rel = eval_dir.relative_to(run)
    rec["test"] = {
        "metrics_file": str(metrics_path.relative_to(run)),
        "data": metrics.data,
        "part": metrics.evaluated_part()[1],
        "n": metrics.n,
        **{k: getattr(metrics, k) for k in TEST_KEYS},
    }
    if metrics.input_guard is not None:
        rec["test"]["input_guard"] = metrics.input_guard.to_dict()
    if metrics.policy is not None:
        rec["test"]["plain_summary"] = plain_summary(
            metrics.policy, pit_share=pit_share, part=rec["test"]["part"]
        )
        rec["policy_test"] = {"data": metrics.data, "n": metrics.n, **metrics.policy.to_dict()}
    measured = {"data": metrics.data, "n": metrics.n}
    for key, file in EVAL_FIGURES:
        if (eval_dir / file).is_file():
            rec["figures"][key] = {"file": str(rel / file), **measured}
    if (eval_dir / PREDICTIONS).is_file():
        rec["figures"]["most_wrong"] = {"file": str(rel / PREDICTIONS), **measured}


def _stale_notes(
    run: Path, metrics_path: Path, metrics: EvalReport, policy: dict | None
) -> list[str]:
    """Notes on test results measured on other weights or under another policy than now."""
    paths = RunPaths(run)
    weights, file = paths.weights, str(metrics_path.relative_to(run))
    again = f"run pitguard eval {_q(run)} again"
    evaluated = metrics_path.stat().st_mtime + STALE_SLACK_S
    notes = []
    measured_on = metrics.model_sha256
    if measured_on and weights.is_file() and measured_on != file_sha256(weights):
        notes.append(f"{file} measured other weights than {weights.name} holds now: {again}")
    elif not measured_on and weights.is_file() and weights.stat().st_mtime > evaluated:
        notes.append(f"{weights.name} is newer than {file}, so the metrics may be stale: {again}")
    if metrics.policy is None:
        if policy:
            notes.append(
                f"calibrated after the last test evaluation: run pitguard eval {_q(run)} "
                "to measure pit-miss and maybe rates on test"
            )
        return notes
    used = metrics.policy.policy_used
    if policy and used is not None and used != policy.get("policy"):
        notes.append(
            f"the measured maybe and pit-miss rates belong to an earlier policy than "
            f"{paths.policy.name} holds now: {again}"
        )
    elif policy and used is None and paths.policy.stat().st_mtime > evaluated:
        notes.append(
            f"{paths.policy.name} is newer than the test evaluation, so the measured "
            f"rates may belong to an earlier policy: {again}"
        )
    return notes


def _add_calibration(rec: dict, run: Path, policy: dict) -> None:
    """What the policy was calibrated on and guarantees, and its figures."""
    paths = RunPaths(run)
    calib_data = policy.get("calibration_data") or {}
    rec["calibration"] = {
        "policy_file": paths.policy.name,
        "guarantee": policy.get("guarantee"),
        "pit_miss_bound_on_calib": (policy.get("thresholds") or {}).get("pit_miss_bound"),
        "data": calib_data.get("data"),
        "n": calib_data.get("n"),
        "ece_before": policy.get("ece_before"),
        "ece_after": policy.get("ece_after"),
        "mode": policy.get("mode"),
        # the certified review rate at each pit-miss bound and false-reject cap, on these scores
        "operating_table": (read_json(paths.calibration / CALIB_REPORT) or {}).get(
            "operating_table"
        ),
        "second_look": _second_look_facts(policy.get("second_look")),
    }
    calib = {"data": calib_data.get("data"), "n": calib_data.get("n")}
    for key, file in CALIBRATION_FIGURES:
        figure = paths.calibration / file
        if figure.is_file():
            rec["figures"][key] = {"file": str(figure.relative_to(run)), **calib}


def _second_look_facts(look: dict | None) -> dict | None:
    """A cascade's second stage as the report states it (None without one)."""
    if not look:
        return None
    th = look.get("thresholds") or {}
    return {
        "views": look.get("views"),
        "model": (look.get("model") or {}).get("model_name"),  # None: the run's own network
        "share": look.get("share"),
        "maybe_rate_on_calib": th.get("calib_maybe_rate"),
        "pit_miss_bound": th.get("pit_miss_bound"),
    }


def _add_latency(rec: dict, run: Path) -> None:
    """CPU latency from the run's bench.json, or a note on how to measure it."""
    paths = RunPaths(run)
    bench = read_json(paths.bench)
    bench_hint = (
        f"pitguard export {_q(run)} --out {_q(f'bundles/{run.name}')} --onnx, then "
        f"pitguard bench {_q(f'bundles/{run.name}')} --json {_q(paths.bench)}"
    )
    if bench is None:
        rec["notes"].append(f"no CPU latency: run {bench_hint}")
        return
    rec["latency_cpu"] = pick_latency(BenchResult.from_dict(bench), run.name)
    if rec["latency_cpu"] is None:
        rec["notes"].append(f"{paths.bench.name} holds no CPU results: run {bench_hint}")


def _q(path) -> str:
    """A path as a shell reads it back (spaces, quotes and $ in run names included)."""
    return shlex.quote(str(path))
