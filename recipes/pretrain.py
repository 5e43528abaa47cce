"""Pretraining on plain text with fairseq2's trainer.

The path of data, top to bottom: text files -> this rank's share of them
(``lmtune.data.text_corpus``) -> documents tokenized on the fly, joined with EOS and
cut into rows of ``max_seq_len`` (``lmtune.data.text_stream``) -> ``NllTrainUnit``
(summed NLL over every token of the rows) -> fairseq2's Trainer (optimizer, LR
schedule, accumulation, clipping, validation, metrics, checkpoints and resume; the
reader's position is in every checkpoint).

Validation: the NLL loss per token over the held-out text and its perplexity, exp(loss).

``lmtune.runs.pretrain`` checks the inputs, turns the user's flat config into
``PretrainConfig`` and runs this recipe with ``fairseq2.recipe.run.run``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import final

from fairseq2.datasets import SequenceBatch
from fairseq2.metrics import MetricBag
from fairseq2.metrics.formatters import format_as_float
from fairseq2.metrics.recorders import MetricDescriptor
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
from fairseq2.recipe.evaluator import EvalUnit
from fairseq2.runtime.dependency import DependencyContainer
from fairseq2.task import Task
from torch.nn import Module
from typing_extensions import override

from lmtune.data.text_corpus import CorpusFile, Piece, shares
from lmtune.data.text_stream import TextStreamReader
from lmtune.models.document_attention import use_document_attention
from lmtune.models.gpt2 import register_gpt2_family
from lmtune.models.olmo3_rope import use_transformers_olmo3_rope
from lmtune.models.swiglu import use_lean_swiglu
from lmtune.models.transformers_fairseq2 import register_transformers_family
from lmtune.safe_load import use_safe_tensor_loader
from lmtune.training.console import RunConsole
from lmtune.training.instruments import InstrumentSection
from lmtune.training.nll_unit import (
    NllTrainUnit,
    prepare_nll_metrics,
    record_nll,
    target_nll,
)
from lmtune.training.profiling import register_profiler
from lmtune.training.training_task import training_task


@dataclass(kw_only=True)
class TextDataSection:
    train_files: list[Path]
    """The corpus in order (checked by lmtune.runs.pretrain; binary files skipped there are left out)."""
    valid_files: list[Path] = field(default_factory=list)
    max_seq_len: int = 1024
    rows: int = 8
    """Rows of max_seq_len tokens per batch per rank."""
    max_valid_tokens: int | None = None
    tokenizer_threads: int = 4
    skip_invalid: bool = False


@dataclass(kw_only=True)
class PretrainConfig:
    model: ModelSection
    tokenizer: TokenizerSection
    data: TextDataSection
    gang: GangSection = field(default_factory=GangSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    lr_scheduler: LRSchedulerSection = field(default_factory=LRSchedulerSection)
    regime: RegimeSection = field(default_factory=RegimeSection)
    common: CommonSection = field(default_factory=CommonSection)
    instrument: InstrumentSection = field(default_factory=InstrumentSection)
    """grad_stats and the profiler (lmtune.training.instruments)."""


@final
class PretrainRecipe(Recipe):
    def __init__(self, console: RunConsole | None = None) -> None:
        self._console = console

    @override
    def register(self, container: DependencyContainer) -> None:
        use_safe_tensor_loader(container)  # checkpoint files never run code (lmtune.safe_load)
        use_transformers_olmo3_rope(container)  # OLMo 3's sliding layers without YaRN, as transformers runs them (lmtune.models.olmo3_rope)
        container.collection.register_instance(MetricDescriptor, MetricDescriptor("perplexity", "Perplexity", 110, format_as_float, higher_better=False))
        if self._console is not None:  # what the run shows on the console (lmtune.training.console)
            self._console.attach(container)
        register_profiler(container, PretrainConfig, self._console)  # profiler.enabled (lmtune.training.profiling)
        register_gpt2_family(container)  # lmtune's GPT-2 (lmtune.models.gpt2)
        register_transformers_family(container)  # transformers-backed causal LMs (lmtune.models.transformers_fairseq2)

    @override
    def setup_model(self, context: RecipeContext, model: Module, newly_initialized: bool) -> Module:
        use_lean_swiglu(model)  # two feed-forward activations kept per layer, not three (lmtune.models.swiglu)
        if context.get_config_as(PretrainConfig).common.torch.default_sdpa == "torch":
            use_document_attention(model)  # rows attend within each document piece, not across the whole batch
        return model

    @override
    def create_task(self, context: RecipeContext) -> Task:
        config = context.get_config_as(PretrainConfig)
        data = config.data
        tokenizer = context.get_tokenizer()
        gangs = context.gangs
        eos_idx = tokenizer.vocab_info.eos_idx
        assert eos_idx is not None  # lmtune.runs.pretrain refuses a tokenizer without EOS
        encode = tokenizer.create_raw_encoder()
        # Documents are meant to be longer than the model's context (rows cut them); transformers'
        # tokenizers would warn about the first such document.
        logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

        def share(paths: list[Path]) -> list[Piece]:  # this rank's, as lmtune.runs.pretrain checked them
            files = [CorpusFile(path=p, size=p.stat().st_size) for p in paths]
            return shares(files, gangs.dp.size)[gangs.dp.rank]

        def reader(paths: list[Path], *, valid: bool) -> TextStreamReader:
            return TextStreamReader(
                share(paths), encode, eos_idx, gangs, max_seq_len=data.max_seq_len, rows=data.rows,
                num_accumulate=1 if valid else config.trainer.grad_accumulation.num_batches, until_last=valid,
                max_num_tokens=data.max_valid_tokens if valid else None, num_parallel_calls=data.tokenizer_threads,
                skip_invalid=data.skip_invalid,
            )  # fmt: skip

        model = context.get_data_parallel_model()
        valid_units, valid_readers = [], []
        if data.valid_files:
            valid_units.append(PretrainValidUnit(context.get_model()))
            valid_readers.append(reader(data.valid_files, valid=True))
        unit = NllTrainUnit(model)
        trainer = context.create_trainer(unit, reader(data.train_files, valid=False), valid_units, valid_readers)
        return training_task(context, trainer, unit, self._console, instruments=config.instrument, regime=config.regime)

    @property
    @override
    def config_kls(self) -> type[object]:
        return PretrainConfig


@final
class PretrainValidUnit(EvalUnit[SequenceBatch]):
    """NLL loss per token over the held-out text, and its perplexity."""

    def __init__(self, model: Module) -> None:
        # The model without its data-parallel wrapper: a rank may run fewer forwards than another.
        self._model = model

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        prepare_nll_metrics(metric_bag)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> None:
        loss, targets = target_nll(self._model, batch)  # no target mask: every token
        record_nll(metric_bag, loss, targets)

    @override
    def process_metric_values(self, values: MutableMapping[str, object]) -> None:
        loss = values.get("nll_loss")
        if loss is not None:
            nll = loss.item() if hasattr(loss, "item") else loss  # a number or a 0-d tensor
            assert isinstance(nll, (int, float)), f"nll_loss {loss!r} is not a number"
            values["perplexity"] = math.exp(min(float(nll), 700.0))

    @property
    @override
    def name(self) -> str | None:
        return None  # metrics go to OUT/metrics/valid.jsonl
