"""The keys that instrument a training run, shared by ``instruction_finetune`` and ``pretrain``:
``warmup_ratio``, ``grad_stats`` and the ``profiler`` section; their checks and the warmup they give.

Kept free of heavy imports so ``--help`` and ``--dump-config`` answer at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from lmtune.errors import UserError


@dataclass(kw_only=True)
class ProfilerOptions:
    """PyTorch's profiler over a window of steps (fairseq2's common.profilers.torch schedule): Chrome traces in OUT/profile/ and the top operators on the console."""

    enabled: bool = False
    """Profile the steps of the window below; off: no profiler at all."""
    skip_n_steps: int = 4
    """Steps run unprofiled first (start-up, the first batches)."""
    wait_n_steps: int = 0
    """Then steps without recording, at the start of each cycle."""
    num_warmup_steps: int = 1
    """Then steps recorded and thrown away (the profiler's own warmup)."""
    num_active_steps: int = 4
    """Then steps recorded into one trace file."""
    repeat: int = 1
    """Cycles of wait + warmup + active steps; each writes its own trace."""


def warmup_steps(o: Any) -> int:
    """The warmup in steps: ``ceil(warmup_ratio * max_num_steps)`` when warmup_ratio is set (the rounding
    of transformers' ``get_warmup_steps``), else ``lr_scheduler.num_warmup_steps``."""
    if o.warmup_ratio is not None and o.max_num_steps is not None:
        return math.ceil(o.warmup_ratio * o.max_num_steps)
    return int(o.lr_scheduler.num_warmup_steps)


def check_instrument_options(o: Any) -> None:
    """One sentence for a warmup_ratio or profiler value that cannot work."""
    r = o.warmup_ratio
    if r is not None:
        if not 0 <= r < 1:
            raise UserError(f"config key 'warmup_ratio' must be at least 0 and below 1 (a share of max_num_steps), got {r}.")
        default = next(f.default for f in fields(type(o.lr_scheduler)) if f.name == "num_warmup_steps")
        if o.lr_scheduler.num_warmup_steps != default:
            raise UserError(
                f"config keys 'warmup_ratio' ({r}) and 'lr_scheduler.num_warmup_steps' ({o.lr_scheduler.num_warmup_steps}) both set the warmup; "
                f"keep one (lr_scheduler.num_warmup_steps={default} leaves it to warmup_ratio)."
            )
        if o.max_num_steps is None:
            raise UserError("config key 'warmup_ratio' is a share of max_num_steps, which is not set; set max_num_steps or use lr_scheduler.num_warmup_steps.")
    p = o.profiler
    for key in ("skip_n_steps", "wait_n_steps", "num_warmup_steps"):
        if getattr(p, key) < 0:
            raise UserError(f"config key 'profiler.{key}' must be 0 or more, got {getattr(p, key)}.")
    for key in ("num_active_steps", "repeat"):
        if getattr(p, key) < 1:
            raise UserError(f"config key 'profiler.{key}' must be at least 1, got {getattr(p, key)}.")
