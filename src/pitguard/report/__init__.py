"""The experiments report: run folders collected into one table, figures and one HTML page.

Only the standard library is imported here, so ``pitguard --help`` stays free of torch and
matplotlib; the wing's modules load when a report is written.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["write_report"]


def write_report(
    paths,
    out_dir: str | Path = "report",
    baseline: str | Path | None = None,
    pit_share: float | None = None,
) -> dict:
    """Write experiments.json, experiments.md and report.html for the runs under PATHS into OUT_DIR.

    The baseline (default: the first run) is compared with every other run on their shared test
    part when their split manifests are identical. ``pit_share`` is the line's share of pits,
    which the plain-words summary of each run counts with (default: its test part's share).
    """
    from pitguard.core.errors import PitguardError
    from pitguard.core.files import atomic_write_text, write_json
    from pitguard.report.baseline import records_with_baseline
    from pitguard.report.html import render_html
    from pitguard.report.tables import COLUMNS, format_markdown, md_text

    if pit_share is not None and not 0.0 < pit_share < 1.0:  # also refuses NaN
        raise PitguardError(f"pit share {pit_share!r}: give a share strictly between 0 and 1")
    records, base, skipped = records_with_baseline(paths, baseline, pit_share)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %z")
    table = format_markdown(records)
    files = {
        "json": out / "experiments.json",
        "markdown": out / "experiments.md",
        "html": out / "report.html",
    }
    write_json(
        files["json"],
        {
            "generated": generated,
            "baseline": base["run"],
            "columns": COLUMNS,
            "runs": records,
            "skipped": skipped,
        },
    )
    atomic_write_text(
        files["markdown"],
        f"# pitguard experiments\n\nGenerated {generated}; baseline {base['run']}; "
        "intervals are 95%.\n\n"
        + table
        + "\n"
        + "".join(f"\nNot read: {md_text(line)}\n" for line in skipped),
    )
    atomic_write_text(files["html"], render_html(records, base["run"], generated))
    return {
        "baseline": base["run"],
        "runs": records,
        "skipped": skipped,
        "table": table,
        "files": {k: str(v) for k, v in files.items()},
    }
