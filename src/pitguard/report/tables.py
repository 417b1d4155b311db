"""The experiments table: its columns, each run's cells as display strings, and its Markdown."""

from __future__ import annotations

import html

from pitguard.core.fmt import pct, pct_ci

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


def _human(n, units, step: float) -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for unit in units:
        if abs(value) < step or unit == units[-1]:
            return f"{value:.0f}{unit}" if unit == units[0] else f"{value:.1f}{unit}"
        value /= step
    return str(n)


def verdict_cell(vs: dict | None) -> str:
    """The comparison with the baseline in one line: verdict, accuracy difference, McNemar p."""
    if not vs:
        return "n/a"
    if not vs.get("paired"):
        return vs["verdict"]
    d = vs["accuracy_diff"]
    lo, hi = d["ci"]
    ci = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None and hi is not None else ""
    return f"{vs['verdict']}: acc {100 * d['diff']:+.2f} pts{ci}, McNemar p={vs['mcnemar_p']:.3f}"


def _guarded(test: dict | None) -> str:
    guard = (test or {}).get("input_guard")
    return f", {guard['flagged']} by the input guard" if guard else ""


def table_cells(rec: dict) -> list[str]:
    """The row of one run as display strings, in COLUMNS order."""
    t, cal, pol, lat = rec["test"], rec["calibration"], rec["policy_test"], rec["latency_cpu"]
    guarantee = (cal or {}).get("guarantee") or {}
    bound = (
        f"<= {pct(guarantee['max_pit_miss'], -1)} at {pct(guarantee['confidence'], -1)} conf. "
        f"({guarantee.get('mode', 'holdout')})"
        if guarantee.get("max_pit_miss") is not None
        else "n/a"
    )
    return [
        rec["run"],
        rec["recipe"] or "n/a",
        rec["architecture"] or "n/a",
        _human(rec["parameters"], ["", "k", "M", "G"], 1000),
        _human(rec["size_bytes"], [" B", " KiB", " MiB", " GiB"], 1024),
        pct(t["accuracy"]) + pct_ci(t["accuracy_ci"]) if t else "n/a",
        pct(t["macro_f1"]) if t else "n/a",
        pct(t["pit_recall"]) + pct_ci(t["pit_recall_ci"]) if t else "n/a",
        bound,
        pct(pol["pit_miss_rate"]) + pct_ci(pol["pit_miss_ci"]) if pol else "n/a",
        (pct(pol["maybe_rate"]) + pct_ci(pol["maybe_ci"]) + _guarded(t)) if pol else "n/a",
        f"{lat['ms_per_crop']:.3f} ({lat['backend']}, b{lat['batch_size']})" if lat else "n/a",
        f"{t['part']}, {t['n']}" if t else "n/a",
        verdict_cell(rec["vs_baseline"]),
    ]


def format_markdown(records: list[dict]) -> str:
    """The experiments table in Markdown, one row per run, then the notes."""

    def row(cells):
        return "| " + " | ".join(md_text(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(COLUMNS), "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += [row(table_cells(rec)) for rec in records]
    notes = [
        f"- {md_text(rec['run'])}: {md_text(note)}" for rec in records for note in rec["notes"]
    ]
    if notes:
        lines += ["", "n/a and notes:", *notes]
    return "\n".join(lines)


def md_text(text) -> str:
    """Text as Markdown shows it, never as HTML it would run (a run named <script> included)."""
    return html.escape(str(text), quote=False)
