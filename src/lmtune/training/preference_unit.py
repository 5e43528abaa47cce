"""The train unit of preference tuning: a criterion on each pair's response log-probs.

One forward over the packed batch gives the policy's summed log-probs of every chosen and
rejected response (``lmtune.preference.packing``); the reference's were computed before
training and ride in the batch (``lmtune.preference.reference``). The loss is summed over
pairs and the trainer divides by the pair count summed over ranks and accumulated batches.
Metrics, each a mean per pair: the loss, the chosen and rejected rewards, their margin, the
reward accuracy (chosen reward above rejected), and the policy's chosen and rejected log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import final

import torch
from fairseq2.metrics import MetricBag
from fairseq2.metrics.aggregation import Mean, Sum
from fairseq2.recipe.trainer import TrainUnit
from torch import Tensor
from torch.nn import Module
from typing_extensions import override

from lmtune.preference.losses import PreferenceLoss, SequenceLogps
from lmtune.preference.packing import PreferenceBatch, pair_logps

Criterion = Callable[[SequenceLogps, SequenceLogps | None], PreferenceLoss]
MEANS = ("preference_loss", "chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy", "chosen_logps", "rejected_logps")
SUMS = ("num_examples", "num_target_elements", "total_num_examples")


def prepare_preference_metrics(metric_bag: MetricBag) -> None:
    for name in MEANS:
        metric_bag.add(name, Mean())
    for name in SUMS:
        metric_bag.add(name, Sum())


def reference_logps(batch: PreferenceBatch, policy: SequenceLogps) -> SequenceLogps | None:
    """The batch's reference log-probs over the same tokens as the policy's, or None."""
    if batch.reference is None:
        return None
    ref = batch.reference.to(policy.chosen.dtype)
    return SequenceLogps(chosen=ref[:, 0], rejected=ref[:, 1], chosen_tokens=policy.chosen_tokens, rejected_tokens=policy.rejected_tokens)


@torch.inference_mode()
def record_preference(metric_bag: MetricBag, result: PreferenceLoss, policy: SequenceLogps) -> None:
    n = len(policy.chosen)
    values = {
        "preference_loss": result.loss.detach() / n,
        "chosen_reward": result.chosen_rewards.mean(),
        "rejected_reward": result.rejected_rewards.mean(),
        "reward_margin": result.margins.mean(),
        "reward_accuracy": result.accuracies.mean(),
        "chosen_logps": policy.chosen.detach().mean(),
        "rejected_logps": policy.rejected.detach().mean(),
    }
    for name, value in values.items():
        metric_bag.get(name, Mean).update(value, weight=n)
    targets = int((policy.chosen_tokens + policy.rejected_tokens).sum())
    metric_bag.get("num_examples", Sum).update(n)
    metric_bag.get("total_num_examples", Sum).update(n)
    metric_bag.get("num_target_elements", Sum).update(targets)


def preference_step(model: Module, batch: PreferenceBatch, criterion: Criterion) -> tuple[PreferenceLoss, SequenceLogps]:
    policy = pair_logps(model, batch)
    return criterion(policy, reference_logps(batch, policy)), policy


@final
class PreferenceTrainUnit(TrainUnit[PreferenceBatch]):
    def __init__(self, model: Module, criterion: Criterion) -> None:
        self._model = model
        self._criterion = criterion
        # The hooks of NllTrainUnit, which lmtune.training.training_task and instruments set.
        self.on_step: Callable[[], None] | None = None
        self.publishers: list[Callable[[MutableMapping[str, object]], None]] = []
        self.on_publish: Callable[[], None] | None = None

    @override
    def set_step_nr(self, step_nr: int) -> None:
        if self.on_step is not None:
            self.on_step()

    @override
    def process_metric_values(self, values: MutableMapping[str, object]) -> None:
        for publish in self.publishers:
            publish(values)
        if self.on_publish is not None:
            self.on_publish()

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        prepare_preference_metrics(metric_bag)

    @override
    def process_batch(self, batch: PreferenceBatch, metric_bag: MetricBag) -> tuple[Tensor, int]:
        result, policy = preference_step(self._model, batch, self._criterion)
        record_preference(metric_bag, result, policy)
        return result.loss, batch.num_pairs
