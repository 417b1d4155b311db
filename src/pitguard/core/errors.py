"""Errors a user can fix; the CLI prints them and exits 2."""

from __future__ import annotations


class PitguardError(Exception):
    """A problem with the user's input: says what is wrong, where, and what to do."""


class ConfigError(PitguardError):
    """One or more bad settings, all listed at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class Diverged(PitguardError):
    """Training's loss went NaN or infinite: the settings (the learning rate), not the data."""
