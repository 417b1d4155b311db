import re


def test_markdown_has_one_row_per_run(report):
    _, out = report
    text = (out / "experiments.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | recipe | arch | params | size | accuracy [95% CI]")
    body = rows[1:]
    assert [r.split(" | ")[0] for r in body] == ["| a", "| b"]
    assert "n/a" in body[1]  # b: no calibration, no bench
    assert "baseline" in body[0] and re.search(r"noise", body[1])
