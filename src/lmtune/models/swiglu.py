"""The gated feed-forward of Llama and Qwen, keeping two activations for backward instead of three.

fairseq2's ``GLUFeedForwardNetwork`` computes ``silu(gate_proj(x)) * inner_proj(x)`` with two
autograd ops: SiLU keeps its input and the product keeps both its operands, so each layer
holds three tensors of the feed-forward width (3 x 16 MiB per 512 tokens for a Llama-3.2-1B)
until its backward. ``silu_mul`` keeps the gate's input and the inner projection only and
recomputes the SiLU in backward (an elementwise pass, next to nothing beside the matrix
products). Same values, same gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Module, SiLU

from lmtune.fairseq2_internals import replace_forward

if TYPE_CHECKING:
    from fairseq2.models.transformer.ffn import GLUFeedForwardNetwork


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: Tensor, inner: Tensor) -> Tensor:
        ctx.save_for_backward(gate, inner)
        return torch.nn.functional.silu(gate) * inner

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        gate, inner = ctx.saved_tensors
        grad_inner = grad * torch.nn.functional.silu(gate)
        # What autograd computes for silu(gate) * inner: the product's gradient, then SiLU's.
        grad_gate = torch.ops.aten.silu_backward(grad * inner, gate)
        return grad_gate, grad_inner


def silu_mul(gate: Tensor, inner: Tensor) -> Tensor:
    """``silu(gate) * inner``, keeping ``gate`` and ``inner`` for backward."""
    return _SiluMul.apply(gate, inner)


def _glu_forward(ffn: GLUFeedForwardNetwork, seqs: Tensor) -> Tensor:
    out = silu_mul(ffn.gate_proj(seqs), ffn.inner_proj(seqs))
    if ffn.inner_dropout is not None:
        out = ffn.inner_dropout(out)
    return ffn.output_proj(out)


def use_lean_swiglu(model: Module) -> int:
    """Gives every SiLU-gated GLU feed-forward of ``model`` the two-tensor forward; returns how many."""
    from fairseq2.models.transformer.ffn import GLUFeedForwardNetwork

    count = 0
    for module in model.modules():
        if type(module) is GLUFeedForwardNetwork and isinstance(module.gate_activation, SiLU) and module.activation_sparsity == 0.0:
            replace_forward(module, _glu_forward)
            count += 1
    return count
