"""One logger hierarchy, ``pitguard.*`` (as timm's and Ultralytics' loggers): library code logs
and never prints; the command line decides what reaches the terminal.

A library user of ``pitguard.load`` or ``train`` hears nothing below a warning unless they
configure logging (``logging.getLogger("pitguard").setLevel(logging.INFO)`` with a handler);
the ``pitguard`` command shows INFO (progress lines, epochs, what was chosen), ``-q`` only
warnings and errors, ``-v`` debug detail too. Progress bars follow the same level.
"""

from __future__ import annotations

import logging
import sys

ROOT = "pitguard"


class _Stdout(logging.Handler):
    """Writes to whatever ``sys.stdout`` is when a record comes (a test's capture too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # logging's own contract: a handler never raises
            self.handleError(record)


def configure(verbosity: int = 0) -> None:
    """What the command shows: INFO at 0, warnings and errors at -1 (``-q``), DEBUG at 1
    (``-v``); called again, it replaces its own handler."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _Stdout)]:
        logger.removeHandler(handler)
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(
        logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity else logging.INFO
    )
    logger.propagate = False


def quiet() -> None:
    """Only warnings and errors from here on in this process (a rank other than 0)."""
    logging.getLogger(ROOT).setLevel(logging.WARNING)


def shows_progress() -> bool:
    """Whether progress lines would reach anyone: the hierarchy is enabled for INFO."""
    return logging.getLogger(ROOT).isEnabledFor(logging.INFO)
