"""Helpers every verb shares: the verb parser with its examples, decode options, --json output."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from pitguard.config import ModeRule, SizeRule, choices  # no torch: help stays light

if TYPE_CHECKING:
    from typing import TypeAlias

    Verbs: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]


EXIT_CODES = (
    "exit status: 0 done; 1 done, but some inputs failed (each listed); 2 bad usage, config or "
    "input, found before any work; 3 could not read or write a file, or crashed; 130 "
    "interrupted (Ctrl-C), 143 terminated (SIGTERM)"
)


def examples(*lines: str) -> str:
    """The epilog that ends every verb's ``--help``: examples, then the exit statuses."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EXIT_CODES


def verb(
    sub: Verbs, name: str, help_text: str, example_lines: list[str], handler: Handler
) -> argparse.ArgumentParser:
    """A verb's parser: its one-line help, its examples and the handler it runs."""
    parser = sub.add_parser(
        name,
        # argparse %-formats a sub-command's help in the verb list ("95% intervals" would
        # crash `pitguard --help`); a description is shown as written unless it names %(prog)s.
        help=help_text.replace("%", "%%"),
        description=help_text,
        epilog=examples(*example_lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def write_json_out(obj: dict, path: str | None) -> None:
    """Write ``obj`` to the ``--json`` path when one was given, and say so."""
    if path:
        from pitguard.files import write_json

        write_json(path, obj)
        print(f"wrote {path}")


def add_decode_args(parser: argparse.ArgumentParser) -> None:
    """The options that say how crops are found and decoded (audit and split share them)."""
    parser.add_argument(
        "--size", type=int, default=128, help="expected crop side in px (default 128)"
    )
    parser.add_argument(
        "--modes",
        choices=choices(ModeRule),
        default="skip",
        help="non-RGB files: skip and list them (default), or convert "
        "(L/I;16 gray replicated, alpha multiplied in, palette expanded)",
    )
    parser.add_argument(
        "--sizes",
        choices=choices(SizeRule),
        default="skip",
        help="crops of another size: skip and list them (default), resize, or centre-pad/crop",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file")
    parser.add_argument(
        "--classes",
        metavar="MAP",
        help="map folder or label names to classes, e.g. good=clean,bad=pit,unsure=maybe",
    )


def decode_options(args: argparse.Namespace):
    """The :class:`DecodeOptions` of ``add_decode_args``' options."""
    from pitguard.data.load import DecodeOptions

    return DecodeOptions(size=args.size, modes=args.modes, sizes=args.sizes, strict=args.strict)


def dataset_index(args: argparse.Namespace):
    """The dataset ``args.data`` names, its classes mapped by ``--classes``."""
    from pitguard.data.layout import find_dataset, parse_class_mapping

    return find_dataset(args.data, parse_class_mapping(args.classes))
