"""Attention for packed batches that costs what the examples cost, not the pack.

A packed batch is one flat sequence of many examples. fairseq2 gives each
example its own positions and, with its PyTorch SDPA, a block-diagonal causal
mask over the whole flat sequence: correct, but attention then computes every
token against every other token of the batch (S^2 for S = max_num_tokens),
almost all of it masked away. Flash attention's variable-length kernel skips
those blocks on GPU; this module does the same with plain PyTorch on any
device: each example attends to itself with causal SDPA, and the results are
put back in place. Unpacked batches go to fairseq2's TorchSDPA unchanged.
"""

from __future__ import annotations

from typing import final

import torch
from fairseq2.models.transformer.attention_bias import (
    AttentionBias,
    AttentionBiasCache,
    CausalAttentionBias,
)
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.models.transformer.sdpa.torch import TorchSDPA
from fairseq2.nn import BatchLayout
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention
from typing_extensions import override


@final
class DocumentSDPA(SDPA):
    """Causal attention within each example of a packed batch; TorchSDPA otherwise."""

    def __init__(self, bias: AttentionBias, *, dropout_p: float = 0.0, scale: float | None = None) -> None:
        super().__init__()
        self.bias = bias
        self.dropout_p = dropout_p
        self.scale = scale
        self.unpacked = TorchSDPA(bias, dropout_p=dropout_p, scale=scale)

    def _handles(self, q_layout: BatchLayout, k_layout: BatchLayout) -> bool:
        causal = isinstance(self.bias, CausalAttentionBias) and self.bias.attn_window_len is None
        # Self-attention over a packed batch: queries and keys are the same examples.
        return causal and q_layout.packed and k_layout.packed and list(q_layout.seq_lens) == list(k_layout.seq_lens)

    @override
    def forward(
        self,
        q: Tensor,
        q_layout: BatchLayout,
        k: Tensor,
        k_layout: BatchLayout,
        v: Tensor,
        bias_cache: AttentionBiasCache,
        *,
        needs_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if needs_weights or not self._handles(q_layout, k_layout):
            return self.unpacked(q, q_layout, k, k_layout, v, bias_cache, needs_weights=needs_weights)

        dropout_p = self.dropout_p if self.training else 0.0
        lens = list(q_layout.seq_lens)
        # Packed tensors are (S, H, K); SDPA wants (1, H, L, K) per example (4-D takes
        # PyTorch's fused CPU kernel; 3-D falls back to the unfused math path).
        outputs = []
        for qi, ki, vi in zip(q.split(lens), k.split(lens), v.split(lens)):
            qi, ki, vi = (x.transpose(0, 1).unsqueeze(0) for x in (qi, ki, vi))
            out = scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout_p, is_causal=True, scale=self.scale)
            outputs.append(out.squeeze(0).transpose(0, 1))
        attns = torch.cat(outputs)
        return attns, None

    @override
    def extra_repr(self) -> str:
        return f"bias={self.bias}, dropout_p={self.dropout_p:G}"
