"""Pick the baseline among the reported runs and pair every run's test predictions with it.

The comparison itself is ``pitguard.evaluate.compare``'s, on the test part the runs share; it is
the one number of the report measured anew rather than read from the runs' files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pitguard.core.errors import PitguardError
from pitguard.models.runfolder import is_run
from pitguard.report.collect import run_record, same_file
from pitguard.report.discover import run_dirs, run_names

log = logging.getLogger(__name__)


def _resolve_baseline(baseline, runs: list[Path], names: list[str]) -> int | list[Path]:
    """Index of the baseline among RUNS, or RUNS with the baseline run folder put first."""
    if baseline is None:
        return 0
    text = str(baseline)
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        if text == name or same_file(Path(text), run):
            return i
    if is_run(text):
        return [Path(text), *runs]
    raise PitguardError(
        f"--baseline {text}: not a run folder and not one of the runs in the report "
        f"({', '.join(names)}); give a run folder or one of those names"
    )


def compare_with_baseline(base: dict, rec: dict) -> dict:
    """REC against BASE on their shared test part, or why they were not paired."""
    from pitguard.evaluate.compare import compare_runs, same_split

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


def records_with_baseline(
    paths, baseline=None, pit_share: float | None = None
) -> tuple[list[dict], dict, list[str]]:
    """The records of the runs under PATHS, each compared with the baseline; the baseline's;
    and a line for each run whose files could not be read (skipped, the others reported).

    The baseline (default: the first readable run) is a run name, a run among PATHS or another
    run folder, which is then put first. ``pit_share``: see ``collect.run_record``.
    """
    runs = run_dirs(paths)
    names = run_names(runs)
    which = _resolve_baseline(baseline, runs, names)
    if isinstance(which, list):
        runs, which = which, 0
        names = run_names(runs)
    records: list[dict] = []
    skipped: list[str] = []
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        try:
            records.append(run_record(run, name, pit_share))
        except (PitguardError, OSError, ValueError, KeyError, TypeError) as err:
            why = str(err) if isinstance(err, PitguardError) else f"{type(err).__name__}: {err}"
            if i == which and baseline is not None:
                raise PitguardError(f"the baseline {run} cannot be read: {why}") from err
            skipped.append(f"{run}: skipped, {why}")
            log.warning("report: %s", skipped[-1])
            if i < which:
                which -= 1
    if not records:
        raise PitguardError("no run could be read: " + "; ".join(skipped))
    base = records[min(which, len(records) - 1)]
    for rec in records:
        rec["vs_baseline"] = compare_with_baseline(base, rec)
    return records, base, skipped
