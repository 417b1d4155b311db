"""Tests for pitguard.cli.demo: its output folder can be written again, and nothing else is touched."""

import pytest

from pitguard.cli.demo import prepare_out
from pitguard.core.errors import PitguardError


def test_an_earlier_demo_is_replaced(tmp_path, capsys):
    out = tmp_path / "demo-out"
    (out / "run" / "checkpoints").mkdir(parents=True)
    (out / "audit.json").write_text("{}")
    prepare_out(out)
    assert out.is_dir() and list(out.iterdir()) == []
    assert "replacing the earlier demo" in capsys.readouterr().out
    prepare_out(tmp_path / "new")  # a new folder is made
    assert (tmp_path / "new").is_dir()


def test_a_folder_holding_other_files_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    (out / "run").mkdir(parents=True)
    (out / "thesis.tex").write_text("x")
    with pytest.raises(PitguardError, match=r"holds thesis.tex, which pitguard demo did not write"):
        prepare_out(out)
    assert (out / "thesis.tex").read_text() == "x" and (out / "run").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PitguardError, match=r"file: is a file"):
        prepare_out(tmp_path / "file")
