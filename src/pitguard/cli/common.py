"""Helpers every verb shares: the verb parser with its examples, decode options, --json output."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.config import ModeRule, SizeRule, choices  # no torch: help stays light
from pitguard.core.errors import PitguardError

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


def number(
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str,
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within the bounds; anything else (nan, inf, out of
    range) is refused by argparse naming the flag, with ``hint`` saying what to give (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {hint}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text}: give {hint}")
        return value

    return parse


# The numeric options verbs share, checked while the command line is read.
COUNT = number(int, 1, hint="a whole number, 1 or more")
THREADS = number(int, 0, hint="a whole number of threads, 0 for all cores")
SHARE = number(float, 0, 1, hint="a share between 0 and 1")
OPEN_SHARE = number(
    float, 0, 1, low_open=True, high_open=True, hint="a number strictly between 0 and 1"
)
CROP_SIDE = number(int, 8, hint="a crop side of 8 px or more")


def check_out(
    out: str | None,
    flag: str,
    inputs: Iterable[str | Path | None] = (),
    *,
    folder: bool = False,
    runs: bool = True,
) -> None:
    """Refuse, before any work, an output path that would destroy what pitguard reads: one of
    ``inputs`` or a path inside an input folder, a path inside a bundle folder, or (``runs``)
    one of a run folder's own files. ``folder``: OUT is a folder the verb writes into, so OUT
    itself may not be a bundle either."""
    if not out:
        return
    from pitguard.core.files import check_output_path

    target = Path(os.path.realpath(out))
    around = [target, *target.parents] if folder else list(target.parents)
    protected = _bundles(around) + (_run_files(around) if runs else [])
    check_output_path(out, inputs=[i for i in inputs if i], forbidden_dirs=protected, flag=flag)


def _bundles(folders: list[Path]) -> list[tuple[Path, str]]:
    from pitguard.runtime.bundle import BUNDLE_JSON

    return [(f, "a bundle folder") for f in folders if (f / BUNDLE_JSON).is_file()]


def _run_files(folders: list[Path]) -> list[tuple[Path, str]]:
    """The files and folders of each run among ``folders`` that only pitguard writes (its
    bench.json excepted: ``pitguard bench --json RUN/bench.json`` is how a run gets one)."""
    from pitguard.models.runfolder import RunPaths, is_run

    out: list[tuple[Path, str]] = []
    for folder in folders:
        run = RunPaths(folder)
        if not (is_run(folder) or run.last_checkpoint.is_file() or run.crossfit.is_file()):
            continue
        own = [run.config, run.data, run.split, run.model, run.weights, run.policy, run.summary]
        own += [run.history_jsonl, run.history_csv, run.curves, run.augment_grid, run.crossfit]
        own += [run.oof, run.checkpoints, run.evals, run.calibration, run.thresholds, run.folds]
        out += [(path, f"the run folder {folder}'s own {path.name}") for path in own]
    return out


def run_data(run: str | Path) -> str | None:
    """The data a run was trained on (its config's data.path), when it is still there."""
    from pitguard.core.files import read_json
    from pitguard.models.runfolder import RunPaths

    try:
        config = read_json(RunPaths(Path(run)).config) or {}
    except PitguardError:
        return None  # a damaged config is the verb's own error to report
    path = (config.get("data") or {}).get("path")
    return path if path and Path(path).exists() else None


def write_json_out(obj: dict, path: str | None) -> None:
    """Write ``obj`` to the ``--json`` path when one was given, and say so."""
    if path:
        from pitguard.core.files import write_json

        write_json(path, obj)
        print(f"wrote {path}")


def add_decode_args(parser: argparse.ArgumentParser) -> None:
    """The options that say how crops are found and decoded (audit and split share them)."""
    parser.add_argument(
        "--size", type=CROP_SIDE, default=128, help="expected crop side in px (default 128)"
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
