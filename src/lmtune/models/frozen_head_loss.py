"""Cross-entropy through a frozen LM head, a chunk of rows at a time, its gradient taken in the forward.

In a LoRA run the head (often tied to the embedding) is frozen, so backward needs one thing
from the loss: its gradient with respect to the decoder output. For the summed NLL that is
``(softmax(h W^T) - onehot(target)) W`` per row, computable as soon as the logits are. This
loss works through the rows in chunks: logits, log-sum-exp, loss, that gradient; then the
chunk's logits are dropped. Autograd keeps only the (rows x model_dim) gradient instead of
the (rows x vocabulary) logits and log-probabilities, 60x smaller for Llama 3 (128,256 / 2,048).
The matrix products are the ones autograd would do (the logits, then the input gradient).
Under autocast they take the weight cast to autocast's dtype once, where autocast would cast the
(vocabulary x model_dim) weight again in both products of every chunk: the same values, and for
Llama-3.2-1B's tied head on CPU 0.6 s of a 10 s LoRA step saved (bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

CHUNK_ROWS = 256


class _FrozenHeadNll(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            compute = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return _FrozenHeadNll.forward(ctx, hidden, weight.to(compute), targets, ignore_index)
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            h, t = hidden[start : start + CHUNK_ROWS], targets[start : start + CHUNK_ROWS]
            logits = torch.nn.functional.linear(h.to(weight.dtype), weight).float()
            lse = torch.logsumexp(logits, dim=-1)
            kept = t != ignore_index
            rows = torch.arange(t.shape[0], device=t.device)
            safe = t.masked_fill(~kept, 0)
            loss += ((lse - logits[rows, safe]) * kept).sum()
            grad_logits = logits.sub_(lse.unsqueeze(-1)).exp_()  # softmax, in place of the logits
            grad_logits[rows, safe] -= 1.0
            grad_logits.mul_(kept.unsqueeze(-1))
            grad_hidden[start : start + CHUNK_ROWS] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None


def frozen_head_nll(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """Summed NLL of ``targets`` under ``hidden @ weight.T`` (rows whose target is ``ignore_index``
    count nothing); ``weight`` must not require a gradient."""
    assert not weight.requires_grad
    return _FrozenHeadNll.apply(hidden, weight, targets, ignore_index)
