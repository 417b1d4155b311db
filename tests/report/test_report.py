import json
import shutil

import pytest

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.report import write_report
from pitguard.report.html import section_id


def test_missing_pieces_are_na_with_hints(runs, tmp_path):
    bare = tmp_path / "bare" / "c"
    bare.mkdir(parents=True)
    for name in ("model.json", "model.safetensors", "config.json"):
        shutil.copy(runs / "b" / name, bare / name)
    result = write_report([runs / "a", tmp_path / "bare"], tmp_path / "out")
    c = result["runs"][1]
    assert c["run"] == "c" and c["test"] is None and c["calibration"] is None
    assert c["vs_baseline"]["verdict"] == "not paired (different splits)"
    assert any(f"pitguard eval {bare}" in n for n in c["notes"])
    row = result["table"].splitlines()[3]
    assert row.startswith("| c |") and row.count("n/a") >= 8
    page = (tmp_path / "out" / "report.html").read_text()
    assert f'id="{section_id("c")}"' in page and "run pitguard eval" in page


def test_bad_path_names_the_path_and_the_fix(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(PitguardError, match=r"nothing_here: not a run folder and holds none"):
        write_report([empty], tmp_path / "out")
    with pytest.raises(PitguardError, match=r"missing: no such folder; give a run folder"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    assert main(["report", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "pitguard train" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_prints_table_and_honours_baseline(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out), "--baseline", "b"]) == 0
    printed = capsys.readouterr().out
    assert "| run | recipe |" in printed and str(out / "report.html") in printed
    data = json.loads((out / "experiments.json").read_text())
    assert data["baseline"] == "b"
    assert data["runs"][1]["vs_baseline"]["verdict"] == "baseline"


def test_the_pit_share_reaches_the_page_and_is_range_checked(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(runs / "a"), "--out", str(out), "--pit-share", "0.05"]) == 0
    capsys.readouterr()
    assert "(pit share 5.0%, given)" in (out / "report.html").read_text()
    data = json.loads((out / "experiments.json").read_text())
    assert "(pit share 5.0%, given)" in data["runs"][0]["test"]["plain_summary"]
    for bad in ("0", "1", "1.5", "nan"):
        with pytest.raises(SystemExit) as exit_:
            main(["report", str(runs / "a"), "--out", str(tmp_path / "x"), "--pit-share", bad])
        assert exit_.value.code == 2
        assert "--pit-share" in capsys.readouterr().err
    with pytest.raises(PitguardError, match="strictly between 0 and 1"):
        write_report([runs / "a"], tmp_path / "y", pit_share=1.0)


def test_fields_and_run_names_are_escaped_and_commands_quoted(runs, tmp_path):
    hostile = "x <img src=y onerror=alert(1)> $(touch z)"
    run = shutil.copytree(runs / "a", tmp_path / "runs" / hostile)
    policy = json.loads((run / "policy.json").read_text())
    policy["calibration_data"]["n"] = "<script>alert(1)</script>"
    (run / "policy.json").write_text(json.dumps(policy))
    bare = tmp_path / "runs" / "b c"
    bare.mkdir()
    for name in ("model.json", "model.safetensors", "config.json"):
        shutil.copy(runs / "b" / name, bare / name)
    result = write_report([tmp_path / "runs"], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert "<img src=y" not in page
    markdown = (tmp_path / "out" / "experiments.md").read_text()
    assert "<img src=y" not in markdown and "&lt;img src=y" in markdown
    notes = [n for r in result["runs"] for n in r["notes"]]
    assert any(f"pitguard eval '{bare}'" in n for n in notes), notes


def test_a_corrupt_run_is_listed_and_skipped_not_fatal(runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(runs / "a", root / "a")
    broken = shutil.copytree(runs / "a", root / "broken")
    (broken / "policy.json").write_text('{"policy": ')
    result = write_report([root], tmp_path / "out")
    assert [r["run"] for r in result["runs"]] == ["a"]
    assert len(result["skipped"]) == 1 and "broken" in result["skipped"][0]
    assert "unreadable JSON" in result["skipped"][0]
    assert "Not read:" in (tmp_path / "out" / "experiments.md").read_text()
    with pytest.raises(PitguardError, match=r"the baseline .*broken cannot be read"):
        write_report([root], tmp_path / "out2", baseline=broken)
