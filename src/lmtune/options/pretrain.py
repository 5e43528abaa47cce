"""The keys of ``lmtune pretrain``: the keys every training run has (``lmtune.options.training``),
with pretraining's defaults, and its own: random initial weights, skipping invalid lines,
validation on the first N tokens, tokenizer threads. Free of heavy imports, for ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmtune.options.training import LRSchedulerOptions, TrainingOptions, after


@dataclass(kw_only=True)
class PretrainLRSchedulerOptions(LRSchedulerOptions):
    """Linear warmup, then cosine decay to ``final_lr_scale * learning_rate`` at the last step."""

    num_warmup_steps: int = 100
    final_lr_scale: float = 0.1


@dataclass(kw_only=True)
class PretrainOptions(TrainingOptions):
    model: str | None = None
    """A model card name (its weights, or its architecture with init=random), or last_checkpoint / checkpoint_step_N with resume_checkpoint_dir."""
    init: Literal["checkpoint", "random"] = field(default="checkpoint", metadata=after("model"))
    """checkpoint: start from the card's weights (a card with 'init: random' and no checkpoint starts from random weights); random: random weights in the card's architecture."""
    dataset: str | list[str] | None = None
    """Plain text: a .txt or .jsonl file, a directory of them, a glob, a dataset card, or a list of these."""
    valid_dataset: str | list[str] | None = None
    """Held-out text for validation perplexity, in the same forms as dataset."""
    resume_checkpoint_dir: Path | None = None
    """OUT/checkpoints of an earlier run, to continue pretraining from model=last_checkpoint or checkpoint_step_N."""
    skip_invalid: bool = field(default=False, metadata=after("resume_checkpoint_dir"))
    """Skip (and count) lines that are not valid UTF-8 or JSON and files that are binary, instead of stopping at the first."""
    max_seq_len: int = 1024
    """Tokens per row; a document longer than a row continues in the next row."""
    max_num_tokens: int = 8192
    """Tokens per batch per rank: max_num_tokens // max_seq_len rows; ignored when batch_size is set."""
    batch_size: int | None = None
    """Rows of max_seq_len tokens per batch per rank, instead of max_num_tokens."""
    learning_rate: float = 6e-4
    max_valid_tokens: int | None = field(default=None, metadata=after("validate_every_n_steps"))
    """Validate on the first N tokens of the held-out text (per rank); null: all of it."""
    tokenizer_threads: int = field(default=4, metadata=after("publish_metrics_every_n_steps"))
    """Documents tokenized in parallel by fairseq2's data pipeline."""
    seed: int = 2
    """Seeds the random initial weights."""
    lr_scheduler: PretrainLRSchedulerOptions = field(default_factory=PretrainLRSchedulerOptions)
