"""Preference tuning (DPO, SimPO, ORPO, CPO) on fairseq2's trainer.

The path of data, top to bottom: JSONL pairs -> each pair's chosen and rejected example as token
ids with a loss mask on the response (``lmtune.preference.pairs``), encoded before fairseq2
started into the user's shared cache (or in memory with data_cache=false) -> whole pairs packed
into batches (``lmtune.preference.packing``), each carrying the reference model's log-probs that
``lmtune.runs.preference`` computed once before the policy is loaded -> ``PreferenceTrainUnit`` (the criterion
on the policy's per-sequence log-probs, ``lmtune.training.preference_unit``) -> fairseq2's Trainer
(optimizer, schedule, accumulation, clipping, validation, metrics, checkpoints and resume).

No reference model is in memory while training: its log-probs ride in the batches. Validation
computes the same metrics (loss, rewards, margin, reward accuracy, log-probs) on held-out pairs,
usable by early stopping and keep_best_n_checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import final

import numpy as np
from fairseq2.datasets import DataPipelineReader, SyncMode
from fairseq2.gang import Gang, Gangs
from fairseq2.logging import log
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

from lmtune.adapters.base_family import register_lora_base_families
from lmtune.data.encoding import ExampleEncoder
from lmtune.fairseq2_internals import set_early_stopper
from lmtune.models.document_attention import use_document_attention
from lmtune.models.gpt2 import register_gpt2_family
from lmtune.models.olmo3_rope import use_transformers_olmo3_rope
from lmtune.models.row_logps import use_row_logps
from lmtune.models.swiglu import use_lean_swiglu
from lmtune.models.transformers_fairseq2 import register_transformers_family
from lmtune.options.preference import CriterionOptions
from lmtune.preference.losses import (
    PreferenceLoss,
    SequenceLogps,
    criterion_loss,
    needs_reference,
)
from lmtune.preference.packing import PreferenceBatch, pair_pipeline
from lmtune.preference.pairs import EncodedPairs, encode_pair_file
from lmtune.recipes.instruction_finetune import EarlyStoppingSection, LoraSection
from lmtune.safe_load import use_safe_tensor_loader
from lmtune.training.console import RunConsole
from lmtune.training.early_stopping import PatienceStopper
from lmtune.training.instruments import InstrumentSection
from lmtune.training.preference_unit import (
    MEANS,
    PreferenceTrainUnit,
    preference_step,
    prepare_preference_metrics,
    record_preference,
)
from lmtune.training.profiling import register_profiler
from lmtune.training.training_task import training_task

# Display names and direction of the preference metrics (train and valid alike).
METRICS = {
    "preference_loss": ("Preference Loss", False), "chosen_reward": ("Chosen Reward", True), "rejected_reward": ("Rejected Reward", False),
    "reward_margin": ("Reward Margin", True), "reward_accuracy": ("Reward Accuracy", True), "chosen_logps": ("Chosen Log-prob", True),
    "rejected_logps": ("Rejected Log-prob", False),
}  # fmt: skip
assert set(METRICS) == set(MEANS)


@dataclass(kw_only=True)
class PreferenceDataSection:
    train_file: Path
    valid_file: Path | None = None
    chat_tokenizer_dir: Path | None = None
    max_seq_len: int = 1024
    max_num_tokens: int = 4096
    train_encoded: Path | None = None
    """The training pairs' cache entry, written before the run; None: encode in memory."""
    valid_encoded: Path | None = None
    train_reference: Path | None = None
    """(N, 2) float64 .npy of the reference's log-probs of every training pair (lmtune.preference.reference); None: reference-free."""
    valid_reference: Path | None = None


@dataclass(kw_only=True)
class PreferenceConfig:
    model: ModelSection
    tokenizer: TokenizerSection
    data: PreferenceDataSection
    criterion: CriterionOptions = field(default_factory=CriterionOptions)
    gang: GangSection = field(default_factory=GangSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    lr_scheduler: LRSchedulerSection = field(default_factory=LRSchedulerSection)
    regime: RegimeSection = field(default_factory=RegimeSection)
    common: CommonSection = field(default_factory=CommonSection)
    instrument: InstrumentSection = field(default_factory=InstrumentSection)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    lora: LoraSection = field(default_factory=LoraSection)


def load_pairs(path: Path, encoded: Path | None, encoder: ExampleEncoder) -> EncodedPairs:
    """The cache's arrays, memory-mapped; or, without a cache, ``path`` encoded in memory."""
    if encoded is not None:
        from lmtune.data.encoded_cache import load_encoded

        load_encoded(encoded)  # the sizes checked: a damaged entry is one sentence
        return EncodedPairs.load(encoded, path)
    return encode_pair_file(encoder, path)


def kept_pairs(pairs: EncodedPairs, max_seq_len: int) -> np.ndarray:
    """The pairs that train, with one line each for those skipped."""
    kept = pairs.trainable(max_seq_len)
    if len(kept) < len(pairs):
        log.warning("{}: skipped {} of {} pairs longer than max_seq_len={}.", pairs.file, len(pairs) - len(kept), len(pairs), max_seq_len)
    if pairs.identical:
        log.warning("{}: skipped {} pairs whose chosen response equals the rejected one.", pairs.file, pairs.identical)
    return kept


def make_criterion(c: CriterionOptions):
    params = c.params()

    def criterion(policy: SequenceLogps, reference: SequenceLogps | None) -> PreferenceLoss:
        return criterion_loss(c.name, policy, reference, **params)

    return criterion


@final
class PreferenceFinetuneRecipe(Recipe):
    def __init__(self, console: RunConsole | None = None, higher_better: dict[str, bool] | None = None, reference_step: Callable[[Gang], None] | None = None) -> None:
        """``higher_better``: a metric's direction as early_stopping.mode sets it (it ranks the checkpoints).
        ``reference_step``: run by every rank with the root gang before the policy is loaded, to
        compute (each rank its share) and store the reference log-probs that the batches carry."""
        self._console = console
        self._higher_better = higher_better or {}
        self._reference_step = reference_step

    @override
    def register(self, container: DependencyContainer) -> None:
        use_safe_tensor_loader(container)  # checkpoint files never run code (lmtune.safe_load)
        use_transformers_olmo3_rope(container)  # OLMo 3's sliding layers without YaRN, as transformers runs them (lmtune.models.olmo3_rope)
        for order, (name, (display, higher)) in enumerate(METRICS.items()):
            higher = self._higher_better.get(name, higher)
            container.collection.register_instance(MetricDescriptor, MetricDescriptor(name, display, 100 + order, format_as_float, higher_better=higher))
        if self._console is not None:
            self._console.attach(container)
        register_profiler(container, PreferenceConfig, self._console)
        register_lora_base_families(container)
        register_gpt2_family(container)  # lmtune's GPT-2 (lmtune.models.gpt2)
        register_transformers_family(container)  # transformers-backed causal LMs (lmtune.models.transformers_fairseq2)

    @override
    def setup_model(self, context: RecipeContext, model: Module, newly_initialized: bool) -> Module:
        config = context.get_config_as(PreferenceConfig)
        use_lean_swiglu(model)
        use_row_logps(model)  # the LM head on response positions only: SFT's activations (lmtune.models.row_logps)
        if config.common.torch.default_sdpa == "torch":
            use_document_attention(model)  # each packed sequence attends only to itself
        lora = config.lora
        if lora.settings.rank is None:
            return model
        from lmtune.adapters.build import lora_training_model

        resuming = context.get_checkpoint_manager().has_checkpoint(exclude_model_only=True)
        return lora_training_model(
            model, config.model, lora.settings, seed=lora.seed, base_name=lora.base_name, adapter_init=lora.adapter_init,
            device=context.gangs.root.device, resuming=resuming,
        )  # fmt: skip

    @override
    def create_task(self, context: RecipeContext) -> Task:
        config = context.get_config_as(PreferenceConfig)
        data = config.data
        gangs = context.gangs
        encoder = ExampleEncoder(context.get_tokenizer(), data.chat_tokenizer_dir)
        uses_reference = needs_reference(config.criterion.name)
        gangs.root.barrier()  # rank 0 wrote the encoded caches before it joined
        if self._reference_step is not None:
            self._reference_step(gangs.root)  # before the policy loads: one model in memory at a time
        model = context.get_data_parallel_model()

        def reader(path: Path, encoded: Path | None, reference: Path | None, train: bool) -> DataPipelineReader[PreferenceBatch]:
            pairs = load_pairs(path, encoded, encoder)
            kept = kept_pairs(pairs, data.max_seq_len)
            values = np.load(reference) if (uses_reference and reference is not None) else None
            if not train:  # every rank its share of the held-out pairs, read until the last rank is done
                pipeline = pair_pipeline(pairs, kept[gangs.dp.rank :: gangs.dp.size], max_num_tokens=data.max_num_tokens, dp_rank=0, dp_size=1, shuffle_seed=None, reference=values)
                return DataPipelineReader(pipeline, gangs, sync_mode=SyncMode.UNTIL_LAST)
            pipeline = pair_pipeline(
                pairs, kept, max_num_tokens=data.max_num_tokens, dp_rank=gangs.dp.rank, dp_size=gangs.dp.size,
                shuffle_seed=config.common.seed + 1, reference=values,
            )  # fmt: skip
            return DataPipelineReader(pipeline, gangs, num_accumulate=config.trainer.grad_accumulation.num_batches)

        criterion = make_criterion(config.criterion)
        train_reader = reader(data.train_file, data.train_encoded, data.train_reference, True)
        valid_units, valid_readers = [], []
        if data.valid_file is not None:
            valid_units.append(PreferenceValidUnit(context.get_model(), criterion, gangs))
            valid_readers.append(reader(data.valid_file, data.valid_encoded, data.valid_reference, False))
        unit = PreferenceTrainUnit(model, criterion)
        trainer = context.create_trainer(unit, train_reader, valid_units, valid_readers)
        stopping = config.early_stopping
        stopper = None
        if stopping.patience is not None and stopping.history_file is not None and stopping.stop_file is not None:
            stopper = PatienceStopper(stopping.metric, stopping.history_file, stopping.stop_file, stopping.patience, stopping.min_delta)
            if gangs.root.rank == 0:
                resumed = context.get_checkpoint_manager().maybe_get_last_step_number(exclude_model_only=True)
                stopper.restore(resumed or 0, forgive=stopping.forgive_at_resume)
            set_early_stopper(trainer, stopper)
        return training_task(context, trainer, unit, self._console, early_stopping=stopper is not None, instruments=config.instrument, regime=config.regime)  # type: ignore[arg-type]

    @property
    @override
    def config_kls(self) -> type[object]:
        return PreferenceConfig


@final
class PreferenceValidUnit(EvalUnit[PreferenceBatch]):
    """The training metrics on held-out pairs, with the model without its data-parallel wrapper
    (a rank may run fewer batches than another, so no forward may wait on collectives)."""

    def __init__(self, model: Module, criterion, gangs: Gangs) -> None:
        self._model = model
        self._criterion = criterion
        self._gangs = gangs

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        prepare_preference_metrics(metric_bag)

    @override
    def process_batch(self, batch: PreferenceBatch, metric_bag: MetricBag) -> None:
        result, policy = preference_step(self._model, batch, self._criterion)
        record_preference(metric_bag, result, policy)

    @property
    @override
    def name(self) -> str | None:
        return None  # metrics go to OUT/metrics/valid.jsonl


