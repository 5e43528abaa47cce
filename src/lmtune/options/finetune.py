"""The keys of ``lmtune instruction_finetune``: the keys every training run has
(``lmtune.options.training``), and fine-tuning's own: packing, the encoded cache, task
scores at validation, early stopping, LoRA. Free of heavy imports, for ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmtune.options.lora import LoraSettings
from lmtune.options.training import LRSchedulerOptions, TrainingOptions, after


@dataclass(kw_only=True)
class EarlyStoppingOptions:
    """Stop when the validation metric has not improved for `patience` evaluations."""

    metric: str | None = None
    """A validation metric: valid.loss, or the task's valid.accuracy / valid.macro_f1 / valid.f1_LABEL; also ranks checkpoints for keep_best_n_checkpoints and model=best_checkpoint."""
    mode: Literal["auto", "min", "max"] = "auto"
    """Whether lower or higher is better; auto knows it per metric (loss: min, the rest: max)."""
    patience: int | None = 3
    """Evaluations without improvement before stopping; null: never stop, only rank checkpoints."""
    min_delta: float = 0.0
    """How much better than the best so far a value must be to count as an improvement."""


@dataclass(kw_only=True)
class RepresentationsOptions:
    """Hidden states saved during training to measure representation drift (`lmtune drift OUT`); off by default."""

    every_n_steps: int | None = None
    """Save the chosen layers' hidden states, averaged over each example's tokens, before training (step 0) and every N steps into OUT/representations/step_N.npy (float16; read by `lmtune drift OUT`); null: off. Needs a validation split and data_parallelism=ddp."""
    num_examples: int = 1000
    """The first K validation examples (those training keeps); a split with fewer uses all it has, with one line saying so."""
    layers: list[int] | None = None
    """Layer indices: 0 is the embedding output, i the output of decoder layer i (1..num_layers); null: all."""


@dataclass(kw_only=True)
class FinetuneOptions(TrainingOptions):
    model: str | None = None
    """A model card name, or last_checkpoint / best_checkpoint / checkpoint_step_N with resume_checkpoint_dir."""
    dataset: str | None = None
    """A .jsonl file, a directory (train.jsonl or sft/train.jsonl) or a dataset card."""
    valid_dataset: str | None = None
    """Validation records; default: valid.jsonl / validation.jsonl beside the training data."""
    resume_checkpoint_dir: Path | None = None
    """OUT/checkpoints of an earlier run, to start a new stage from model=last_checkpoint, best_checkpoint or checkpoint_step_N."""
    max_seq_len: int = 2048
    max_num_tokens: int = 8192
    """Tokens per batch per rank (packed or length-batched); ignored when batch_size is set."""
    batch_size: int | None = None
    """Examples per batch per rank, instead of max_num_tokens (turns packing off)."""
    packing: bool = field(default=True, metadata=after("batch_size"))
    """Pack examples into batches of max_num_tokens, each attending only to itself; false: length batching."""
    data_cache: bool = field(default=True, metadata=after("batch_size"))
    """Encode the data once into the user's shared cache (memory-mapped by every rank, reused by every run on the same data); false: every rank encodes in memory."""
    learning_rate: float = 5.5e-6
    eval_task: Literal["auto", "none", "gsm8k", "classification", "exact_match"] = field(default="auto", metadata=after("validate_every_n_steps"))
    """Task scores computed at each validation by greedy generation; auto: the dataset card's task."""
    max_eval_examples: int = field(default=1000, metadata=after("validate_every_n_steps"))
    """Validation examples generated for the task scores (the first N, shared out over the ranks)."""
    eval_max_gen_len: int = field(default=256, metadata=after("validate_every_n_steps"))
    """Tokens generated per validation example at most."""
    keep_best_n_checkpoints: int | None = field(default=None, metadata=after("validate_every_n_steps"))
    """Also keep the K checkpoints with the best early_stopping.metric."""
    lr_scheduler: LRSchedulerOptions = field(default_factory=LRSchedulerOptions)
    early_stopping: EarlyStoppingOptions = field(default_factory=EarlyStoppingOptions)
    lora: LoraSettings = field(default_factory=LoraSettings)
    representations: RepresentationsOptions = field(default_factory=RepresentationsOptions)
