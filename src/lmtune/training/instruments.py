"""What a run measures about itself besides the loss, wired into fairseq2's trainer: the memory
figures (always, ``lmtune.training.memory_stats``), gradient statistics (``grad_stats``,
``lmtune.training.grad_stats``) and the profiler's settings (``lmtune.training.profiling``).
None of it touches the model, the batches or the random state: the losses are the same with
and without (tested)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fairseq2.recipe.config import TorchProfilerConfig


@dataclass(kw_only=True)
class InstrumentSection:
    """The recipe config's section for them (both recipes)."""

    grad_stats: bool = False
    profiler: TorchProfilerConfig = field(default_factory=TorchProfilerConfig)


def attach_instruments(context: object, trainer: object, unit: object, section: InstrumentSection, publish_every: int | None, max_num_steps: int | None) -> None:
    """Adds the memory figures, and with ``grad_stats`` the gradient statistics, to the train
    metrics that fairseq2 publishes (JSONL, TensorBoard, W&B, the console)."""
    from lmtune.training.memory_stats import publish_memory

    gangs = context.gangs  # type: ignore[attr-defined]
    unit.publishers.append(lambda values: publish_memory(values, gangs.device))  # type: ignore[attr-defined]
    if not section.grad_stats:
        return
    from lmtune.fairseq2_internals import call_before_grad_clip
    from lmtune.training.grad_stats import GradStats

    assert publish_every is not None, "lmtune's recipes always set publish_metrics_every_n_steps"
    stats = GradStats(context.get_data_parallel_model(), trainer, gangs.sdp, publish_every, max_num_steps)  # type: ignore[attr-defined]
    call_before_grad_clip(trainer, stats.before_clip)
    unit.publishers.append(stats.publish)  # type: ignore[attr-defined]
