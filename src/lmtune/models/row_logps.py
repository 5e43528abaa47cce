"""Preference tuning's log-probs with the LM head run on the response positions alone.

A preference step needs, per sequence, the summed log-prob of its response tokens. Projecting
every position to the vocabulary and then picking the response rows keeps the whole batch's
logits (positions x vocabulary, float32) and their gradient alive through the backward pass:
for a Llama 3 head that is about 0.5 MiB per position, most of a step's activations. SFT already
avoids it (``lmtune.models.target_loss``); this does the same for the preference criteria, so a
DPO step over the chosen and rejected sequences holds what an SFT step over the same sequences
holds (bench/preference_memory_bench.py).

Installed where fairseq2 installs its fused loss (``compute_fused_loss``), so the head runs inside
the model's forward under DDP and FSDP alike: ``model(seqs, layout, targets=..., target_mask=...)``
returns, instead of a summed NLL, the log-prob of each masked row's target, in position order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor
from torch.nn import Module

from lmtune.fairseq2_internals import replace_fused_loss

MARK = "_lmtune_row_logps"


def use_row_logps(model: Module) -> None:
    """Makes ``model`` (a fairseq2 TransformerLM) answer a call with targets with per-row log-probs; idempotent."""
    if getattr(model, MARK, False):
        return
    replace_fused_loss(model, lambda full_loss: _row_logps(model))
    setattr(model, MARK, True)


def has_row_logps(model: Module) -> bool:
    """Whether ``model`` (or the model a DDP wrapper holds) answers with per-row log-probs."""
    return bool(getattr(model, MARK, False) or getattr(getattr(model, "module", None), MARK, False))


def _row_logps(model: Module) -> Callable[..., Tensor]:
    def row_logps(decoder_output: Tensor, targets: Tensor, *, label_smoothing: float = 0.0, target_mask: Tensor | None = None, reduction: str = "sum") -> Tensor:
        if target_mask is None:
            raise ValueError("row log-probs need a target mask")
        rows = target_mask.bool()
        logits = cast(Module, model.final_proj)(decoder_output[rows])  # (rows, vocab)
        return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[rows].unsqueeze(1)).squeeze(1)

    return row_logps
