"""Render results/README.md, and the README's results table, from the benchmarks' JSON.

    .venv/bin/python benchmarks/render_results.py          # rewrite both
    .venv/bin/python benchmarks/render_results.py --check  # exit 1 where either is stale

Every JSON file under results/ was written by a benchmark (its ``--json``); nothing here is
typed by hand. Three kinds are read, told apart by their keys:

- a recipe grid (``benchmarks/recipe_grid.py``: ``records``): per variant, the mean over split
  seeds of test accuracy, ROC-AUC, the calib part's review rate at the certified bound and the
  test part's, with 95% t-intervals over the seeds; pits routed clean summed over the test parts
  with an exact Clopper-Pearson interval; and each variant's paired difference from the grid's
  reference variant (``base`` or the first), seed by seed, with its t-interval.
- runtime latency (``benchmarks/runtime_latency.py``: ``rows`` and ``cpu``).
- bundle parity (``benchmarks/bundle_parity.py``: ``graphs``): routes a bundle's graphs give
  unlike ``eval``, with exact intervals.
- cascade coverage (``benchmarks/cascade_coverage.py``: ``broken_share``): how often a
  certified cascade broke its bound on simulated fresh crops.
- cross-fit review (``benchmarks/crossfit_review.py``: ``second_looks``): a cross-fitted run's
  out-of-fold review rate in one stage and with each second look, paired, and its test part.
- bench (``pitguard bench --json``: ``results`` and ``hardware``): ms per crop of each target.

The README holds the first grid's table between the two ``results`` markers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

from pitguard.core.fmt import pct
from pitguard.core.stats import clopper_pearson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"
# (record key, column title, digits): shares shown as percentages
METRICS = (
    ("test_accuracy", "test accuracy", 2),
    ("test_roc_auc", "test ROC-AUC", None),
    ("calib_review_rate", "calib review", 1),
    ("calib_specificity_at_99_recall", "calib specificity at 99% pit recall", 1),
    ("test_maybe_rate", "test review", 1),
)


def t_interval(values: list[float]) -> tuple[float, float, float] | None:
    """Mean and 95% t-interval over independent repeats (split seeds); None under two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _cell(values: list[float], digits: int | None) -> str:
    if not values:
        return "n/a"
    ci = t_interval(values)
    show = (lambda x: f"{x:.3f}") if digits is None else (lambda x: pct(x, digits, ""))
    if ci is None:
        return show(values[0])
    return f"{show(ci[0])} [{show(ci[1])}, {show(ci[2])}]"


def _signed(values: list[float], digits: int | None) -> str:
    ci = t_interval(values)
    if ci is None:
        return "n/a"
    scale, places = (1, 3) if digits is None else (100, digits)
    mean, lo, hi = (scale * v for v in ci)
    return f"{mean:+.{places}f} [{lo:+.{places}f}, {hi:+.{places}f}]"


def _done(grid: dict) -> dict[str, dict[int, dict]]:
    """Finished records by variant, then by split seed."""
    out: dict[str, dict[int, dict]] = {}
    for r in grid["records"]:
        if r.get("status") == "done":
            out.setdefault(r["variant"], {})[r["split_seed"]] = r
    return out


def _reference(by_variant: dict[str, dict[int, dict]]) -> str:
    return "base" if "base" in by_variant else next(iter(by_variant))


def grid_table(grid: dict) -> str:
    """Per variant: means with t-intervals over seeds, pits routed clean, training minutes."""
    by_variant = _done(grid)
    head = ["variant", "seeds", *(t for _, t, _ in METRICS), "test pits routed clean", "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, runs in by_variant.items():
        rows = list(runs.values())
        cells = [f"`{name}`", ",".join(str(s) for s in sorted(runs))]
        for key, _, digits in METRICS:
            cells.append(_cell([r[key] for r in rows if r.get(key) is not None], digits))
        missed = [r for r in rows if r.get("test_pits_routed_clean") is not None]
        k = sum(r["test_pits_routed_clean"] for r in missed)
        n = sum(r.get("test_n_pits") or 0 for r in missed)
        if missed and n and all(r.get("test_n_pits") for r in missed):
            lo, hi = clopper_pearson(k, n)
            cells.append(f"{k} of {n} ({pct(k / n, 2)} [{pct(lo, 2, '')}, {pct(hi, 2, '')}])")
        else:
            cells.append(f"{k}" if missed else "n/a")
        minutes = [r["train_seconds"] / 60 for r in rows if r.get("train_seconds")]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(grid: dict) -> str:
    """Each variant minus the reference, seed by seed: mean difference and its t-interval."""
    by_variant = _done(grid)
    ref = _reference(by_variant)
    head = ["variant", "paired seeds", *(f"{t}, difference" for _, t, _ in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, runs in by_variant.items():
        if name == ref:
            continue
        seeds = sorted(set(runs) & set(by_variant[ref]))
        cells = [f"`{name}` - `{ref}`", ",".join(str(s) for s in seeds) or "none"]
        for key, _, digits in METRICS:
            pairs = [(runs[s].get(key), by_variant[ref][s].get(key)) for s in seeds]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            cells.append(_signed(diffs, digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(doc: dict) -> str:
    lines = [
        f"CPU: {doc['cpu']}; Python {doc.get('python', '?')}; batch {doc['batch']}, "
        f"{doc['threads']} threads, {doc['repeats']} repeats; the runtime alone (no torch).",
        "",
        "| model | graph | ms per crop, median [p10, p90] | import to first prediction, s |",
        "| --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        lo, hi = r["ms_per_crop_p10_p90"]
        lines.append(
            f"| {r['model']} | {r['graph']} | {r['ms_per_crop_median']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"| {r['import_to_first_prediction_s']:.2f} |"
        )
    return "\n".join(lines)


def ros_table(doc: dict) -> str:
    """pitguard-node over DDS against the stage in-process (benchmarks/ros_latency.py)."""
    lines = [
        f"CPU: {doc['cpu']}, {doc['cores']} cores; node and client on {doc['threads']} ONNX "
        f"Runtime threads and the same cores; rclpy {doc['rclpy']}; {doc['frames']} frames of "
        f"the {doc['frame_source']} a figure; DDS profile: {doc.get('dds_profile', 'not recorded')}.",
        "",
        "| bundle | crops | over DDS, ms p50 / p90 | in-process, ms p50 / p90 | DDS overhead "
        "(p50) | start to ready, s (hashed / remembered) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in doc["bundles"]:
        starts = " / ".join(f"{s['to_ready_s']:.2f}" for s in row["starts"])
        for n in sorted(int(k.split("_")[-1]) for k in row if k.startswith("dds_")):
            d, i = row[f"dds_{n}"], row[f"in_process_{n}"]
            lines.append(
                f"| {row['bundle']} | {n} | {d['p50_ms']:.1f} / {d['p90_ms']:.1f} | "
                f"{i['p50_ms']:.1f} / {i['p90_ms']:.1f} | {100 * row[f'overhead_{n}']:+.0f}% | "
                f"{starts} |"
            )
    return "\n".join(lines)


def load_cost_table(doc: dict) -> str:
    """What proving a bundle costs at load (benchmarks/bundle_load_cost.py)."""
    lines = [
        f"CPU: {doc['cpu']}, {doc['cores']} cores, {doc['threads']} threads; median of "
        f"{doc['repeats']} loads of `Classifier` on the CPU.",
        "",
        "| bundle | MB | open (digests remembered), s | with a trusted key, s | signature alone, "
        "s | with `verify`, s | check crops, ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["loads"]:
        check = (
            f"{r['check_crops']} in {r['check_ms']:.0f}" if r["check_ms"] is not None else "none"
        )
        lines.append(
            f"| {r['bundle']} | {r['megabytes']} | {r['open_remembered_s']:.2f} | "
            f"{r['open_trusted_s']:.2f} | {r['signature_only_s']:.4f} | "
            f"{r['open_verified_s']:.2f} | {check} |"
        )
    return "\n".join(lines)


def stalled_table(doc: dict) -> str:
    """Good clients beside stalled uploads (benchmarks/serve_stalled.py)."""
    lines = [
        f"CPU: {doc['cpu']}, {doc['cores']} cores; bundle {doc['bundle']}; "
        f"{doc['good_clients']} clients sending single crops for {doc['seconds']:g} s, alone and "
        f"beside {doc['stalled_uploads']} stalled and {doc['trickling_uploads']} trickling "
        "uploads.",
        "",
        "| phase | answered 200 | other statuses | connection errors | p50, ms | p99, ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("alone", "beside_stalled"):
        r = doc[name]
        other = {k: v for k, v in r["statuses"].items() if k != "200"} or "none"
        lines.append(
            f"| {name.replace('_', ' ')} | {r['answered_200']} | {other} | "
            f"{r['connection_errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    lines += ["", f"Good clients' p99 beside the stalled uploads: {doc['p99_ratio']:.2f}x alone."]
    return "\n".join(lines)


def parity_table(doc: dict) -> str:
    lines = [
        f"Run `{doc['run']}`, bundle `{doc['bundle']}`, on {doc['data']} (n={doc['n']:,}).",
        "",
        "| graph, input | routes unlike `eval` | routes unlike its own thresholds | max abs p_pit difference |",
        "| --- | --- | --- | --- |",
    ]
    for name, g in doc["graphs"].items():
        k = g["routes_differing_from_eval"]
        lo, hi = clopper_pearson(k, doc["n"])
        own = g.get("routes_differing_from_own_thresholds")
        lines.append(
            f"| {name} | {k} [{pct(lo, 2)}, {pct(hi, 2)}] | {'n/a' if own is None else own} "
            f"| {g['max_p_pit_difference_from_eval']:.1e} |"
        )
    return "\n".join(lines)


def coverage_table(docs: list[tuple[str, dict]]) -> str:
    lines = [
        "| procedure | calibrations | bound broken | allowed | review, mean | one stage, mean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for _name, d in docs:
        lo, hi = d["broken_share_ci"]
        lines.append(
            f"| {d['procedure']} | {d['draws']} of {d['n_calibration']} crops | {d['broken']} "
            f"({pct(d['broken_share'], 1)} [{pct(lo, 1)}, {pct(hi, 1)}]) | "
            f"{pct(1 - d['confidence'], 0)} | {pct(d['mean_maybe_rate'], 1)} | "
            f"{pct(d['mean_single_stage_maybe_rate'], 1)} |"
        )
    d = docs[0][1]
    head = (
        f"Bound {pct(d['bound'], -1)} at {pct(d['confidence'], 0)}; each calibration's true "
        "pit-miss rate measured on 200,000 fresh simulated crops."
    )
    return head + "\n\n" + "\n".join(lines)


def _rate_ci(rate: float | None, ci) -> str:
    if rate is None:
        return "n/a"
    return f"{pct(rate, 1)} [{pct(ci[0], 1)}, {pct(ci[1], 1)}]" if ci else pct(rate, 1)


def _test_cells(t: dict) -> str:
    return (
        f"{_rate_ci(t['review'], t['review_ci'])} | {t['pits_clean']} of {t['n_pits']} "
        f"({_rate_ci(t['pits_clean'] / t['n_pits'], t['pits_clean_ci'])})"
    )


def crossfit_table(doc: dict) -> str:
    one = doc["single"]
    spec = _rate_ci(one["specificity_at_recall"], one["specificity_ci"])
    lines = [
        f"{doc['run']}: {doc['n']} out-of-fold crops ({doc['n_pits']} pits); out-of-fold "
        f"accuracy {_rate_ci(*doc['oof_accuracy'])}, ROC-AUC {doc['oof_roc_auc'][0]:.4f}; "
        f"specificity at 99% pit recall {spec}. Review at 1% (95%), false rejects <= 5%, "
        "certified on the out-of-fold scores, with bootstrap intervals (the thresholds "
        "certified again on each resample; differences paired on the same resamples). The "
        f"test part ({one['test']['n']} crops, exact intervals; the input guard, which `eval` adds, left out) is read afterwards.",
        "",
        "| decision | out-of-fold review | paired difference | share taking the second look "
        "| test review | test pits routed clean |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| one stage | {_rate_ci(one['review_rate'], one['review_rate_ci'])} | | | "
        f"{_test_cells(one['test'])} |",
    ]
    for key, r in doc["second_looks"].items():
        lo, hi = r["paired_diff_ci"]
        run, _, views = key.partition(":")  # RUN2:VIEWS for another run's model
        what = f"second look by `{run}`'s model, views {views}" if views else f"second look {key}"
        lines.append(
            f"| {what} | {_rate_ci(r['cascade_review'], r['cascade_ci'])} | "
            f"{100 * r['paired_diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
            f"{pct(r['share'], 1)} | {_test_cells(r['test'])} |"
        )
        alone = r.get("model_alone")
        if alone and views == "none":
            lines.append(_alone_row(run, alone))
    return "\n".join(lines)


def _alone_row(run: str, alone: dict) -> str:
    """Another run's model in one stage; older files hold no pairing or test part."""
    diff = " "
    if alone.get("paired_diff") is not None:
        lo, hi = alone["paired_diff_ci"]
        diff = f" {100 * alone['paired_diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
    test = _test_cells(alone["test"]) if alone.get("test") else "|"
    review = _rate_ci(alone["review_rate"], alone["review_rate_ci"])
    return f"| `{run}`'s model alone, one stage | {review} |{diff}| | {test} |"


def bench_table(doc: dict) -> str:
    hw = doc["hardware"]
    lines = [
        f"{doc['threads']} thread(s) on {hw['cpu']}; `pitguard bench` end to end from uint8 "
        "crops; a `+second-look` row adds the second stage at the share of calibration crops "
        "that took it.",
        "",
        "| target | backend | batch | ms per crop | x baseline |",
        "| --- | --- | --- | --- | --- |",
    ]
    speed = {
        (r["target"], r["backend"], r["batch_size"]): r["speedup_per_crop_vs_baseline"]
        for r in doc.get("ratios", [])
    }
    for r in doc["results"]:
        key = (r["target"], r["backend"], r["batch_size"])
        x = "base" if r["target"] == doc.get("baseline") and r["backend"] == "eager" else ""
        x = f"{speed[key]:.1f}x" if key in speed else x
        lines.append(
            f"| {Path(r['target']).name} | {r['backend']} | {r['batch_size']} | "
            f"{r['ms_per_crop']:.3f} | {x} |"
        )
    return "\n".join(lines)


def _grid_section(name: str, grid: dict) -> list[str]:
    about = grid.get("about", {})
    out = [f"## {about.get('title', name)}", ""]
    if about.get("text"):
        out += [about["text"], ""]
    if grid.get("machine"):
        out += [f"Machine: {grid['machine']}.", ""]
    out += [grid_table(grid), "", paired_table(grid), ""]
    return out


def render_page(docs: dict[str, dict]) -> str:
    """results/README.md from every JSON file under results/, in file-name order."""
    out = [
        "# Results",
        "",
        "Rendered by `benchmarks/render_results.py` from the JSON files beside this page, each",
        "written by the benchmark its section names; do not edit by hand. Intervals are 95%:",
        "t-intervals over split seeds for means and paired differences (each split seed a",
        "repeat), exact Clopper-Pearson for counts. Review rates are at the certified bound",
        "(pit-miss 1% at 95% confidence, false rejects <= 5%, hold-out calibration).",
        "",
    ]
    coverage = [(n, d) for n, d in docs.items() if "broken_share" in d]
    for name, doc in docs.items():
        if "records" in doc:
            out += _grid_section(name, doc)
        elif "second_looks" in doc:
            out += [f"## Cross-fit review (`{name}`)", "", crossfit_table(doc), ""]
        elif "results" in doc and "hardware" in doc:
            out += [f"## Latency of the deployed decision (`{name}`)", "", bench_table(doc), ""]
        elif "rows" in doc and "cpu" in doc:
            out += [f"## Runtime latency (`{name}`)", "", latency_table(doc), ""]
        elif "loads" in doc:
            out += [f"## Proving a bundle at load (`{name}`)", "", load_cost_table(doc), ""]
        elif "beside_stalled" in doc:
            out += [f"## Serving beside stalled uploads (`{name}`)", "", stalled_table(doc), ""]
        elif "bundles" in doc and "frames" in doc:
            out += [f"## pitguard-node over DDS (`{name}`)", "", ros_table(doc), ""]
        elif "graphs" in doc:
            out += [f"## Bundle parity (`{name}`)", "", parity_table(doc), ""]
    if coverage:
        names = ", ".join(f"`{n}`" for n, _ in coverage)
        out += [f"## Cascade coverage ({names})", "", coverage_table(coverage), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def render_readme_block(docs: dict[str, dict], readme: str) -> str:
    """The README with the first grid's table between the results markers."""
    grids = [(n, d) for n, d in docs.items() if "records" in d]
    if BEGIN not in readme or END not in readme or not grids:
        return readme
    name, grid = grids[0]
    block = [
        BEGIN,
        f"From [`results/{name}`](results/README.md), rendered by `benchmarks/render_results.py`:",
        "",
        grid_table(grid),
        END,
    ]
    head, rest = readme.split(BEGIN, 1)
    return head + "\n".join(block) + rest.split(END, 1)[1]


def load(folder: Path = RESULTS) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="exit 1 if a rendered file is stale")
    args = ap.parse_args(argv)
    docs = load()
    targets = {
        RESULTS / "README.md": render_page(docs),
        ROOT / "README.md": render_readme_block(docs, (ROOT / "README.md").read_text()),
    }
    stale = [p for p, text in targets.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(
                f"{p.relative_to(ROOT)} is stale: run benchmarks/render_results.py", file=sys.stderr
            )
        return 1 if stale else 0
    for p in stale:
        p.write_text(targets[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
