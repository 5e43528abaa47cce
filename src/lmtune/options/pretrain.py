"""The keys of ``lmtune pretrain``: flat where they can be, sections where they group.

The optimizer, schedule and W&B sections are fine-tuning's. Kept free of heavy
imports so ``--help`` and ``--dump-config`` answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmtune.dtypes import DtypeName
from lmtune.options.finetune import LRSchedulerOptions, OptimizerOptions, WandbOptions
from lmtune.options.instrument import ProfilerOptions


@dataclass(kw_only=True)
class PretrainLRSchedulerOptions(LRSchedulerOptions):
    """Linear warmup, then cosine decay to ``final_lr_scale * learning_rate`` at the last step."""

    num_warmup_steps: int = 100
    final_lr_scale: float = 0.1


@dataclass(kw_only=True)
class PretrainOptions:
    model: str | None = None
    """A model card name (its weights, or its architecture with init=random), or last_checkpoint / checkpoint_step_N with resume_checkpoint_dir."""
    init: Literal["checkpoint", "random"] = "checkpoint"
    """checkpoint: start from the card's weights (a card with 'init: random' and no checkpoint starts from random weights); random: random weights in the card's architecture."""
    tokenizer: str | None = None
    """A card name; default: the model card's tokenizer (or the earlier run's)."""
    dataset: str | list[str] | None = None
    """Plain text: a .txt or .jsonl file, a directory of them, a glob, a dataset card, or a list of these."""
    valid_dataset: str | list[str] | None = None
    """Held-out text for validation perplexity, in the same forms as dataset."""
    resume_checkpoint_dir: Path | None = None
    """OUT/checkpoints of an earlier run, to continue pretraining from model=last_checkpoint or checkpoint_step_N."""
    skip_invalid: bool = False
    """Skip (and count) lines that are not valid UTF-8 or JSON and files that are binary, instead of stopping at the first."""
    max_seq_len: int = 1024
    """Tokens per row; a document longer than a row continues in the next row."""
    max_num_tokens: int = 8192
    """Tokens per batch per rank: max_num_tokens // max_seq_len rows; ignored when batch_size is set."""
    batch_size: int | None = None
    """Rows of max_seq_len tokens per batch per rank, instead of max_num_tokens."""
    max_num_steps: int | None = 1000
    max_num_data_epochs: int | None = None
    learning_rate: float = 6e-4
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
    max_valid_tokens: int | None = None
    """Validate on the first N tokens of the held-out text (per rank); null: all of it."""
    publish_metrics_every_n_steps: int = 10
    tokenizer_threads: int = 4
    """Documents tokenized in parallel by fairseq2's data pipeline."""
    dtype: DtypeName = "bfloat16"
    """Training precision on GPU (mixed precision over float32 weights); always float32 on CPU."""
    seed: int = 2
    """Seeds the random initial weights."""
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
    export_hf: Literal["none", "last", "all"] = "none"
    """After training, write checkpoints as Hugging Face directories (step_N/hf): none, the last, or every kept one."""
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    lr_scheduler: PretrainLRSchedulerOptions = field(default_factory=PretrainLRSchedulerOptions)
    wandb: WandbOptions = field(default_factory=WandbOptions)
    profiler: ProfilerOptions = field(default_factory=ProfilerOptions)
