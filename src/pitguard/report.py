"""Experiment reports: one table and one self-contained HTML page over many run folders.

Every number is copied from the run's own files (``eval/*/metrics.json``, ``policy.json``,
``bench.json``); nothing is re-measured except the paired comparison with the baseline, which
``pitguard.compare.compare_runs`` computes on the shared test part.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import time
from pathlib import Path

from pitguard.errors import PitguardError

# Folders inside a run that never hold another run: skipped when scanning for runs.
_NOT_RUNS = {"checkpoints", "eval", "calibration", "thresholds", "__pycache__"}
WRONG_PER_CLASS = 8  # crops of each class in the "most wrong" grid
PREFERRED_BATCH = 32
# Timestamps this close to an evaluation count as the same step (coarse file-system clocks).
STALE_SLACK_S = 2.0


# --------------------------------------------------------------------------- discovery


def _write_text(path: Path, text: str) -> None:
    # Written beside the target and renamed, so a reader never sees half a report.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _is_run(path: Path) -> bool:
    return (path / "model.json").is_file()


def find_run_dirs(path: str | Path) -> list[Path]:
    """PATH itself when it is a run folder, else the run folders one or two levels below it."""
    path = Path(path)
    if not path.exists():
        raise PitguardError(
            f"{path}: no such folder; give a run folder written by pitguard train "
            "(one with model.json) or a folder holding run folders"
        )
    if _is_run(path):
        return [path]
    if not path.is_dir():
        raise PitguardError(
            f"{path}: is a file; give a run folder (one with model.json) or a folder holding runs"
        )
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if child.name.startswith(".") or child.name in _NOT_RUNS:
            continue
        if _is_run(child):
            found.append(child)
            continue
        found += [
            g
            for g in sorted(p for p in child.iterdir() if p.is_dir())
            if not g.name.startswith(".") and _is_run(g)
        ]
    if not found:
        raise PitguardError(
            f"{path}: not a run folder and holds none (no model.json here or one or two levels "
            "below); give run folders written by pitguard train, e.g. pitguard report runs/"
        )
    return found


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PitguardError(
            f"{path}: unreadable JSON ({exc}); rerun the step that wrote it"
        ) from exc


def _count_parameters(weights: Path) -> int | None:
    """Sum of the tensor sizes in model.safetensors, read from its header without loading data."""
    if not weights.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118  (safe_open is not a mapping)
            total += math.prod(fh.get_slice(key).get_shape())
    return int(total)


def _split_desc(description: str) -> tuple[str, str]:
    """``"path/split.csv [test]"`` -> ("path/split.csv", "test")."""
    m = re.fullmatch(r"(.*) \[([^\]]*)\]", description or "")
    return (m.group(1), m.group(2)) if m else (description or "", "")


def _own_source(run: Path, config: dict | None) -> Path | None:
    """The data a run was split from: its split.csv, else the path in its config."""
    if (run / "split.csv").is_file():
        return run / "split.csv"
    path = ((config or {}).get("data") or {}).get("path")
    return Path(path) if path else None


def _data_root(source: Path) -> Path:
    return source.parent if source.suffix.lower() == ".csv" else source


def _crop_roots(run: Path, config: dict | None, eval_data: str) -> list[Path]:
    """Folders prediction paths may be relative to: the evaluated data's root (the folder
    holding split.csv for the run's own test part), then the run's split root, then the run."""
    roots = []
    src = _split_desc(eval_data)[0]
    if src:
        roots.append(_data_root(Path(src)))
    own = _own_source(run, config)
    if own is not None:
        roots.append(_data_root(own))
    return [*roots, run]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _pick_eval(run: Path, config: dict | None) -> tuple[Path | None, dict | None, str]:
    """The newest evaluation of a run, preferring its own test part, then any test part.

    Returns (metrics.json path, its content, "own" | "other test" | "not test").
    """
    source = _own_source(run, config)
    tiers: dict[str, list] = {"own": [], "other test": [], "not test": []}
    for path in (run / "eval").glob("*/metrics.json"):
        metrics = _read_json(path)
        if not metrics:
            continue
        src, part = _split_desc(metrics.get("data", ""))
        src_path = Path(src)
        is_own = source is not None and (
            _same_file(src_path, source)
            or src == str(source)
            # A run folder moved after its evaluation still names its own split.csv.
            or (src_path.name == "split.csv" and src_path.parent.name == run.name)
        )
        tier = "not test" if part != "test" else ("own" if is_own else "other test")
        tiers[tier].append((path.stat().st_mtime, str(path), path, metrics))
    for tier, group in tiers.items():
        if group:
            _, _, path, metrics = max(group)
            return path, metrics, tier
    return None, None, ""


def _pick_latency(bench: dict, run_name: str | None = None) -> dict | None:
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
        choice += f" (bench.json has no onnx result at batch {PREFERRED_BATCH})"
    return {
        "bench_file": "bench.json",
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


def _run_record(run: Path, name: str) -> dict:
    model = _read_json(run / "model.json") or {}
    config = _read_json(run / "config.json") or model.get("config")
    notes: list[str] = []
    weights = run / "model.safetensors"
    rec: dict = {
        "run": name,
        "path": str(run),
        "recipe": (config or {}).get("recipe"),
        "architecture": model.get("model_name") or ((config or {}).get("model") or {}).get("name"),
        "classes": model.get("classes"),
        "parameters": _count_parameters(weights),
        "parameters_note": "sum of tensor sizes in model.safetensors",
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
    if (run / "curves.png").is_file():
        figures["training_curves"] = {"file": "curves.png", "data": "train and val parts"}
    else:
        notes.append(f"no training curves: curves.png is written by pitguard train --out {run}")

    metrics_path, metrics, tier = _pick_eval(run, config)
    policy = _read_json(run / "policy.json")
    own_data = _own_source(run, config) is not None
    eval_hint = f"pitguard eval {run}" + ("" if own_data else " --data DIR")
    if metrics is None or metrics_path is None:
        notes.append(f"no test metrics: run {eval_hint}")
    else:
        eval_dir = metrics_path.parent
        rel = eval_dir.relative_to(run)
        rec["test"] = {
            "metrics_file": str(rel / "metrics.json"),
            "data": metrics.get("data"),
            "part": _split_desc(metrics.get("data", ""))[1],
            "n": metrics.get("n"),
            **{
                k: metrics.get(k)
                for k in (
                    "accuracy",
                    "accuracy_ci",
                    "macro_f1",
                    "macro_f1_ci",
                    "pit_recall",
                    "pit_recall_ci",
                    "roc_auc",
                    "roc_auc_ci",
                )
            },
        }
        measured = {"data": metrics.get("data"), "n": metrics.get("n")}
        for key, file in (
            ("confusion_matrix", "confusion_matrix.png"),
            ("roc_pr", "roc_pr.png"),
        ):
            if (eval_dir / file).is_file():
                figures[key] = {"file": str(rel / file), **measured}
        if (eval_dir / "predictions.csv").is_file():
            figures["most_wrong"] = {"file": str(rel / "predictions.csv"), **measured}
        if tier != "own":
            notes.append(
                f"metrics are from {metrics.get('data')}, not the run's own test part"
                + (f": run {eval_hint}" if own_data else "")
            )
        evaluated = metrics_path.stat().st_mtime + STALE_SLACK_S
        if weights.is_file() and weights.stat().st_mtime > evaluated:
            notes.append(
                f"model.safetensors is newer than {rec['test']['metrics_file']}, so the metrics "
                f"may be stale: run pitguard eval {run} again"
            )
        if metrics.get("policy"):
            rec["policy_test"] = {
                "data": metrics.get("data"),
                "n": metrics.get("n"),
                **metrics["policy"],
            }
            if policy and (run / "policy.json").stat().st_mtime > evaluated:
                notes.append(
                    "policy.json is newer than the test evaluation, so the measured rates may "
                    f"belong to an earlier policy: run pitguard eval {run} again"
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
        rec["calibration"] = {
            "policy_file": "policy.json",
            "guarantee": policy.get("guarantee"),
            "pit_miss_bound_on_calib": (policy.get("thresholds") or {}).get("pit_miss_bound"),
            "data": (policy.get("calibration_data") or {}).get("data"),
            "n": (policy.get("calibration_data") or {}).get("n"),
            "ece_before": policy.get("ece_before"),
            "ece_after": policy.get("ece_after"),
        }
        calib = {"data": rec["calibration"]["data"], "n": rec["calibration"]["n"]}
        for key, file in (
            ("reliability", "calibration/reliability.png"),
            ("operating_curve", "calibration/operating_curve.png"),
        ):
            if (run / file).is_file():
                figures[key] = {"file": file, **calib}

    bench = _read_json(run / "bench.json")
    bench_hint = (
        f"pitguard export {run} --out bundles/{run.name} --onnx, then "
        f"pitguard bench bundles/{run.name} --json {run / 'bench.json'}"
    )
    if bench is None:
        notes.append(f"no CPU latency: run {bench_hint}")
    else:
        rec["latency_cpu"] = _pick_latency(bench, run.name)
        if rec["latency_cpu"] is None:
            notes.append(f"bench.json holds no CPU results: run {bench_hint}")
    return rec


# --------------------------------------------------------------------------- runs and baseline


def _names(runs: list[Path]) -> list[str]:
    """Folder names, or paths below the common parent where two runs share a name."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    resolved = [r.resolve() for r in runs]
    common = Path(os.path.commonpath([str(r) for r in resolved]))
    return [str(r.relative_to(common)) for r in resolved]


def _collect_dirs(paths) -> list[Path]:
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


def collect_runs(paths) -> list[dict]:
    """One record per run folder found under PATHS (see find_run_dirs), numbers as stored."""
    runs = _collect_dirs(paths)
    return [_run_record(run, name) for run, name in zip(runs, _names(runs), strict=True)]


def _compare_with_baseline(base: dict, rec: dict) -> dict:
    from pitguard.compare import compare_runs, same_split

    out: dict = {"baseline": base["run"]}
    if rec is base:
        return {**out, "verdict": "baseline"}
    if not same_split([base["path"], rec["path"]]):
        return {**out, "verdict": "not paired (different splits)", "paired": False}
    try:
        result = compare_runs([base["path"], rec["path"]])
    except (PitguardError, OSError) as exc:
        return {**out, "verdict": f"not compared: {exc}", "paired": False}
    row = result["comparisons"][0]
    return {
        **out,
        "verdict": row["verdict"],
        "paired": True,
        "data": result["data"],
        "n": result["n"],
        "accuracy_baseline": row["accuracy_baseline"],
        "accuracy_run": row["accuracy_run"],
        "accuracy_diff": row["accuracy_diff"],
        "mcnemar_p": row["mcnemar"]["p_value"],
        "mcnemar": row["mcnemar"],
        "maybe_rate_diff": row.get("maybe_rate_diff"),
    }


def _resolve_baseline(baseline, runs: list[Path], names: list[str]) -> int | list[Path]:
    """Index of the baseline among RUNS, or RUNS with the baseline run folder put first."""
    if baseline is None:
        return 0
    text = str(baseline)
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        if text == name or _same_file(Path(text), run):
            return i
    if _is_run(Path(text)):
        return [Path(text), *runs]
    raise PitguardError(
        f"--baseline {text}: not a run folder and not one of the runs in the report "
        f"({', '.join(names)}); give a run folder or one of those names"
    )


# --------------------------------------------------------------------------- formatting


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _ci(pair) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" [{100 * pair[0]:.2f}, {100 * pair[1]:.2f}]"


def _human(n, units, step: float) -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for unit in units:
        if abs(value) < step or unit == units[-1]:
            return f"{value:.0f}{unit}" if unit == units[0] else f"{value:.1f}{unit}"
        value /= step
    return str(n)


def _verdict_cell(vs: dict | None) -> str:
    if not vs:
        return "n/a"
    if not vs.get("paired"):
        return vs["verdict"]
    d = vs["accuracy_diff"]
    lo, hi = d["ci"]
    ci = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None and hi is not None else ""
    return f"{vs['verdict']}: acc {100 * d['diff']:+.2f} pts{ci}, McNemar p={vs['mcnemar_p']:.3f}"


COLUMNS = [
    "run",
    "recipe",
    "arch",
    "params",
    "size",
    "accuracy [95% CI]",
    "macro F1",
    "pit recall [CI]",
    "pit-miss bound",
    "pit-miss measured [CI]",
    "maybe rate [CI]",
    "ms/crop CPU",
    "data (part, N)",
    "vs baseline",
]


def table_cells(rec: dict) -> list[str]:
    """The row of one run as display strings, in COLUMNS order."""
    t, cal, pol, lat = rec["test"], rec["calibration"], rec["policy_test"], rec["latency_cpu"]
    guarantee = (cal or {}).get("guarantee") or {}
    bound = (
        f"<= {100 * guarantee['max_pit_miss']:g}% at {100 * guarantee['confidence']:g}% conf."
        if guarantee.get("max_pit_miss") is not None
        else "n/a"
    )
    return [
        rec["run"],
        rec["recipe"] or "n/a",
        rec["architecture"] or "n/a",
        _human(rec["parameters"], ["", "k", "M", "G"], 1000),
        _human(rec["size_bytes"], [" B", " KiB", " MiB", " GiB"], 1024),
        _pct(t["accuracy"]) + _ci(t["accuracy_ci"]) if t else "n/a",
        _pct(t["macro_f1"]) if t else "n/a",
        _pct(t["pit_recall"]) + _ci(t["pit_recall_ci"]) if t else "n/a",
        bound,
        _pct(pol["pit_miss_rate"]) + _ci(pol["pit_miss_ci"]) if pol else "n/a",
        _pct(pol["maybe_rate"]) + _ci(pol["maybe_ci"]) if pol else "n/a",
        f"{lat['ms_per_crop']:.3f} ({lat['backend']}, b{lat['batch_size']})" if lat else "n/a",
        f"{t['part']}, {t['n']}" if t else "n/a",
        _verdict_cell(rec["vs_baseline"]),
    ]


def format_markdown(records: list[dict]) -> str:
    """The experiments table in Markdown, one row per run, then the notes."""

    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(COLUMNS), "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += [row(table_cells(rec)) for rec in records]
    notes = [f"- {rec['run']}: {note}" for rec in records for note in rec["notes"]]
    if notes:
        lines += ["", "n/a and notes:", *notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    fig.clear()
    return buf.getvalue()


def wrong_crops(
    predictions: Path, roots: list[Path], per_class: int = WRONG_PER_CLASS
) -> list[dict]:
    """Pits with the lowest p_pit (false clean first), then clean crops with the highest.

    Each crop's file is its path joined to the first of ROOTS under which the first crop exists.
    """
    with predictions.open(newline="") as fh:
        rows: list[dict] = [{**r, "p_pit": float(r["p_pit"])} for r in csv.DictReader(fh)]
    root = next((r for r in roots if rows and (r / rows[0]["path"]).is_file()), roots[0])
    for r in rows:
        r["file"] = root / r["path"]
    pits = sorted((r for r in rows if r["label"] == "pit"), key=lambda r: r["p_pit"])
    clean = sorted((r for r in rows if r["label"] == "clean"), key=lambda r: -r["p_pit"])
    return pits[:per_class] + clean[:per_class]


def crops_grid_png(crops: list[dict], columns: int = 8) -> bytes:
    """A labelled grid of crops (title red where the argmax prediction is wrong)."""
    import numpy as np
    from PIL import Image

    rows = max(1, math.ceil(len(crops) / columns))
    fig = _new_figure(1.6 * columns, 1.9 * rows)
    for i, crop in enumerate(crops):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        try:
            with Image.open(crop["file"]) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        except OSError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=7)
        wrong = crop.get("predicted") != crop["label"]
        route = f" {crop['route']}" if crop.get("route") else ""
        ax.set_title(
            f"{crop['label']}{route}\np_pit {crop['p_pit']:.3f}",
            fontsize=7,
            color="#b00020" if wrong else "black",
        )
    return _png(fig)


def latency_accuracy_png(records: list[dict]) -> bytes | None:
    """Accuracy (with its 95% interval) against CPU ms per crop, one labelled point per run."""
    points = [r for r in records if r["latency_cpu"] and r["test"] and r["test"]["accuracy"]]
    if not points:
        return None
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for r in points:
        x = r["latency_cpu"]["ms_per_crop"]
        y = 100 * r["test"]["accuracy"]
        lo, hi = r["test"]["accuracy_ci"] or (None, None)
        yerr = [[y - 100 * lo], [100 * hi - y]] if lo is not None and hi is not None else None
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(r["run"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("CPU ms per crop (bench.json)")
    ax.set_ylabel("test accuracy, % (95% CI)")
    ax.set_title("latency against accuracy")
    ax.grid(alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#1d1d1f;
background:#fff;max-width:1400px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f2f2f2}.scroll{overflow-x:auto}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:640px;border:1px solid #eee}figure.wide img{max-width:100%}figcaption{font-size:.8rem;color:#555;
max-width:640px}.na{color:#8a6d00}.notes li{font-size:.85rem}code{background:#f5f5f5;
padding:0 .2rem}
"""

_FIGURES = [
    ("training_curves", "training curves"),
    ("confusion_matrix", "confusion matrix"),
    ("roc_pr", "ROC and PR curves"),
    ("reliability", "reliability diagram"),
    ("operating_curve", "policy operating curve"),
    ("most_wrong", "most wrong crops"),
]

_MISSING_FIGURE = {
    "training_curves": "written by pitguard train",
    "confusion_matrix": "run pitguard eval {run}",
    "roc_pr": "run pitguard eval {run}",
    "reliability": "run pitguard calibrate {run}",
    "operating_curve": "run pitguard calibrate {run}",
    "most_wrong": "run pitguard eval {run}",
}


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def section_id(name: str) -> str:
    """The HTML id of a run's section: run-<name> with anything but [A-Za-z0-9_-] as '-'."""
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def _figure_html(title: str, png: bytes, caption: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img alt="{_esc(title)}" src="{_data_uri(png)}">'
        f"<figcaption>{_esc(title)}: {_esc(caption)}</figcaption></figure>"
    )


def _run_section(rec: dict) -> str:
    run = Path(rec["path"])
    parts = [f'<section id="{section_id(rec["run"])}">', f"<h2>{_esc(rec['run'])}</h2>"]
    facts = [
        ("folder", rec["path"]),
        ("recipe", rec["recipe"] or "n/a"),
        ("architecture", rec["architecture"] or "n/a"),
        ("test data", f"{rec['test']['data']} (n={rec['test']['n']})" if rec["test"] else "n/a"),
        (
            "calibrated on",
            f"{rec['calibration']['data']} (n={rec['calibration']['n']})"
            if rec["calibration"]
            else "n/a",
        ),
        (
            "CPU latency",
            f"{rec['latency_cpu']['ms_per_crop']:.3f} ms/crop ({rec['latency_cpu']['choice']}, "
            f"{rec['latency_cpu']['cpu']}, {rec['latency_cpu']['threads']} thread(s))"
            if rec["latency_cpu"]
            else "n/a",
        ),
        ("vs baseline", _verdict_cell(rec["vs_baseline"])),
    ]
    parts.append(
        "<table>"
        + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
        + "</table>"
    )
    figs = rec["figures"]
    missing = []
    for key, title in _FIGURES:
        info = figs.get(key)
        if info is None:
            missing.append(f"{title}: n/a ({_MISSING_FIGURE[key].format(run=run)})")
            continue
        measured = f"{info['data']}" + (f", n={info['n']}" if info.get("n") is not None else "")
        if key == "most_wrong":
            roots = _crop_roots(run, _config_of(run), info["data"] or "")
            crops = wrong_crops(run / info["file"], roots)
            if not crops:
                missing.append(f"{title}: n/a (no pit or clean crops in {info['file']})")
                continue
            png = crops_grid_png(crops)
            caption = (
                f"pits with the lowest p_pit (false clean first), then clean crops with the "
                f"highest; red titles are argmax errors; {measured}"
            )
        else:
            png = (run / info["file"]).read_bytes()
            caption = measured
        parts.append(_figure_html(title, png, caption, wide=key == "most_wrong"))
    if missing:
        parts.append(
            '<ul class="notes na">' + "".join(f"<li>{_esc(m)}</li>" for m in missing) + "</ul>"
        )
    if rec["notes"]:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in rec["notes"]) + "</ul>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _config_of(run: Path) -> dict | None:
    return _read_json(run / "config.json") or (_read_json(run / "model.json") or {}).get("config")


def render_html(records: list[dict], baseline: str, generated: str) -> str:
    """One self-contained page: styles inline, every image a data URI, no scripts."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="na">{_esc(c)}</td>' if c == "n/a" else f"<td>{_esc(c)}</td>"
            for c in table_cells(rec)
        )
        + "</tr>"
        for rec in records
    )
    notes = [f"{rec['run']}: {n}" for rec in records for n in rec["notes"]]
    table = (
        '<section id="table"><h2>Runs</h2>'
        f"<p>Baseline: {_esc(baseline)}. Intervals are 95%; every number is read from the run's "
        "own files. The pit-miss bound is the calibrated guarantee; measured rates are on the "
        "test part named in the data column.</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        "</div>"
        + (
            '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
            if notes
            else ""
        )
        + "</section>"
    )
    chart = latency_accuracy_png(records)
    without = [r["run"] for r in records if not r["latency_cpu"]]
    no_acc = [r["run"] for r in records if r["latency_cpu"] and not r["test"]]
    scatter = ['<section id="latency-accuracy"><h2>Latency against accuracy</h2>']
    if chart:
        scatter.append(
            _figure_html(
                "latency against accuracy",
                chart,
                "CPU ms per crop from each run's bench.json against test accuracy",
            )
        )
    else:
        scatter.append('<p class="na">n/a: no run has both bench results and test metrics.</p>')
    if without:
        scatter.append(
            f'<p class="na">No bench results: {_esc(", ".join(without))} (run pitguard export '
            "RUN --out BUNDLE --onnx, then pitguard bench BUNDLE --json RUN/bench.json).</p>"
        )
    if no_acc:
        scatter.append(
            f'<p class="na">No test metrics: {_esc(", ".join(no_acc))} (run pitguard eval RUN).</p>'
        )
    scatter.append("</section>")
    runs_html = "\n".join(_run_section(rec) for rec in records)
    toc = "".join(
        f'<li><a href="#{section_id(r["run"])}">{_esc(r["run"])}</a></li>' for r in records
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty icon keeps the browser from asking for /favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>pitguard experiments</title><style>{_CSS}</style></head><body>"
        f"<h1>pitguard experiments</h1><p>Generated {_esc(generated)}; "
        f"{len(records)} run(s).</p>"
        f'<nav><ul><li><a href="#table">table</a></li>'
        f'<li><a href="#latency-accuracy">latency against accuracy</a></li>{toc}</ul></nav>'
        f"{table}\n{''.join(scatter)}\n{runs_html}\n</body></html>\n"
    )


# --------------------------------------------------------------------------- entry point


def write_report(paths, out_dir: str | Path = "report", baseline: str | Path | None = None) -> dict:
    """Write experiments.json, experiments.md and report.html for the runs under PATHS into OUT_DIR.

    The baseline (default: the first run) is compared with every other run on their shared test
    part when their split.csv files are identical.
    """
    runs = _collect_dirs(paths)
    names = _names(runs)
    which = _resolve_baseline(baseline, runs, names)
    if isinstance(which, list):
        runs, which = which, 0
        names = _names(runs)
    records = [_run_record(run, name) for run, name in zip(runs, names, strict=True)]
    base = records[which]
    for rec in records:
        rec["vs_baseline"] = _compare_with_baseline(base, rec)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %z")
    table = format_markdown(records)
    files = {
        "json": out / "experiments.json",
        "markdown": out / "experiments.md",
        "html": out / "report.html",
    }
    _write_text(
        files["json"],
        json.dumps(
            {"generated": generated, "baseline": base["run"], "columns": COLUMNS, "runs": records},
            indent=2,
        )
        + "\n",
    )
    _write_text(
        files["markdown"],
        f"# pitguard experiments\n\nGenerated {generated}; baseline {base['run']}; "
        "intervals are 95%.\n\n" + table + "\n",
    )
    _write_text(files["html"], render_html(records, base["run"], generated))
    return {
        "baseline": base["run"],
        "runs": records,
        "table": table,
        "files": {k: str(v) for k, v in files.items()},
    }


def cmd_report(args) -> int:
    """The ``pitguard report`` verb: write the report, print the table and where it went."""
    result = write_report(args.paths, args.out, args.baseline)
    print(result["table"])
    files = result["files"]
    print(f"baseline {result['baseline']}; wrote {files['markdown']}, {files['json']}")
    print(f"open {files['html']} in a browser (one self-contained file)")
    return 0
