"""What a run measures about itself besides the loss, wired into fairseq2's trainer: the memory
figures (always, ``lmtune.training.memory_stats``), gradient statistics (``grad_stats``,
``lmtune.training.grad_stats``) and the profiler's settings (``lmtune.training.profiling``).
None of it touches the model, the batches or the random state: the losses are the same with
and without (tested)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fairseq2.recipe.config import TorchProfilerConfig

if TYPE_CHECKING:
    from fairseq2.recipe import RecipeContext
    from fairseq2.trainer import Trainer

    from lmtune.training.nll_unit import NllTrainUnit


@dataclass(kw_only=True)
class InstrumentSection:
    """The recipe config's section for them (both recipes)."""

    grad_stats: bool = False
    profiler: TorchProfilerConfig = field(default_factory=TorchProfilerConfig)


def attach_instruments(context: RecipeContext, trainer: Trainer, unit: NllTrainUnit, section: InstrumentSection, publish_every: int | None, max_num_steps: int | None) -> None:
    """Adds the memory figures, and with ``grad_stats`` the gradient statistics, to the train
    metrics that fairseq2 publishes (JSONL, TensorBoard, W&B, the console)."""
    from lmtune.training.memory_stats import publish_memory

    gangs = context.gangs
    unit.publishers.append(lambda values: publish_memory(values, gangs.device))
    if not section.grad_stats:
        return
    from lmtune.fairseq2_internals import call_before_grad_clip
    from lmtune.training.grad_stats import GradStats

    assert publish_every is not None, "lmtune's recipes always set publish_metrics_every_n_steps"
    stats = GradStats(context.get_data_parallel_model(), trainer, gangs.sdp, publish_every, max_num_steps)
    call_before_grad_clip(trainer, stats.before_clip)
    unit.publishers.append(stats.publish)
