"""The keys of ``lmtune instruction_finetune``: flat where they can be, sections where they group.

Kept free of heavy imports so ``--help`` and ``--dump-config`` answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmtune.dtypes import DtypeName
from lmtune.options.lora import LoraSettings
from lmtune.options.instrument import ProfilerOptions


@dataclass(kw_only=True)
class OptimizerOptions:
    """AdamW."""

    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass(kw_only=True)
class LRSchedulerOptions:
    """Linear warmup, then cosine decay to ``final_lr_scale * learning_rate`` at the last step."""

    num_warmup_steps: int = 0
    final_lr_scale: float = 0.2


@dataclass(kw_only=True)
class WandbOptions:
    enabled: bool = False
    project: str | None = None
    entity: str | None = None
    run_name: str | None = None


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
class FinetuneOptions:
    model: str | None = None
    """A model card name, or last_checkpoint / best_checkpoint / checkpoint_step_N with resume_checkpoint_dir."""
    tokenizer: str | None = None
    """A card name; default: the model card's tokenizer (or the earlier run's)."""
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
    packing: bool = True
    """Pack examples into batches of max_num_tokens, each attending only to itself; false: length batching."""
    data_cache: bool = True
    """Encode the data once into the user's shared cache (memory-mapped by every rank, reused by every run on the same data); false: every rank encodes in memory."""
    max_num_steps: int | None = 1000
    max_num_data_epochs: int | None = None
    learning_rate: float = 5.5e-6
    warmup_ratio: float | None = None
    """Warm up over ceil(warmup_ratio * max_num_steps) steps, instead of lr_scheduler.num_warmup_steps (set one of them); in [0, 1)."""
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    checkpoint_every_n_steps: int = 1000
    keep_last_n_checkpoints: int | None = 1
    """Checkpoints kept whole (model, optimizer, data position)."""
    keep_last_n_models: int | None = None
    """Checkpoints kept in all; those beyond keep_last_n_checkpoints keep only the model."""
    validate_every_n_steps: int | None = None
    eval_task: Literal["auto", "none", "gsm8k", "classification", "exact_match"] = "auto"
    """Task scores computed at each validation by greedy generation; auto: the dataset card's task."""
    max_eval_examples: int = 1000
    """Validation examples generated for the task scores (the first N, shared out over the ranks)."""
    eval_max_gen_len: int = 256
    """Tokens generated per validation example at most."""
    keep_best_n_checkpoints: int | None = None
    """Also keep the K checkpoints with the best early_stopping.metric."""
    publish_metrics_every_n_steps: int = 10
    dtype: DtypeName = "bfloat16"
    """Training precision on GPU (mixed precision over float32 weights); always float32 on CPU."""
    seed: int = 2
    data_parallelism: Literal["ddp", "fsdp"] = "ddp"
    distributed_timeout_minutes: int = 15
    """How long ranks wait for each other (start-up and every collective) before failing."""
    activation_checkpointing: bool = False
    release_freed_memory: bool = False
    """Give freed activations' memory back to the system at once (glibc; lmtune.training.allocator):
    a lower peak RSS when training on CPU, for slower steps."""
    compile: bool = False
    grad_stats: bool = False
    """At each publish interval, the gradients' total norm, norms per parameter group (embeddings, each layer's attention and FFN, final norm, head) and their entries' mean, std, min and max (metrics grad_norm/* and grad/*)."""
    tensorboard: bool = True
    # [hf export, issue 4: lmtune/export/hf_dir.py]
    export_hf: Literal["none", "last", "all"] = "none"
    """After training, write checkpoints as Hugging Face directories (step_N/hf): none, the last, or every kept one."""
    # [end hf export]
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    lr_scheduler: LRSchedulerOptions = field(default_factory=LRSchedulerOptions)
    wandb: WandbOptions = field(default_factory=WandbOptions)
    early_stopping: EarlyStoppingOptions = field(default_factory=EarlyStoppingOptions)
    lora: LoraSettings = field(default_factory=LoraSettings)
    profiler: ProfilerOptions = field(default_factory=ProfilerOptions)
    representations: RepresentationsOptions = field(default_factory=RepresentationsOptions)
