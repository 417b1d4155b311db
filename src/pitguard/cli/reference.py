"""The CLI reference page, generated from the parsers themselves (never written by hand).

    python -m pitguard.cli.reference docs/cli.md

``make docs`` writes it before the site is built, so every verb's options, help and examples are
the ones ``--help`` prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _verbs(
    parser: argparse.ArgumentParser, prefix: str
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every verb under ``parser``, depth first, in the order ``--help`` lists them."""
    found = []
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub))
                found += _verbs(sub, f"{prefix} {name}")
    return found


def markdown() -> str:
    """The whole reference: the command's own help, then one section per verb."""
    from pitguard.cli import build_parser

    parser = build_parser()
    parts = [
        "# CLI reference",
        "",
        "Generated from the parsers by `python -m pitguard.cli.reference`: what `--help` prints.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, sub in _verbs(parser, "pitguard"):
        parts += ["", f"## {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pitguard.cli.reference OUT.md", file=sys.stderr)
        return 2
    Path(args[0]).write_text(markdown())
    print(f"wrote {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
