"""The command line's help: every verb's --help works and ends in examples, and costs no torch."""

from __future__ import annotations

import argparse
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
    ["export"],
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

    from pitguard import train as train_module

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
    assert "name: pitguard_tiny" in out and "max_minutes: 9.5" in out
    assert "estimate: " in out and "nothing trained" in out
    assert not (tmp_path / "r").exists()


def test_a_run_without_a_budget_says_how_long_the_rest_will_take(synth_dir, tmp_path, capsys):
    from pitguard.config import load_config
    from pitguard.train import train

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
