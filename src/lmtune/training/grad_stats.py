"""Gradient statistics (``grad_stats=true``): what a training study reads besides the loss.

At each publishing step, once the gradients are final (normalized by the target count, unscaled)
and before fairseq2 clips them and the optimizer zeroes them, this computes:

- ``grad_norm/total``: the L2 norm of all trainable gradients, before clipping. It is the value of
  the step itself, where fairseq2's own ``grad_norm`` (``Gradient Norm``) is the mean over the
  publish interval; with ``publish_metrics_every_n_steps=1`` the two are the same number.
- ``grad_norm/<group>``: the L2 norm of each parameter group: ``embed`` (token embeddings),
  ``layer_N/attn`` (layer N's attention, its norm included), ``layer_N/ffn`` (its feed-forward
  block and norm), ``final_norm``, ``head`` (the output projection, unless tied to the embeddings)
  and ``other`` for anything else. sqrt(sum of the groups' squares) = the total.
- ``grad/mean``, ``grad/std``, ``grad/min``, ``grad/max``: over every entry of every trainable
  gradient (not over the group norms); std is the population standard deviation.

Only publishing steps pay for it (one pass over the gradients, a few reductions per tensor).
Under FSDP each rank holds a shard of every gradient: the sums, minima and maxima are reduced
over the sharded gang, so every rank ends with the whole model's figures; under DDP every rank
holds the whole gradient already.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import Parameter

if TYPE_CHECKING:
    from fairseq2.gang import Gang
    from fairseq2.trainer import Trainer

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.([A-Za-z_]+)")


def parameter_group(name: str) -> str:
    """A fairseq2 decoder parameter's group: embed, layer_N/attn, layer_N/ffn, final_norm, head or other."""
    m = _LAYER.search(name)
    if m:
        part = m.group(2)
        kind = "attn" if "attn" in part else "ffn" if part.startswith("ffn") else "other"
        return f"layer_{m.group(1)}/{kind}"
    if re.search(r"(?:^|\.)decoder_frontend\.|(?:^|\.)embed\.", name):
        return "embed"
    if re.search(r"(?:^|\.)decoder\.layer_norm\.", name):
        return "final_norm"
    if re.search(r"(?:^|\.)final_proj\.", name):
        return "head"
    return "other"


def _local(t: Tensor) -> Tensor:
    """A DTensor's shard on this rank (FSDP2), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def gradient_stats(named_params: Iterable[tuple[str, Parameter]], sharded_gang: object | None = None) -> dict[str, float]:
    """The statistics above for the gradients at hand; ``sharded_gang``: fairseq2's Gangs.sdp under FSDP."""
    groups: dict[str, int] = {}
    index, grads = [], []
    sharded = False
    for name, p in named_params:
        if p.grad is None:
            continue
        sharded = sharded or hasattr(p.grad, "to_local")
        # Every rank lists every group, even where its shard of a gradient is empty, so the
        # reduced vectors line up across ranks.
        index.append(groups.setdefault(parameter_group(name), len(groups)))
        grads.append(_local(p.grad))
    if not grads:
        return {}
    device = grads[0].device
    kept = [g for g in grads if g.numel() > 0]

    def wide(g: Tensor) -> torch.dtype:  # at least float32, as torch's clip_grad_norm_ computes norms
        return torch.promote_types(g.dtype, torch.float32)

    zero = torch.zeros((), dtype=torch.float64, device=device)
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=wide(g)).double() if g.numel() else zero for g in grads])
    squares = torch.zeros(len(groups), dtype=torch.float64, device=device).index_add_(0, torch.tensor(index, device=device), norms.square())
    entries = torch.stack([g.sum(dtype=wide(g)).double() for g in kept]).sum() if kept else zero
    count = torch.tensor(float(sum(g.numel() for g in kept)), dtype=torch.float64, device=device)
    sums = torch.cat([squares, entries.view(1), count.view(1)])
    low = torch.stack([g.min().double() for g in kept]).min().view(1) if kept else torch.full((1,), math.inf, dtype=torch.float64, device=device)
    high = torch.stack([g.max().double() for g in kept]).max().view(1) if kept else torch.full((1,), -math.inf, dtype=torch.float64, device=device)
    if sharded and sharded_gang is not None and getattr(sharded_gang, "size", 1) > 1:
        from fairseq2.gang import ReduceOperation

        sharded_gang.all_reduce(sums, ReduceOperation.SUM)  # type: ignore[attr-defined]
        sharded_gang.all_reduce(low, ReduceOperation.MIN)  # type: ignore[attr-defined]
        sharded_gang.all_reduce(high, ReduceOperation.MAX)  # type: ignore[attr-defined]
    s = sums.tolist()
    squares_of, total_sum, n = s[: len(groups)], s[-2], s[-1]
    total_square = sum(squares_of)
    mean = total_sum / n
    values = {"grad_norm/total": math.sqrt(total_square)}
    values.update({f"grad_norm/{group}": math.sqrt(squares_of[i]) for group, i in groups.items()})
    values.update({"grad/mean": mean, "grad/std": math.sqrt(max(total_square / n - mean * mean, 0.0)), "grad/min": low.item(), "grad/max": high.item()})
    return values


class GradStats:
    """Computes the statistics on publishing steps (from the trainer's clipping hook) and adds
    them to the values fairseq2 publishes for that step (from the train unit, on rank 0)."""

    def __init__(self, model: torch.nn.Module, trainer: Trainer, sharded_gang: Gang, publish_every: int, max_num_steps: int | None) -> None:
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._trainer = trainer
        self._gang = sharded_gang
        self._every = publish_every
        self._last = max_num_steps
        self._values: dict[str, float] = {}
        self._step = -1

    def before_clip(self) -> None:
        step = self._trainer.step_nr
        if step % self._every == 0 or step == self._last:  # the steps fairseq2 publishes
            self._values, self._step = gradient_stats(self._params, self._gang), step

    def publish(self, values: MutableMapping[str, object]) -> None:
        if self._step == self._trainer.step_nr:
            values.update(self._values)
