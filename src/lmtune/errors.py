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


def did_you_mean(word: str, choices: Iterable[str], see: str = "lmtune assets list") -> str:
    """The closest choices, or all of them when few, or their number and ``see``: the command that lists them."""
    choices = sorted(set(choices))
    near = closest(word, choices)
    if near:
        return "did you mean " + " or ".join(repr(c) for c in near) + "?"
    if len(choices) <= 12:
        return "valid: " + ", ".join(choices) + "."
    return f"{len(choices)} are known (see `{see}`)."


def explain_checkpoint_mismatch(ex: BaseException) -> str | None:
    """One sentence for fairseq2's "checkpoint is not compatible" errors, else None.

    They happen when a card's checkpoint holds another architecture than the card
    says (another size, another family); fairseq2 lists every mismatched tensor.
    """
    if type(ex).__name__ != "CorruptModelCheckpointError":
        return None
    path = getattr(ex, "path", None)
    details = str(ex.__cause__ or "")
    first, _, rest = details.partition(". ")
    more = rest.count(" in the checkpoint") + rest.count("missing in the checkpoint")
    where = f" at {path}" if path else ""
    detail = f" ({first.rstrip('.')}{f', and {more} more' if more else ''})" if first else ""
    return f"the checkpoint{where} does not fit the model's architecture{detail}; check the card's model_arch / model_config, or point its checkpoint: at weights of that architecture."


def explain_checkpoint_error(ex: BaseException) -> str | None:
    """One sentence for fairseq2's CheckpointError (a training checkpoint that cannot be read on resume), else None.

    lmtune.run_dir.check_resume_checkpoint catches a file cut short before fairseq2 starts; this is for
    damage it cannot see (a whole archive with wrong contents)."""
    if type(ex).__name__ != "CheckpointError":
        return None
    root = ex
    while root.__cause__ is not None:  # the innermost error says what is wrong with the file
        root = root.__cause__
    cause = f" ({str(root).strip().splitlines()[0]})" if root is not ex and str(root).strip() else ""
    step = getattr(ex, "step_nr", None)
    return f"{str(ex).rstrip('.')}{cause}, so the run cannot resume from step {step}; delete that step's directory to resume from the checkpoint before it, or start afresh in a new OUT."
