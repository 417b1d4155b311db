"""The ``pitguard`` command: one thin verb per pipeline stage, and the errors it reports."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import textwrap
import threading
import traceback

from pitguard import __version__
from pitguard.core.errors import PitguardError
from pitguard.core.log import configure

try:
    from pitguard.cli import check_verbs, data_verbs, deploy_verbs, study_verbs, train_verbs
    from pitguard.cli.common import examples
except ModuleNotFoundError as missing:  # the base install is the line's runtime alone
    MISSING: str | None = missing.name
else:  # the verbs' modules import without torch (the ROS extra brings pyyaml): ask for it
    MISSING = None if importlib.util.find_spec("torch") else "torch"
NEEDS_TRAIN = MISSING and (
    f"the pitguard command needs the training install ({MISSING} is missing): pip "
    "install 'pitguard[train]'; this install is the line's runtime (pitguard.runtime)"
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, verbs in pipeline order; builds without importing any stage."""
    parser = argparse.ArgumentParser(
        prog="pitguard",
        description="Train, check and ship the cherry pit crop classifier.",
        epilog=examples(
            "pitguard data audit ../shared/data/cherry_classification/train --json audit.json",
            "pitguard data split ../shared/data/cherry_classification/train --out split.csv",
            "pitguard demo",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pitguard {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-q", "--quiet", action="store_const", const=-1, dest="verbosity", default=0,
        help="only warnings and errors (no progress, no epoch lines); results still print",
    )  # fmt: skip
    talk.add_argument(
        "-v", "--verbose", action="store_const", const=1, dest="verbosity",
        help="debug detail as well",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    data_verbs.add_verbs(sub)
    train_verbs.add_verbs(sub)
    check_verbs.add_verbs(sub)
    deploy_verbs.add_verbs(sub)
    study_verbs.add_verbs(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit statuses (``EXIT_CODES``): 0 done, 1 some inputs failed, 2 a
    :class:`PitguardError` (usage, config or input), 3 a file that could not be read or written,
    or a crash; 130/143 interrupted or terminated."""
    if NEEDS_TRAIN:
        print(f"error: {NEEDS_TRAIN}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for verbs that relaunch themselves
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure(args.verbosity)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # a service stop ends like Ctrl-C, said so
    try:
        return int(args.handler(args) or 0)
    except PitguardError as exc:
        print("error: " + textwrap.indent(str(exc), "  ").lstrip(), file=sys.stderr)
        return 2
    except OSError as exc:  # a path that is a file, read-only, a full disk, a vanished file
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"error: {where}{exc.strerror or exc}; check the path, its permissions and the free "
            "space, then run the same command again",
            file=sys.stderr,
        )
        return 3
    except Exception:
        traceback.print_exc()
        print(
            "error: pitguard crashed (the traceback above); nothing it had finished writing is "
            "lost, and a report of the command and traceback helps",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(("terminated" if terminated else "interrupted") + _resume_hint(args), file=sys.stderr)
        return 143 if terminated else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the work is so it stops the way Ctrl-C does."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _resume_hint(args: argparse.Namespace) -> str:
    """For train: how to go on, or that nothing was saved yet."""
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    if getattr(args, "verb", None) != "train" or not run:
        return ""
    from pitguard.models.runfolder import RunPaths  # only once interrupted: help stays light

    if RunPaths(run).last_checkpoint.is_file():
        return f"; continue with: pitguard train --resume {run}"
    return "; no epoch was saved yet, so there is nothing to resume: run the same command again"
