"""Instruction fine-tuning on fairseq2's trainer.

The path of data, top to bottom: JSONL records -> token ids with a loss mask
(``lmtune.data.encoding``) -> batches on a fairseq2 DataPipeline (``lmtune.data.batching``)
-> ``SftTrainUnit.process_batch`` (summed NLL over response tokens) -> fairseq2's
Trainer (optimizer, LR schedule, accumulation, clipping, validation, metrics,
checkpoints and resume).

``lmtune.train.finetune`` turns the user's flat config into ``FinetuneConfig`` and runs
this recipe with ``fairseq2.recipe.run.run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import final

from torch import Tensor
from torch.nn import Module
from typing_extensions import override

from fairseq2.datasets import DataPipelineReader, SequenceBatch
from fairseq2.logging import log
from fairseq2.metrics import MetricBag
from fairseq2.metrics.common import (
    add_nll_loss_metric,
    add_seq_batch_metrics,
    update_nll_loss_metric,
    update_seq_batch_metrics,
)
from fairseq2.recipe import Recipe, RecipeContext
from fairseq2.recipe.config import (
    CommonSection,
    GangSection,
    LRSchedulerSection,
    ModelSection,
    OptimizerSection,
    RegimeSection,
    TokenizerSection,
    TrainerSection,
)
from fairseq2.models.transformer import set_default_sdpa_factory
from fairseq2.recipe.evaluator import EvalUnit
from fairseq2.recipe.trainer import TrainUnit
from fairseq2.task import Task

from lmtune.data.batching import build_pipeline, drop_too_long
from lmtune.train.document_attention import DocumentSDPA
from lmtune.train.preemption import PreemptibleTrainer, StopFlag
from lmtune.data.encoding import ExampleEncoder
from lmtune.data.records import read_records


@dataclass(kw_only=True)
class SftDataSection:
    train_file: Path
    valid_file: Path | None = None
    chat_tokenizer_dir: Path | None = None
    """A Hugging Face tokenizer directory whose chat template renders chat records."""
    max_seq_len: int = 1024
    max_num_tokens: int = 4096
    batch_size: int | None = None
    packing: bool = True
    shuffle: bool = True


@dataclass(kw_only=True)
class FinetuneConfig:
    model: ModelSection
    tokenizer: TokenizerSection
    data: SftDataSection
    gang: GangSection = field(default_factory=GangSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    lr_scheduler: LRSchedulerSection = field(default_factory=LRSchedulerSection)
    regime: RegimeSection = field(default_factory=RegimeSection)
    common: CommonSection = field(default_factory=CommonSection)


@final
class InstructionFinetuneRecipe(Recipe):
    @override
    def create_task(self, context: RecipeContext) -> Task:
        config = context.get_config_as(FinetuneConfig)
        data = config.data
        tokenizer = context.get_tokenizer()
        gangs = context.gangs
        pad_idx = tokenizer.vocab_info.pad_idx
        if pad_idx is None:
            pad_idx = 0  # padded positions are masked out of attention and loss

        encoder = ExampleEncoder(tokenizer, data.chat_tokenizer_dir)

        def reader(path: Path, shuffle: bool) -> DataPipelineReader[SequenceBatch]:
            examples = [encoder.encode(r) for r in read_records(path)]
            kept = drop_too_long(examples, data.max_seq_len, str(path))
            if len(kept) < len(examples):
                log.warning("{}: skipped {} of {} examples longer than max_seq_len={}.", path, len(examples) - len(kept), len(examples), data.max_seq_len)  # fmt: skip
            pipeline = build_pipeline(
                kept,
                dp_rank=gangs.dp.rank,
                dp_size=gangs.dp.size,
                max_seq_len=data.max_seq_len,
                max_num_tokens=data.max_num_tokens,
                batch_size=data.batch_size,
                pad_idx=pad_idx,
                shuffle_seed=config.common.seed + 1 if shuffle else None,
                packing=data.packing and data.batch_size is None,
            )
            num_accumulate = config.trainer.grad_accumulation.num_batches if shuffle else 1
            return DataPipelineReader(pipeline, gangs, num_accumulate=num_accumulate)

        if config.common.torch.default_sdpa == "torch":
            # Packed batches attend within each example instead of across the whole pack.
            set_default_sdpa_factory(DocumentSDPA)
        model = context.get_data_parallel_model()
        train_reader = reader(data.train_file, data.shuffle)
        valid_units, valid_readers = [], []
        if data.valid_file is not None:
            valid_units.append(SftLossEvalUnit(model))
            valid_readers.append(reader(data.valid_file, False))

        unit = SftTrainUnit(model)
        trainer = context.create_trainer(unit, train_reader, valid_units, valid_readers)
        preemptible = PreemptibleTrainer(trainer, StopFlag(), gangs.root)
        unit.on_step = preemptible.check
        return preemptible

    @property
    @override
    def config_kls(self) -> type[object]:
        return FinetuneConfig


def response_nll(model: Module, batch: SequenceBatch) -> tuple[Tensor, SequenceBatch]:
    """Summed next-token NLL over the response (target-masked) tokens."""
    inputs, targets = batch.as_auto_regressive()
    seqs, layout = inputs.as_input()
    loss = model(seqs, layout, targets=targets.seqs, target_mask=targets.target_mask, reduction="sum")
    return loss, targets


@final
class SftTrainUnit(TrainUnit[SequenceBatch]):
    def __init__(self, model: Module) -> None:
        self._model = model
        self.on_step: Callable[[], None] | None = None

    @override
    def set_step_nr(self, step_nr: int) -> None:
        if self.on_step is not None:
            self.on_step()

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        add_nll_loss_metric(metric_bag)
        add_seq_batch_metrics(metric_bag)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> tuple[Tensor, int]:
        loss, targets = response_nll(self._model, batch)
        update_nll_loss_metric(metric_bag, loss, num_targets=targets.num_target_elements)
        update_seq_batch_metrics(metric_bag, targets)
        # The trainer divides gradients by the target count summed over ranks and
        # accumulated batches, so every response token weighs the same.
        return loss, targets.num_target_elements


@final
class SftLossEvalUnit(EvalUnit[SequenceBatch]):
    def __init__(self, model: Module) -> None:
        self._model = model

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        add_nll_loss_metric(metric_bag)
        add_seq_batch_metrics(metric_bag)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> None:
        loss, targets = response_nll(self._model, batch)
        update_nll_loss_metric(metric_bag, loss, num_targets=targets.num_target_elements)
        update_seq_batch_metrics(metric_bag, targets)

    @property
    @override
    def name(self) -> str | None:
        return "valid"
