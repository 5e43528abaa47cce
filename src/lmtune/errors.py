"""The one error type users see: a sentence naming what is wrong and what is valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input. The CLI prints the message on one line and exits with status 2."""


class RunFailed(Exception):
    """A run failed for a reason outside lmtune (a lost peer, a dead node). Exit status 1, no traceback."""


class Stopped(Exception):
    """A run stopped on request after writing a checkpoint; the CLI exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(set(choices))
    near = closest(word, choices)
    if near:
        return "did you mean " + " or ".join(repr(c) for c in near) + "?"
    if len(choices) <= 12:
        return "valid: " + ", ".join(choices) + "."
    return f"{len(choices)} are known (see `lmtune assets list`)."
