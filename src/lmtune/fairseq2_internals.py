"""Every place lmtune reaches into fairseq2's private attributes or swaps one of its methods.

This is the one home of fairseq2 internals, each behind ``check_version()``, so a fairseq2
upgrade is one review of this file and another version fails in one sentence instead of
silently. (Another branch grows the full version of this module; this one holds the
gradient-clipping hook of ``lmtune.training.grad_stats`` and merges into it.)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.trainer import Trainer
    from torch import Tensor

WRITTEN_FOR = "0.8.1"
"""The fairseq2 version whose internals this module was written against (and tested with)."""


@cache
def installed_version() -> str | None:
    try:
        return version("fairseq2")
    except PackageNotFoundError:
        return None


def check_version() -> None:
    """Raises one sentence when the installed fairseq2 is not the version these internals were written for."""
    found = installed_version()
    if found != WRITTEN_FOR:
        installed = f"fairseq2 {found} is installed" if found is not None else "fairseq2 is not installed"
        raise UserError(f"lmtune's use of fairseq2's internals was written for fairseq2 {WRITTEN_FOR}, and {installed}; install fairseq2=={WRITTEN_FOR}.")


# ------------------------------------------------------------ the trainer


def call_before_grad_clip(trainer: Trainer, before: Callable[[], None]) -> None:
    """Calls ``before()`` in each step once the gradients are final (normalized by the target
    count, unscaled) and before fairseq2 0.8.1's trainer clips them and the optimizer zeroes them:
    its ``_do_run_step`` computes ``grad_norm`` through ``self._model_dp_facade.clip_grad_norm``."""
    check_version()
    facade = trainer._model_dp_facade  # noqa: SLF001
    clip = facade.clip_grad_norm

    def clip_after(max_norm: float | None) -> Tensor:
        before()
        return clip(max_norm)

    facade.clip_grad_norm = clip_after  # type: ignore[method-assign]  # an instance attribute: only this trainer's facade is swapped
