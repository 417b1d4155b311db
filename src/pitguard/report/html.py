"""The report page: one self-contained HTML file, styles inline and every image a data URI."""

from __future__ import annotations

import base64
import html
import re
import shlex
from pathlib import Path

from pitguard.models.runfolder import BENCH_FILE
from pitguard.report.collect import crop_roots
from pitguard.report.figures import crops_grid_png, latency_accuracy_png, wrong_crops
from pitguard.report.tables import COLUMNS, table_cells, verdict_cell

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
    "confusion_matrix": "run pitguard eval {run}",  # {run} is shell-quoted where filled
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
    plain = (rec["test"] or {}).get("plain_summary")
    if plain:
        parts.append(f"<p><b>{_esc(plain)}</b></p>")
    parts.append(_facts_table(rec))
    figures, missing = _figures(rec, run)
    parts += figures
    table = _operating_table_html(rec)
    if table:
        parts.append(table)
    review = _label_review(run)
    if review is not None:
        parts.append(review)
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


def _facts_table(rec: dict) -> str:
    """What the run is and where its numbers come from, as a two-column table."""
    lat = rec["latency_cpu"]
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
            f"{lat['ms_per_crop']:.3f} ms/crop ({lat['choice']}, {lat['cpu']}, "
            f"{lat['threads']} thread(s))"
            if lat
            else "n/a",
        ),
        ("vs baseline", verdict_cell(rec["vs_baseline"])),
    ]
    look = (rec["calibration"] or {}).get("second_look")
    if look:
        facts.insert(
            5,
            (
                "second look",
                f"{look.get('model') or 'the same network'}, {look['views']} views, on the "
                f"{100 * look['share']:.1f}% of calibration crops "
                f"in doubt; the cascade sends {100 * look['maybe_rate_on_calib']:.1f}% to review "
                f"there, pit-miss bound {100 * look['pit_miss_bound']:.2f}% over both stages",
            ),
        )
    return (
        "<table>"
        + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
        + "</table>"
    )


def _operating_table_html(rec: dict) -> str | None:
    """The certified review rate at each pit-miss bound (rows) and false-reject cap (columns)
    on the run's calibration scores, beside the operating curve."""
    cal = rec["calibration"] or {}
    rows = cal.get("operating_table")
    if not rows:
        return None
    caps = sorted({r["max_false_reject"] for r in rows})
    bounds = sorted({r["max_pit_miss"] for r in rows})
    cell = {(r["max_pit_miss"], r["max_false_reject"]): r["maybe_rate"] for r in rows}
    conf = (cal.get("guarantee") or {}).get("confidence")
    head = "".join(f"<th>false rejects &le; {100 * c:g}%</th>" for c in caps)
    body = "".join(
        f"<tr><th>pit misses &le; {100 * b:g}%</th>"
        + "".join(
            f"<td>{'n/a' if cell.get((b, c)) is None else f'{100 * cell[(b, c)]:.1f}%'}</td>"
            for c in caps
        )
        + "</tr>"
        for b in bounds
    )
    scores = "out-of-fold scores" if cal.get("mode") == "oof" else "calibration crops"
    caption = (
        f"share of crops sent to review at each certified point, on the run's {scores} "
        f"({_esc(str(cal.get('data')))}, n={_esc(cal.get('n'))}"
        + (f", {100 * conf:g}% confidence" if isinstance(conf, int | float) else "")
        + "); n/a: too few pits for that bound"
    )
    return (
        f'<table class="operating"><caption>{caption}</caption><tr><th></th>{head}</tr>'
        f"{body}</table>"
    )


def _figures(rec: dict, run: Path) -> tuple[list[str], list[str]]:
    """The run's figures as HTML, and a line for each one it lacks with how to make it."""
    parts, missing = [], []
    for key, title in _FIGURES:
        info = rec["figures"].get(key)
        if info is None:
            missing.append(
                f"{title}: n/a ({_MISSING_FIGURE[key].format(run=shlex.quote(str(run)))})"
            )
            continue
        measured = f"{info['data']}" + (f", n={info['n']}" if info.get("n") is not None else "")
        if key == "most_wrong":
            crops = wrong_crops(run / info["file"], crop_roots(rec))
            if not crops:
                missing.append(f"{title}: n/a (no pit or clean crops in {info['file']})")
                continue
            png = crops_grid_png(crops)
            caption = (
                f"pits with the lowest p_pit (false clean first), then clean crops with the "
                f"highest; each titled with its true class, the route the decision gave it and "
                f"p(pit); red titles are argmax errors; {measured}"
            )
        else:
            png = (run / info["file"]).read_bytes()
            caption = measured
        parts.append(_figure_html(title, png, caption, wide=key == "most_wrong"))
    return parts, missing


def _label_review(run: Path, top: int = 16) -> str | None:
    """A cross-fitted run's most contradicted labels, as a gallery (None for other runs)."""
    import torch
    from scipy.special import softmax

    from pitguard.decision.review import rank_suspects
    from pitguard.evaluate.oof import read_oof
    from pitguard.models.runfolder import RunPaths, load_policy
    from pitguard.runtime.policy import DecisionPolicy, maybe_index

    if not RunPaths(run).oof.is_file():
        return None
    oof = read_oof(run)
    probs = softmax(oof.logits, axis=1)
    suspects, _ = rank_suspects(probs, oof.labels)
    # p(pit) as every other panel shows it: the calibrated policy's, where there is one
    policy = load_policy(run) or DecisionPolicy(
        pit_index=oof.pit_index, maybe_index=maybe_index(oof.classes)
    )
    p_pit = policy(torch.from_numpy(oof.logits).float())[0].numpy()
    by = ", ".join(
        f"{sum(s.label == i for s in suspects)} labelled {c}" for i, c in enumerate(oof.classes)
    )
    crops = [
        {
            "file": (run / oof.paths[s.index]).resolve(),
            "label": oof.classes[s.label],
            "predicted": oof.classes[s.suggested],
            "note": f"scores say {oof.classes[s.suggested]}",
            "p_pit": float(p_pit[s.index]),
        }
        for s in suspects[:top]
    ]
    caption = (
        f"{len(suspects)} of {len(oof.paths)} crops contradict their label out of fold ({by}); "
        f"the {len(crops)} most contradicted, each titled with its label and what the fold "
        f"models say; review and relabel them with pitguard data review {shlex.quote(str(run))} --out DIR"
    )
    if not crops:
        return f"<p>label review: no crop of the {len(oof.paths)} contradicts its label.</p>"
    return _figure_html("label review", crops_grid_png(crops), caption, wide=True)


def _latency_section(records: list[dict]) -> str:
    chart = latency_accuracy_png(records)
    without = [r["run"] for r in records if not r["latency_cpu"]]
    no_acc = [r["run"] for r in records if r["latency_cpu"] and not r["test"]]
    scatter = ['<section id="latency-accuracy"><h2>Latency against accuracy</h2>']
    if chart:
        scatter.append(
            _figure_html(
                "latency against accuracy",
                chart,
                f"CPU ms per crop from each run's {BENCH_FILE} against test accuracy",
            )
        )
    else:
        scatter.append('<p class="na">n/a: no run has both bench results and test metrics.</p>')
    if without:
        scatter.append(
            f'<p class="na">No bench results: {_esc(", ".join(without))} (run pitguard export '
            f"RUN --out BUNDLE --onnx, then pitguard bench BUNDLE --json RUN/{BENCH_FILE}).</p>"
        )
    if no_acc:
        scatter.append(
            f'<p class="na">No test metrics: {_esc(", ".join(no_acc))} (run pitguard eval RUN).</p>'
        )
    scatter.append("</section>")
    return "".join(scatter)


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
        f"{table}\n{_latency_section(records)}\n{runs_html}\n</body></html>\n"
    )
