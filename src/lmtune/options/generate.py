"""The keys of ``lmtune generate``, named as in fairseq2's generate recipe.

Kept free of heavy imports so ``--help`` and ``--dump-config`` answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmtune.dtypes import DtypeName
from lmtune.errors import UserError
from lmtune.score.tasks import TaskName


@dataclass(kw_only=True)
class GeneratorOptions:
    temperature: float = 0.0
    """0 is greedy decoding; above 0 samples (top_p / top_k)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    top_k: int | None = None
    """Sample from the k most likely tokens instead of top_p; 1 is greedy."""
    max_gen_len: int = 256
    """Generated tokens per prompt at most, the stop token included."""
    beam_size: int = 1
    """Above 1: beam search (deterministic; temperature only rescales scores)."""


@dataclass(kw_only=True)
class GenerateOptions:
    checkpoint_dir: Path | None = None
    """OUT/checkpoints of a training run, for model=last_checkpoint, best_checkpoint or checkpoint_step_N."""
    model: str | None = None
    """last_checkpoint, best_checkpoint, checkpoint_step_N (with checkpoint_dir), or a model card (to score a base model)."""
    tokenizer: str | None = None
    """A tokenizer card; default: the model's (or the training run's)."""
    dataset: str | None = None
    """A .jsonl file, or a directory / dataset card whose test split is used."""
    batch_size: int | None = None
    """Prompts per batch, instead of max_num_tokens."""
    max_num_tokens: int = 16384
    """(prompt + max_gen_len) tokens per batch, summed over its prompts (times beam_size)."""
    seed: int = 2
    """Seeds sampling and a randomly initialised model card (init: random)."""
    score: Literal["auto", "none", TaskName] = "auto"
    """auto: the dataset card's task, if it names one."""
    labels: list[str] | None = None
    """Class labels for score=classification; default: the dataset card's labels."""
    dtype: Literal["auto", DtypeName] = "auto"
    """auto: bfloat16 where the device computes it fast, else float32 (lmtune.precision)."""
    generator_config: GeneratorOptions = field(default_factory=GeneratorOptions)


def check_options(o: GenerateOptions) -> None:
    g = o.generator_config
    if o.model is None:
        raise UserError("config key 'model' is not set; use model=last_checkpoint (or checkpoint_step_N) with checkpoint_dir=OUT/checkpoints, or a model card name.")
    if o.dataset is None:
        raise UserError("config key 'dataset' is not set; give a .jsonl file of prompts, a directory or a dataset card (e.g. dataset=tiny_gsm8k).")
    for key, value in (("batch_size", o.batch_size), ("max_num_tokens", o.max_num_tokens), ("generator_config.max_gen_len", g.max_gen_len), ("generator_config.beam_size", g.beam_size), ("generator_config.top_k", g.top_k)):
        if value is not None and value < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {value}.")
    if g.temperature < 0:
        raise UserError(f"config key 'generator_config.temperature' must be 0 (greedy) or positive, got {g.temperature}.")
    if not 0 < g.top_p <= 1:
        raise UserError(f"config key 'generator_config.top_p' must be in (0, 1], got {g.top_p}.")
    if g.top_k is not None and g.top_p < 1:
        raise UserError("set generator_config.top_p or generator_config.top_k, not both; fairseq2 samples with one of them.")
    if o.labels is not None and len(set(o.labels)) < 2:
        raise UserError(f"config key 'labels' must name at least two distinct classes, got {o.labels}.")
