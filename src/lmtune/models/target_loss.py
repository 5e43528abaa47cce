"""The training loss with the LM head run on the target positions alone.

fairseq2's ``TransformerLM`` projects every position to the vocabulary and then masks the
loss to the targets. In instruction fine-tuning most positions are prompt: their logits
are computed, kept for the backward pass and thrown away. For a Llama 3 shape the
128,256-wide head is a fifth of the model's matrix products, and a 512-token row's
logits, log-probabilities and their gradient take about 0.75 GiB in float32.

This loss gathers the decoder output at the target positions first, so the head and the
softmax see those rows only. The sum is the same sum over the same tokens (fairseq2's
``cross_entropy``, pad targets still ignored), and rows without a target get no gradient
either way. It is installed where fairseq2 installs its own compiled loss
(``TransformerLM.compile_loss`` replaces ``compute_fused_loss``), so it runs inside the
model's forward, under DDP and FSDP alike. A frozen head (LoRA) goes further: its logits are
dropped chunk by chunk as soon as the loss and its gradient are known
(``lmtune.models.frozen_head_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

from torch import Tensor
from torch.nn import Module

from lmtune.fairseq2_internals import replace_fused_loss

if TYPE_CHECKING:
    from fairseq2.models.transformer_lm import TransformerLM


def use_target_only_loss(model: Module) -> None:
    """Makes ``model`` (a fairseq2 TransformerLM) compute its training loss on target rows only. The
    transformers-backed wrapper (``lmtune.models.transformers_family``) computes its own loss and is left alone."""
    if not hasattr(model, "compute_fused_loss"):
        return
    replace_fused_loss(model, lambda full_loss: _target_only_loss(model, full_loss))


def _target_only_loss(model: Module, full_loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    lm = cast("TransformerLM", model)  # the recipe's hook hands over a Module; Llama and Qwen are TransformerLMs

    def target_only_loss(
        decoder_output: Tensor,
        targets: Tensor,
        *,
        label_smoothing: float = 0.0,
        target_mask: Tensor | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> Tensor:
        if target_mask is None or reduction not in ("sum", "mean"):
            return full_loss(decoder_output, targets, label_smoothing=label_smoothing, target_mask=target_mask, reduction=reduction)
        import torch
        from fairseq2.nn.functional import cross_entropy

        rows = target_mask.bool()
        hidden, picked = decoder_output[rows], targets[rows]
        head = lm.final_proj
        if label_smoothing == 0.0 and getattr(head, "bias", None) is None and not head.weight.requires_grad and torch.is_grad_enabled():
            # A frozen head (LoRA): its logits need not outlive the loss (lmtune.models.frozen_head_loss).
            from lmtune.models.frozen_head_loss import frozen_head_nll

            ignore = -100 if lm.pad_idx is None else lm.pad_idx
            assert isinstance(head.weight, Tensor)  # Projection declares no weight; Linear and TiedProjection have one
            loss = frozen_head_nll(hidden, head.weight, picked, ignore)
            return loss if reduction == "sum" else loss / (picked != ignore).sum()
        logits = head(hidden)  # (targets, vocab)
        return cross_entropy(logits, picked, lm.pad_idx, label_smoothing=label_smoothing, reduction=reduction)

    return target_only_loss
