"""Attention for packed batches that costs what the examples cost, not the pack.

A packed batch is one flat sequence of many examples. fairseq2 gives each
example its own positions and, with its PyTorch SDPA, a block-diagonal causal
mask over the whole flat sequence: correct, but attention then computes every
token against every other token of the batch (S^2 for S = max_num_tokens),
almost all of it masked away. Flash attention's variable-length kernel skips
those blocks on GPU; this module does the same with plain PyTorch on any
device: each example attends to itself with causal SDPA, and the results are
put back in place. Unpacked batches go to fairseq2's TorchSDPA unchanged.

On CPU, where SDPA would run its fused flash kernel anyway, the loop over examples
runs inside one autograd function that calls that kernel and its backward directly
(``PackedCausalAttention``), and examples of one length share one call: the same
kernels on the same rows, so the same bits, without the ~10 view and autograd nodes
per example and layer that the plain loop records. On small models with many short
examples those per-call costs were about what packing saves in padding (issue 23).
Under CPU autocast (``dtype=auto``'s bf16) the packed examples still take this path, in
float32: SDPA would cast them to bf16 and run one call per example, and the CPU kernels'
bf16 backward took twice float32's time on the demo's batches (attention is a small share
of a step's FLOPs, so float32 costs nothing in speed and keeps the softmax exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, final

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
from torch.nn.attention import SDPBackend
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
        lens = [int(n) for n in q_layout.seq_lens]
        if _under_cpu_autocast(q) and _KERNELS_KNOWN and dropout_p == 0.0:
            # See the module's docstring: under CPU autocast the packed examples run in float32.
            with torch.autocast("cpu", enabled=False):
                q, k, v = (x.float() for x in (q, k, v))
                if _fused_cpu_kernel_applies(q, k, v, dropout_p, self.scale):
                    return PackedCausalAttention.apply(q, k, v, lens, self.scale), None
        if _fused_cpu_kernel_applies(q, k, v, dropout_p, self.scale):
            return PackedCausalAttention.apply(q, k, v, lens, self.scale), None
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


def use_document_attention(model: torch.nn.Module) -> int:
    """Gives each of ``model``'s TorchSDPA modules a DocumentSDPA with its bias, dropout and scale; returns how many.

    fairseq2 builds (or loads) the model before a recipe's ``create_task`` runs, so setting the default
    SDPA factory there came too late: packed batches ran TorchSDPA over the whole pack with a
    block-diagonal mask (on the tiny demo, 2 x 2048^2 scores a step, most of a step's time; issue 23).
    Recipes call this from ``setup_model``. SDPA modules hold no weights: checkpoints do not change.
    """
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is TorchSDPA:
                setattr(module, name, DocumentSDPA(child.bias, dropout_p=child.dropout_p, scale=child.scale))
                swapped += 1
    return swapped


def _examples(x: Tensor, start: int, n: int, m: int = 1) -> Tensor:
    """Rows ``start:start+m*n`` of a packed (S, H, K) tensor, m examples of n tokens, as SDPA's (m, H, n, K): a view."""
    return x[start : start + m * n].unflatten(0, (m, n)).transpose(1, 2)


def _under_cpu_autocast(q: Tensor) -> bool:
    return q.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def _fused_cpu_kernel_applies(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, scale: float | None) -> bool:
    """Whether SDPA itself would run the fused CPU flash kernel on these examples (what PackedCausalAttention calls).

    Under autocast SDPA may cast its inputs first, so that case keeps the plain loop.
    """
    if not _KERNELS_KNOWN or q.device.type != "cpu" or torch.is_autocast_enabled("cpu") or not (q.dtype == k.dtype == v.dtype):
        return False
    choice = torch._fused_sdp_choice(_examples(q, 0, 1), _examples(k, 0, 1), _examples(v, 0, 1), None, dropout_p, True, scale=scale)
    return bool(choice == SDPBackend.FLASH_ATTENTION.value)


@dataclass(frozen=True, kw_only=True)
class EqualLengthRuns:
    """Examples of a packed batch in runs of equal length, one kernel call per run.

    ``order`` (when not None) lists the examples' rows shortest example first (a stable sort),
    so that examples of one length are adjacent; ``runs`` are (first row, length, count) in that order.
    """

    order: Tensor | None
    inverse: Tensor | None
    runs: tuple[tuple[int, int, int], ...]


# Sorting costs a gather and a scatter per tensor; it pays when it at least halves the kernel calls.
MIN_CALLS_SAVED = 0.5


@lru_cache(maxsize=64)
def equal_length_runs(lens: tuple[int, ...]) -> EqualLengthRuns:
    def runs_of(lengths: list[int]) -> tuple[tuple[int, int, int], ...]:
        runs: list[tuple[int, int, int]] = []
        start = 0
        for n in lengths:
            if runs and runs[-1][1] == n:
                first, _, m = runs[-1]
                runs[-1] = (first, n, m + 1)
            else:
                runs.append((start, n, 1))
            start += n
        return tuple(runs)

    in_place = runs_of(list(lens))
    by_length = sorted(range(len(lens)), key=lambda i: lens[i])
    sorted_runs = runs_of([lens[i] for i in by_length])
    if len(sorted_runs) > (1 - MIN_CALLS_SAVED) * len(in_place):
        return EqualLengthRuns(order=None, inverse=None, runs=in_place)
    starts = [0]
    for n in lens[:-1]:
        starts.append(starts[-1] + n)
    order = torch.cat([torch.arange(starts[i], starts[i] + lens[i]) for i in by_length])
    return EqualLengthRuns(order=order, inverse=torch.argsort(order), runs=sorted_runs)


class PackedCausalAttention(torch.autograd.Function):
    """Causal attention within each example of a packed (S, H, K) batch on CPU, as one autograd node.

    Forward and backward call the kernels that ``scaled_dot_product_attention`` calls on CPU
    (``_scaled_dot_product_flash_attention_for_cpu`` and its backward). Examples of one length go
    to one call as a batch: the kernel computes each (example, head) on its own, so the bits are
    those of one call per example.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, lens: list[int], scale: float | None) -> Tensor:
        plan = equal_length_runs(tuple(lens))
        q, k, v = (x.contiguous() if plan.order is None else x.index_select(0, plan.order) for x in (q, k, v))
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
        logsumexps = []
        for start, n, m in plan.runs:
            o, lse = _FLASH_CPU(_examples(q, start, n, m), _examples(k, start, n, m), _examples(v, start, n, m), 0.0, True, scale=scale)
            _examples(out, start, n, m).copy_(o)
            logsumexps.append(lse)
        ctx.save_for_backward(q, k, v, out)
        ctx.logsumexps, ctx.plan, ctx.scale = logsumexps, plan, scale
        return out if plan.inverse is None else out.index_select(0, plan.inverse)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, out = ctx.saved_tensors
        plan: EqualLengthRuns = ctx.plan
        grad = grad.contiguous() if plan.order is None else grad.index_select(0, plan.order)
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for (start, n, m), lse in zip(plan.runs, ctx.logsumexps):
            per_run = _FLASH_CPU_BACKWARD(
                _examples(grad, start, n, m), _examples(q, start, n, m), _examples(k, start, n, m), _examples(v, start, n, m),
                _examples(out, start, n, m), lse, 0.0, True, scale=ctx.scale,
            )  # fmt: skip
            for g, run_grad in zip(grads, per_run):
                _examples(g, start, n, m).copy_(run_grad)
        gq, gk, gv = grads if plan.inverse is None else (g.index_select(0, plan.inverse) for g in grads)
        return gq, gk, gv, None, None


# The CPU flash kernels are private aten ops, called here with the signatures torch 2.9 (fairseq2 0.8.1's pin)
# gives them; another torch keeps the plain per-example loop rather than guess.
_KERNELS_KNOWN = torch.__version__.startswith("2.9.")
_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
