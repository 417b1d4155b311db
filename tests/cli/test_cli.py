"""The command line's help: every verb's --help works and ends in examples, and costs no torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pitguard
from pitguard.cli import build_parser, main

VERBS = [
    ["data", "audit"],
    ["data", "split"],
    ["data", "synth"],
    ["data", "review"],
    ["data", "cache"],
    ["train"],
    ["sweep"],
    ["eval"],
    ["calibrate"],
    ["thresholds"],
    ["recipes"],
    ["keygen"],
    ["export"],
    ["verify"],
    ["predict"],
    ["serve"],
    ["bench"],
    ["compare"],
    ["twostage"],
    ["routing"],
    ["import-torchvision"],
    ["report"],
    ["demo"],
]


def _leaf_verbs(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [prefix]
    return [
        verb
        for name, child in groups[0].choices.items()
        for verb in _leaf_verbs(child, [*prefix, name])
    ]


def test_every_verb_is_listed_here():
    assert sorted(_leaf_verbs(build_parser(), [])) == sorted(VERBS)


@pytest.mark.parametrize("argv", [[], ["data"], *VERBS], ids=lambda v: " ".join(v) or "pitguard")
def test_help_exits_0_and_ends_in_examples(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    examples = out[out.index("examples:") :].splitlines()
    assert examples[1].startswith("  pitguard") or examples[1].startswith("  curl")
    assert " ".join(out.split()).endswith("143 terminated (SIGTERM)")  # then the exit statuses


def test_help_lists_help_texts_with_percent_signs(capsys):
    # argparse %-formats each verb's help; "95% intervals" once crashed `pitguard --help`.
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "metrics with 95% intervals" in capsys.readouterr().out


def test_bare_pitguard_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "examples:" in capsys.readouterr().out


def test_serving_backend_help_names_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "auto (ONNX when present), eager (alias torch), onnx, onnx-int8, onnx-fp16" in out


def test_help_imports_no_torch_or_matplotlib():
    verbs = [[], *VERBS]
    code = (
        "import contextlib, io, sys\n"
        "from pitguard.cli import main\n"
        f"for argv in {verbs!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([*argv, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n"
    )
    src = str(Path(pitguard.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_train_without_a_recipe_uses_cpu_fast_and_says_so(synth_dir, tmp_path, capsys):
    import json

    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine train asks for a recipe")
    run = tmp_path / "run"
    sets = ["model.name=pitguard_tiny", "model.weights=none", "model.normalize=none"]
    sets += ["train.epochs=1", "train.max_minutes=0", "train.threads=1"]
    args = ["train", "--data", str(synth_dir), "--out", str(run)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no --recipe given: training cpu-fast" in out and "1 epoch," in out
    assert "data: train 132 (clean 66, pit 66); " in out  # counts for people, not a dict
    assert json.loads((run / "config.json").read_text())["recipe"] == "cpu-fast"


def test_stop_after_must_be_at_least_one(synth_dir, tmp_path, capsys):
    args = ["train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--stop-after", "0"]
    assert main(args) == 2
    assert "--stop-after 0: give 1 or more epochs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("saved", [True, False])
def test_an_interrupted_train_says_how_to_go_on(trained_run, tmp_path, monkeypatch, capsys, saved):
    import shutil

    from pitguard.train import loop as train_module

    run = tmp_path / "run"
    if saved:
        shutil.copytree(trained_run / "checkpoints", run / "checkpoints")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    assert main(["train", "--resume", str(run)]) == 130
    err = capsys.readouterr().err
    if saved:
        assert f"interrupted; continue with: pitguard train --resume {run}" in err
    else:
        assert "no epoch was saved yet, so there is nothing to resume" in err


def test_sigterm_stops_a_verb_with_a_message(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from pitguard.cli import main\n"
        "import pitguard.cli.train_verbs as tv\n"
        "def stopped(args):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return 0\n"
        "tv.cmd_train = stopped\n"
        f"sys.exit(main(['train', '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143 and done.stderr.startswith("terminated")


def _train_argv(data, out) -> list[str]:
    return ["train", "--recipe", "small-fast", "--data", str(data), "--out", str(out)]


def test_a_dry_run_prints_the_config_and_an_estimate_and_trains_nothing(
    synth_dir, tmp_path, capsys
):
    argv = _train_argv(synth_dir, tmp_path / "r")
    sets = ["--set", "model.name=pitguard_tiny", "--set", "train.threads=1"]
    assert main([*argv, *sets, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: pitguard_tiny" in out and "epochs: 68" in out
    assert "estimate: " in out and "nothing trained" in out
    assert not (tmp_path / "r").exists()


def test_a_run_without_a_budget_says_how_long_the_rest_will_take(synth_dir, tmp_path, capsys):
    from pitguard.config import load_config
    from pitguard.train.loop import train

    sets = ["model.name=pitguard_tiny", "train.epochs=2", "train.threads=1", "train.max_minutes=0"]
    train(load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)}), tmp_path / "r")
    assert "min more for the 1 epoch left" in capsys.readouterr().out


def test_a_taken_run_folder_gets_the_next_free_name_and_says_so(synth_dir, tmp_path, capsys):
    argv = _train_argv(synth_dir, tmp_path / "r")
    sets = ["--set", "model.name=pitguard_tiny", "--set", "train.epochs=1"]
    sets += ["--set", "train.max_minutes=0", "--set", "train.threads=1"]
    assert main([*argv, *sets]) == 0
    assert main([*argv, *sets]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'r'} holds a run (continue it with --resume {tmp_path / 'r'})" in out
    assert (tmp_path / "r-2" / "model.json").is_file()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["eval", "RUN", "--n-boot", "0"], "--n-boot"),
        (["eval", "RUN", "--n-boot", "-5"], "--n-boot"),
        (["calibrate", "RUN", "--confidence", "nan"], "--confidence"),
        (["calibrate", "RUN", "--max-pit-miss", "inf"], "--max-pit-miss"),
        (["calibrate", "RUN", "--max-false-reject", "1"], "--max-false-reject"),
        (["thresholds", "RUN", "--min-recall", "nan"], "--min-recall"),
        (["thresholds", "RUN", "--every", "0"], "--every"),
        (["predict", "B", "x.png", "--threads", "-1"], "--threads"),
        (["predict", "B", "x.png", "--queue-sample", "nan"], "--queue-sample"),
        (["serve", "B", "--port", "70000"], "--port"),
        (["serve", "B", "--max-wait-ms", "nan"], "--max-wait-ms"),
        (["serve", "B", "--max-queue-ms", "inf"], "--max-queue-ms"),
        (["serve", "B", "--max-request-mb", "nan"], "--max-request-mb"),
        (["serve", "B", "--max-batch", "0"], "--max-batch"),
        (["bench", "pitguard_tiny", "--min-seconds", "inf"], "--min-seconds"),
        (["bench", "pitguard_tiny", "--threads", "0"], "--threads"),
        (["data", "synth", "OUT", "--difficulty", "nan"], "--difficulty"),
        (["data", "audit", "DATA", "--size", "0"], "--size"),
        (["data", "review", "RUN", "--out", "O", "--top", "0"], "--top"),
        (["train", "--out", "R", "--folds", "3", "--workers", "-1"], "--workers"),
        (["twostage", "--out", "O", "--stage2-epochs", "0"], "--stage2-epochs"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_numeric_flags_refuse_non_finite_and_out_of_range_values(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:  # refused while reading the command line
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {argv[argv.index(flag) + 1]}: give " in err


def test_eval_with_no_bootstrap_writes_nothing(trained_run, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(trained_run), "--n-boot", "0", "--json", str(out)])
    assert (
        exc.value.code == 2
        and "argument --n-boot: 0: give a whole number" in capsys.readouterr().err
    )
    assert not out.exists() and {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before


def test_serve_refuses_an_endless_header_timeout(capsys):
    assert main(["serve", "B", "--header-timeout", "inf"]) == 2
    assert "--header-timeout inf: give a positive number of seconds" in capsys.readouterr().err


def _digests(folder: Path) -> dict[Path, str]:
    from pitguard.core.files import file_sha256

    return {p: file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_never_writes_over_its_bundle_or_an_input_crop(bundle, tmp_path, capsys):
    from pitguard.data.synth import synthesize

    crops = tmp_path / "crops"
    synthesize(crops, count=4, seed=1)
    crop = next((crops / "cherry_pit").glob("*.png"))
    before, kept = _digests(bundle), _digests(crops)
    argv = ["predict", str(bundle), str(crops)]
    assert main([*argv, "--out", str(bundle / "bundle.json")]) == 2
    assert f"--out {bundle / 'bundle.json'}: lies inside a bundle folder" in capsys.readouterr().err
    assert main(["predict", str(bundle), str(crop), "--out", str(crop)]) == 2
    assert f"--out {crop}: is also an input of this command" in capsys.readouterr().err
    assert main([*argv, "--out", str(crops / "preds.csv")]) == 2
    assert "lies inside the data folder" in capsys.readouterr().err
    queue = bundle / "queue"
    assert main([*argv, "--out", str(tmp_path / "p.csv"), "--queue", str(queue)]) == 2
    assert f"--queue {queue}: lies inside a bundle folder" in capsys.readouterr().err
    assert _digests(bundle) == before and _digests(crops) == kept


def test_eval_json_never_writes_over_a_bundle_a_run_file_or_its_data(
    trained_run, bundle, tmp_path, capsys
):
    manifest = trained_run / "split.csv"
    before = _digests(trained_run)
    cases = [
        (bundle / "bundle.json", "lies inside a bundle folder"),
        (trained_run / "model.json", f"lies inside the run folder {trained_run}'s own model.json"),
        (trained_run / "checkpoints" / "x.json", "own checkpoints"),
    ]
    for out, needle in cases:
        assert main(["eval", str(trained_run), "--json", str(out)]) == 2
        assert needle in capsys.readouterr().err
    assert main(["eval", str(trained_run), "--data", str(manifest), "--json", str(manifest)]) == 2
    assert f"--json {manifest}: is also an input" in capsys.readouterr().err
    assert _digests(trained_run) == before


@pytest.mark.parametrize(
    ("verb", "flag", "outs"),
    [
        (["data", "split", "{data}"], "--out", ["{data}/cherry_pit/s.csv", "{bundle}/s.csv"]),
        (["data", "audit", "{data}"], "--json", ["{data}/cherry_pit/a.json", "{bundle}/a.json"]),
        (["bench", "{bundle}", "--backends", "onnx"], "--json", ["{bundle}/bench.json"]),
        (["report", "{run}"], "--out", ["{bundle}", "{bundle}/report"]),
        (["export", "{run}", "--force"], "--out", ["{data}/b", "{bundle}/b", "{run}"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_outputs_inside_the_data_or_a_bundle_are_refused_before_any_work(
    calibrated_run, bundle, capsys, verb, flag, outs
):
    data = Path(json.loads((calibrated_run / "config.json").read_text())["data"]["path"])
    places = {"data": data, "bundle": bundle, "run": calibrated_run}
    argv = [part.format(**places) for part in verb]
    before = {**_digests(bundle), **_digests(data), **_digests(calibrated_run)}
    for out in (o.format(**places) for o in outs):
        assert main([*argv, flag, out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {out}: ") and f"give {flag} a " in err.lower()
    assert {**_digests(bundle), **_digests(data), **_digests(calibrated_run)} == before


def _tiny_train(data: Path, out: Path) -> list[str]:
    sets = ["model.name=pitguard_tiny", "train.epochs=1", "train.max_minutes=0", "train.threads=1"]
    argv = ["train", "--recipe", "small-fast", "--data", str(data), "--out", str(out)]
    return [*argv, *(arg for s in sets for arg in ("--set", s))]


def test_train_refuses_an_out_inside_its_data_or_holding_other_files(tmp_path, capsys):
    from pitguard.data.synth import synthesize

    data = tmp_path / "crops"
    synthesize(data, count=40, seed=1)
    kept = _digests(data)
    for out in (data, data / "run"):
        assert main(_tiny_train(data, out)) == 2
        assert f"--out {out}: " in capsys.readouterr().err
    assert _digests(data) == kept and sorted(p.name for p in data.iterdir()) == [
        "cherry_clean",
        "cherry_pit",
    ]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert main(_tiny_train(data, other)) == 2
    err = capsys.readouterr().err
    assert f"--out {other}: holds files that are no pitguard run (todo.txt)" in err
    assert os.listdir(other) == ["todo.txt"]


def test_train_reads_the_manifest_data_split_writes_as_the_readme_shows(tmp_path, capsys):
    """README walkthrough steps 2-3: `data split $DATA --out split.csv`, then `train --data
    split.csv`; the run keeps exactly the parts of that manifest."""
    from pitguard.data.manifest import read_manifest
    from pitguard.data.synth import synthesize

    data = tmp_path / "crops"
    synthesize(data, count=60, seed=4)
    manifest = tmp_path / "split.csv"
    assert main(["data", "split", str(data), "--out", str(manifest), "--seed", "3"]) == 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "pitguard data split $DATA --out split.csv" in readme
    assert "pitguard train --recipe cpu-fast --data split.csv --out runs/cpu-fast" in readme
    assert main(_tiny_train(manifest, tmp_path / "run")) == 0
    kept = {(r.path, r.label, r.split) for r in read_manifest(tmp_path / "run" / "split.csv")}
    assert kept == {(r.path, r.label, r.split) for r in read_manifest(manifest)}
