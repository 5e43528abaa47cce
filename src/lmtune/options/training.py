"""The keys every training recipe shares, once: ``FinetuneOptions`` and ``PretrainOptions`` build on them.

A recipe's table subclasses ``TrainingOptions``. Redefining a key there changes its default or
its help and keeps its place; a key of the recipe's own is placed with ``after("key")`` (else it
comes before the sections), so ``--dump-config`` and ``--help`` list the keys in reading order.
Kept free of heavy imports so ``--help`` and ``--dump-config`` answer at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmtune.dtypes import DtypeName
from lmtune.options.instrument import ProfilerOptions


def after(key: str) -> dict[str, str]:
    """A field's metadata: list this key after ``key`` (and after the keys already placed there)."""
    return {"after": key}


def key_fields(kls: Any) -> list[dataclasses.Field[Any]]:
    """The fields of an options dataclass (or instance) in the order users read them."""
    fields = list(dataclasses.fields(kls))
    order = [f for f in fields if "after" not in f.metadata]
    sections = [f for f in order if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)]
    last_placed: dict[str, str] = {}
    for f in fields:
        anchor = f.metadata.get("after")
        if anchor is None:
            continue
        names = [g.name for g in order]
        at = names.index(last_placed.get(anchor, anchor)) + 1 if anchor in names else (names.index(sections[0].name) if sections else len(order))
        order.insert(at, f)
        last_placed[anchor] = f.name
    return order


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
class TrainingOptions:
    """The keys of every training run; those without a default here take each recipe's own."""

    model: str | None = None
    tokenizer: str | None = None
    """A card name; default: the model card's tokenizer (or the earlier run's)."""
    dataset: str | list[str] | None = None
    valid_dataset: str | list[str] | None = None
    resume_checkpoint_dir: Path | None = None
    max_seq_len: int
    max_num_tokens: int = 8192
    batch_size: int | None = None
    max_num_steps: int | None = 1000
    max_num_data_epochs: int | None = None
    learning_rate: float
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
    publish_metrics_every_n_steps: int = 10
    dtype: Literal["auto", DtypeName] = "auto"
    """Training precision: bf16/fp16 autocast over float32 weights, or float32. auto: bf16 where the device
    computes it fast (GPUs with bf16; CPUs with AMX-BF16 or AVX512-BF16, for models 128 wide or wider),
    else float32 (lmtune.precision)."""
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
    export_hf: Literal["none", "last", "all"] = "none"
    """After training, write checkpoints as Hugging Face directories (step_N/hf): none, the last, or every kept one."""
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    lr_scheduler: LRSchedulerOptions
    wandb: WandbOptions = field(default_factory=WandbOptions)
    profiler: ProfilerOptions = field(default_factory=ProfilerOptions)
