"""The training unit both recipes use: the summed next-token NLL over the target tokens.

Fine-tuning batches carry a target mask (the response tokens); pretraining batches carry
none, and then every token is a target (fairseq2's ``num_target_elements`` is the
element count), so one loss serves both.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import final

from fairseq2.datasets import SequenceBatch
from fairseq2.metrics import MetricBag
from fairseq2.metrics.common import (
    add_nll_loss_metric,
    add_seq_batch_metrics,
    update_nll_loss_metric,
    update_seq_batch_metrics,
)
from fairseq2.recipe.trainer import TrainUnit
from torch import Tensor
from torch.nn import Module
from typing_extensions import override


def target_nll(model: Module, batch: SequenceBatch) -> tuple[Tensor, SequenceBatch]:
    """Summed next-token NLL over the target tokens (the masked ones, or all)."""
    inputs, targets = batch.as_auto_regressive()
    seqs, layout = inputs.as_input()
    loss = model(seqs, layout, targets=targets.seqs, target_mask=targets.target_mask, reduction="sum")
    return loss, targets


def record_nll(metric_bag: MetricBag, loss: Tensor, targets: SequenceBatch) -> None:
    update_nll_loss_metric(metric_bag, loss, num_targets=targets.num_target_elements)
    update_seq_batch_metrics(metric_bag, targets)


def prepare_nll_metrics(metric_bag: MetricBag) -> None:
    add_nll_loss_metric(metric_bag)
    add_seq_batch_metrics(metric_bag)


@final
class NllTrainUnit(TrainUnit[SequenceBatch]):
    def __init__(self, model: Module) -> None:
        self._model = model
        self.on_step: Callable[[], None] | None = None
        self.publishers: list[Callable[[MutableMapping[str, object]], None]] = []
        """Add their figures to the train metrics fairseq2 publishes (rank 0; lmtune.training.instruments)."""
        self.on_publish: Callable[[], None] | None = None
        """Called on rank 0 when fairseq2 publishes the training metrics, outside the timed step."""

    @override
    def set_step_nr(self, step_nr: int) -> None:
        if self.on_step is not None:
            self.on_step()

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        prepare_nll_metrics(metric_bag)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> tuple[Tensor, int]:
        loss, targets = target_nll(self._model, batch)
        record_nll(metric_bag, loss, targets)
        # The trainer divides gradients by the target count summed over ranks and
        # accumulated batches, so every target token weighs the same.
        return loss, targets.num_target_elements

    @override
    def process_metric_values(self, values: MutableMapping[str, object]) -> None:
        for publish in self.publishers:
            publish(values)
        if self.on_publish is not None:
            self.on_publish()
