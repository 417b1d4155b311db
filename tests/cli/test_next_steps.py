"""The first hour: each verb ends by naming what it wrote and the command that goes on from it."""

from __future__ import annotations

from pathlib import Path

from pitguard.cli import main
from pitguard.cli.common import run_data
from tests.conftest import SESSION_CONFIDENCE, SESSION_MAX_PIT_MISS, copy_run

TINY = ["model.name=pitguard_tiny", "train.max_minutes=0", "train.threads=1"]


def _lines(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


def _train(data: Path, out: Path, epochs: int, *more: str) -> list[str]:
    sets = [*TINY, f"train.epochs={epochs}"]
    argv = ["train", "--recipe", "small-fast", "--data", str(data), "--out", str(out), *more]
    return [*argv, *(arg for s in sets for arg in ("--set", s))]


def test_train_names_its_files_then_resume_or_calibrate(synth_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(synth_dir, run, 2, "--stop-after", "1")) == 0
    out = capsys.readouterr().out
    assert _lines(out, "next: ") == [f"next: pitguard train --resume {run}"]  # not finished
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    (wrote,) = _lines(out, "wrote: ")
    assert wrote.startswith(f"wrote: {run}/ (model.safetensors, train_summary.json, ")
    assert out.rstrip().splitlines()[-1] == f"next: pitguard calibrate {run}"


def test_calibrate_eval_export_predict_each_name_the_next_verb(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    bound = ["--max-pit-miss", str(SESSION_MAX_PIT_MISS), "--confidence", str(SESSION_CONFIDENCE)]
    assert main(["calibrate", str(run), *bound]) == 0
    out = capsys.readouterr().out
    assert f"wrote: {run}/ (policy.json, calibration/policy_report.json, " in out
    assert out.rstrip().splitlines()[-1] == f"next: pitguard eval {run}"

    assert main(["eval", str(run), "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert _lines(out, "wrote: ")[0].startswith(f"wrote: {run / 'eval' / 'test'}/ (metrics.json, ")
    assert out.rstrip().splitlines()[-1] == f"next: pitguard export {run} --out bundles/run --onnx"

    bundle = tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert _lines(out, "wrote: ") == [f"wrote: {bundle}/ (bundle.json, model.safetensors)"]
    assert out.rstrip().splitlines()[-1].startswith(f"next: pitguard bench {bundle} (or ")

    preds = tmp_path / "preds.csv"
    crops = sorted(Path(run_data(run)).glob("cherry_pit/*.png"))[:2]
    assert main(["predict", str(bundle), *map(str, crops), "--out", str(preds)]) == 0
    out = capsys.readouterr().out  # the routes go to stderr, as when stdout holds the CSV
    assert out.splitlines() == [f"wrote: {preds}", f"next: pitguard serve {bundle}"]


def test_eval_of_an_uncalibrated_run_points_at_calibrate(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    assert main(["eval", str(run), "--n-boot", "20"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"next: pitguard calibrate {run}"


def test_data_split_points_at_train_on_its_manifest_and_q_keeps_it_quiet(
    synth_dir, tmp_path, capsys
):
    manifest = tmp_path / "split.csv"
    assert main(["data", "split", str(synth_dir), "--out", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert _lines(out, "wrote: ") == [f"wrote: {manifest}"]
    assert out.rstrip().splitlines()[-1] == (
        f"next: pitguard train --recipe cpu-fast --data {manifest} --out runs/cpu-fast"
    )
    assert main(["-q", "data", "split", str(synth_dir), "--out", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and not _lines(out, "wrote: ") and not _lines(out, "next: ")


def test_data_audit_points_at_split_for_class_folders(synth_dir, tmp_path, capsys):
    report = tmp_path / "audit.json"
    assert main(["data", "audit", str(synth_dir), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert _lines(out, "wrote: ") == [f"wrote: {report}"] and report.is_file()
    assert out.rstrip().splitlines()[-1] == (
        f"next: pitguard data split {synth_dir} --out split.csv"
    )
