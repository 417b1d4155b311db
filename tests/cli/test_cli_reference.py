"""The CLI reference page is generated from the parsers: every verb, with what --help prints."""

from __future__ import annotations

from pitguard.cli import build_parser
from pitguard.cli.reference import _verbs, main, markdown


def test_every_verb_has_a_section_with_its_own_help(tmp_path):
    page = markdown()
    verbs = _verbs(build_parser(), "pitguard")
    assert len(verbs) > 15
    for name, parser in verbs:
        assert f"\n## {name}\n" in page
        assert parser.format_help().rstrip() in page
    assert "## pitguard data audit" in page and "## pitguard calibrate" in page
    assert main([str(tmp_path / "cli.md")]) == 0
    assert (tmp_path / "cli.md").read_text() == page
