"""Instruction fine-tuning on fairseq2's trainer.

The path of data, top to bottom: JSONL records -> token ids with a loss mask
(``lmtune.data.encoding``), held as flat arrays (``lmtune.data.encoded_examples``) that
rank 0 has encoded into the user's shared cache before fairseq2 started (``lmtune.data.encoded_cache``;
with data_cache=false every rank encodes in memory) -> batches on a fairseq2 DataPipeline
(``lmtune.data.batching``)
-> ``NllTrainUnit.process_batch`` (summed NLL over response tokens) -> fairseq2's
Trainer (optimizer, LR schedule, accumulation, clipping, validation, metrics,
checkpoints and resume).

Validation: the NLL loss over the validation split, and with a task (``eval``) the
task's scores on greedy completions of its first prompts (``lmtune.training.task_eval``);
an ``EarlyStopper`` (``lmtune.training.early_stopping``) ends the run when the chosen
metric stops improving.

``lmtune.runs.finetune`` turns the user's flat config into ``FinetuneConfig`` and runs
this recipe with ``fairseq2.recipe.run.run``.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import final

from fairseq2.data.tokenizers import Tokenizer
from fairseq2.datasets import DataPipelineReader, SequenceBatch, SyncMode
from fairseq2.gang import Gangs
from fairseq2.logging import log
from fairseq2.metrics import MetricBag
from fairseq2.metrics.formatters import format_as_float, format_as_int
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
from lmtune.data.batching import build_pipeline
from lmtune.data.encoded_examples import EncodedExamples
from lmtune.data.encoding import ExampleEncoder
from lmtune.data.records import read_records
from lmtune.fairseq2_internals import set_early_stopper
from lmtune.models.document_attention import use_document_attention
from lmtune.models.gpt2 import register_gpt2_family
from lmtune.models.olmo3_rope import use_transformers_olmo3_rope
from lmtune.models.swiglu import use_lean_swiglu
from lmtune.models.target_loss import use_target_only_loss
from lmtune.models.transformers_fairseq2 import register_transformers_family
from lmtune.models.transformers_family import (
    TransformersCausalLM,
    packing_or_length_batching,
)
from lmtune.options.lora import LoraSettings
from lmtune.safe_load import use_safe_tensor_loader
from lmtune.training.console import RunConsole
from lmtune.training.early_stopping import PatienceStopper
from lmtune.training.instruments import InstrumentSection
from lmtune.training.nll_unit import (
    NllTrainUnit,
    prepare_nll_metrics,
    record_nll,
    target_nll,
)
from lmtune.training.profiling import register_profiler
from lmtune.training.task_eval import EvalPrompts, evaluate_task
from lmtune.training.training_task import training_task
from lmtune.training.valid_metrics import COUNTS, ValidMetric


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
    train_encoded: Path | None = None
    """The training data's cache entry (lmtune.data.encoded_cache), written before the run; None: encode in memory."""
    valid_encoded: Path | None = None
    encode_workers: int = 1
    """Worker processes per rank when encoding in memory."""


@dataclass(kw_only=True)
class TaskEvalSection:
    task: str | None = None
    """gsm8k, classification or exact_match: scored on greedy completions at each validation."""
    labels: list[str] | None = None
    max_examples: int = 1000
    max_gen_len: int = 256


@dataclass(kw_only=True)
class EarlyStoppingSection:
    metric: str = ""
    patience: int | None = None
    """None: no early stopping."""
    min_delta: float = 0.0
    history_file: Path | None = None
    stop_file: Path | None = None
    forgive_at_resume: bool = False
    """Restart the patience count at the resumed step (max_num_steps was raised after an early stop)."""


@dataclass(kw_only=True)
class LoraSection:
    """Adapters added to the loaded model in ``setup_model`` (lmtune.adapters.build); settings.rank None: none."""

    settings: LoraSettings = field(default_factory=LoraSettings)
    """As planned (lmtune.adapters.plan): a rank and the projections' names."""
    seed: int = 0
    """The seed of the adapters' initial A."""
    base_name: str = ""
    adapter_init: Path | None = None
    """An earlier LoRA run's step_N/model: start from its adapters (a new stage)."""


@dataclass(kw_only=True)
class RepresentationsSection:
    """Hidden states of the first validation examples saved at step 0 and every N steps (lmtune.training.representations)."""

    every_n_steps: int | None = None
    num_examples: int = 1000
    layers: list[int] | None = None
    out_dir: Path | None = None


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
    instrument: InstrumentSection = field(default_factory=InstrumentSection)
    """grad_stats and the profiler (lmtune.training.instruments)."""
    eval: TaskEvalSection = field(default_factory=TaskEvalSection)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    lora: LoraSection = field(default_factory=LoraSection)
    representations: RepresentationsSection = field(default_factory=RepresentationsSection)


def prepare_examples(path: Path, encoded: Path | None, encoder: ExampleEncoder, workers: int) -> EncodedExamples:
    """The cache's arrays, memory-mapped; or, without a cache, ``path`` encoded in memory."""
    if encoded is not None:
        from lmtune.data.encoded_cache import load_encoded

        return load_encoded(encoded)
    from lmtune.data.parallel_encoding import encode_jsonl

    return encode_jsonl(path, encoder, workers=workers)


@final
class InstructionFinetuneRecipe(Recipe):
    def __init__(self, metrics: Sequence[ValidMetric] = (), console: RunConsole | None = None) -> None:
        self._metrics = metrics
        self._console = console

    @override
    def register(self, container: DependencyContainer) -> None:
        use_safe_tensor_loader(container)  # checkpoint files never run code (lmtune.safe_load)
        use_transformers_olmo3_rope(container)  # OLMo 3's sliding layers without YaRN, as transformers runs them (lmtune.models.olmo3_rope)
        # fairseq2 knows nll_loss and accuracy; macro F1, per-label F1 and the counts are lmtune's.
        # A metric registered here replaces fairseq2's of the same name (early_stopping.mode).
        for m in self._metrics:
            descriptor = MetricDescriptor(m.name, m.display_name, 200 if m.name != "nll_loss" else 100, format_as_float, higher_better=m.higher_better)
            container.collection.register_instance(MetricDescriptor, descriptor)
        for name, display_name in COUNTS.items():
            container.collection.register_instance(MetricDescriptor, MetricDescriptor(name, display_name, 210, format_as_int))
        if self._console is not None:  # what the run shows on the console (lmtune.training.console)
            self._console.attach(container)
        register_profiler(container, FinetuneConfig, self._console)  # profiler.enabled (lmtune.training.profiling)
        register_lora_base_families(container)
        register_gpt2_family(container)  # lmtune's GPT-2 (lmtune.models.gpt2)
        register_transformers_family(container)  # transformers-backed causal LMs (lmtune.models.transformers_fairseq2)

    @override
    def setup_model(self, context: RecipeContext, model: Module, newly_initialized: bool) -> Module:
        # Runs after fairseq2 has created or loaded the model and before the data-parallel wrap.
        config = context.get_config_as(FinetuneConfig)
        use_target_only_loss(model)  # the LM head on response tokens only (lmtune.models.target_loss)
        use_lean_swiglu(model)  # two feed-forward activations kept per layer, not three (lmtune.models.swiglu)
        if config.common.torch.default_sdpa == "torch":
            use_document_attention(model)  # packed batches attend within each example, not across the pack
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
        config = context.get_config_as(FinetuneConfig)
        data = config.data
        tokenizer = context.get_tokenizer()
        gangs = context.gangs
        pad_idx = tokenizer.vocab_info.pad_idx
        if pad_idx is None:
            pad_idx = 0  # padded positions are masked out of attention and loss
        packing = data.packing and data.batch_size is None
        model = context.get_model()
        if isinstance(model, TransformersCausalLM):
            # An architecture that mixes packed examples (its logits change when packed) is batched by length.
            packing = packing_or_length_batching(model, packing, say=gangs.root.rank == 0)

        encoder = ExampleEncoder(tokenizer, data.chat_tokenizer_dir)

        def reader(path: Path, encoded: Path | None, shuffle: bool) -> DataPipelineReader[SequenceBatch]:
            examples = prepare_examples(path, encoded, encoder, data.encode_workers)
            kept = examples.trainable(data.max_seq_len, str(path))
            if len(kept) < len(examples):
                log.warning("{}: skipped {} of {} examples longer than max_seq_len={}.", path, len(examples) - len(kept), len(examples), data.max_seq_len)  # fmt: skip
            if not shuffle:
                # Validation: every rank batches its own share of the examples, and the ranks
                # read until the last is done, so the loss covers every example (sharding
                # batches would leave a rank of a small split with none, and the min-sync
                # would then drop the others' too).
                pipeline = build_pipeline(
                    examples, indices=kept[gangs.dp.rank :: gangs.dp.size], dp_rank=0, dp_size=1, max_seq_len=data.max_seq_len,
                    max_num_tokens=data.max_num_tokens, batch_size=data.batch_size, pad_idx=pad_idx, shuffle_seed=None,
                    packing=packing,
                )  # fmt: skip
                return DataPipelineReader(pipeline, gangs, sync_mode=SyncMode.UNTIL_LAST)
            pipeline = build_pipeline(
                examples,
                indices=kept,
                dp_rank=gangs.dp.rank,
                dp_size=gangs.dp.size,
                max_seq_len=data.max_seq_len,
                max_num_tokens=data.max_num_tokens,
                batch_size=data.batch_size,
                pad_idx=pad_idx,
                shuffle_seed=config.common.seed + 1 if shuffle else None,
                packing=packing,
            )
            return DataPipelineReader(pipeline, gangs, num_accumulate=config.trainer.grad_accumulation.num_batches)

        model = context.get_data_parallel_model()
        if data.train_encoded is not None:
            gangs.root.barrier()  # rank 0 wrote the cache before it joined; nobody maps it earlier
        train_reader = reader(data.train_file, data.train_encoded, data.shuffle)
        valid_units, valid_readers = [], []
        if data.valid_file is not None:
            task_eval = None
            e = config.eval
            if e.task is not None:
                records = read_records(data.valid_file)[: e.max_examples]
                task_eval = EvalPrompts(
                    prompts=[encoder.encode_prompt(r) for r in records], references=[encoder.reference(r) or "" for r in records],
                    task=e.task, labels=e.labels, max_gen_len=e.max_gen_len, max_num_tokens=data.max_num_tokens,
                )  # fmt: skip
            valid_units.append(SftValidUnit(context.get_model(), tokenizer, gangs, task_eval))
            valid_readers.append(reader(data.valid_file, data.valid_encoded, False))

        unit = NllTrainUnit(model)
        trainer = context.create_trainer(unit, train_reader, valid_units, valid_readers)
        reps = config.representations
        if reps.every_n_steps is not None and reps.out_dir is not None and data.valid_file is not None and gangs.root.rank == 0:
            from lmtune.training.representations import (
                RepresentationProbe,
                choose_examples,
            )

            examples = prepare_examples(data.valid_file, data.valid_encoded, encoder, data.encode_workers)
            indices = choose_examples(examples, data.max_seq_len, reps.num_examples, str(data.valid_file))
            probe = RepresentationProbe(
                context.get_model(), examples, indices, reps.layers, reps.out_dir, data.valid_file, reps.every_n_steps, data.max_num_tokens, gangs.root.device,
            )  # fmt: skip
            if not context.get_checkpoint_manager().has_checkpoint(exclude_model_only=True):
                probe.take(0)  # the model before training; a resumed run keeps the step 0 it saved
            # Rank 0 at each published step (fairseq2 publishes on every multiple of every_n_steps).
            unit.on_publish = lambda: probe.maybe_take(trainer.step_nr)
        stopping = config.early_stopping
        stopper = None
        if stopping.patience is not None and stopping.history_file is not None and stopping.stop_file is not None:
            stopper = PatienceStopper(stopping.metric, stopping.history_file, stopping.stop_file, stopping.patience, stopping.min_delta)
            if gangs.root.rank == 0:  # fairseq2 consults the stopper on rank 0 only
                resumed = context.get_checkpoint_manager().maybe_get_last_step_number(exclude_model_only=True)
                stopper.restore(resumed or 0, forgive=stopping.forgive_at_resume)
            set_early_stopper(trainer, stopper)  # fairseq2's recipe factory passes none
        return training_task(context, trainer, unit, self._console, early_stopping=stopper is not None, instruments=config.instrument, regime=config.regime)

    @property
    @override
    def config_kls(self) -> type[object]:
        return FinetuneConfig


@final
class SftValidUnit(EvalUnit[SequenceBatch]):
    """NLL loss over the validation batches; then, with a task, the task's scores."""

    def __init__(self, model: Module, tokenizer: Tokenizer, gangs: Gangs, task_eval: EvalPrompts | None) -> None:
        # The model being trained without its data-parallel wrapper: fairseq2 has gathered its
        # parameters for validation, and a rank may run fewer forwards than another, so no
        # forward may wait on collectives.
        self._model = model
        self._tokenizer = tokenizer
        self._gangs = gangs
        self._task_eval = task_eval
        self._scores: dict[str, float] = {}

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        prepare_nll_metrics(metric_bag)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> None:
        loss, targets = target_nll(self._model, batch)
        record_nll(metric_bag, loss, targets)

    @override
    def finalize(self, metric_bag: MetricBag) -> None:
        # Runs on every rank after its loss batches; the ranks complete their shares together.
        if self._task_eval is not None:
            self._scores = evaluate_task(self._model, self._tokenizer, self._task_eval, self._gangs.dp, self._gangs.device)

    @override
    def process_metric_values(self, values: MutableMapping[str, object]) -> None:
        values.update(self._scores)  # rank 0, before the values are recorded and the score is taken

    @property
    @override
    def name(self) -> str | None:
        return None  # metrics go to OUT/metrics/valid.jsonl
