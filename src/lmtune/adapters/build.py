"""The one build of a model with LoRA adapters: the model on the meta device -> its adapters ->
its frozen base weights -> saved adapters, if any (``add_lora``).

Two callers share it. In training, fairseq2 hands the recipe's ``setup_model`` the base model
empty, on the meta device (``lmtune.adapters.base_family``), on every rank and whether the run
starts or resumes (``lora_training_model``). In-process loading of a LoRA checkpoint
(generation, export, tests) creates that empty model itself (``load_lora_model``). Either way
the base weights are read from the base model's own files, NF4-quantized as they arrive for
QLoRA (``lmtune.adapters.base_weights``), so a QLoRA base is never whole in float32. A LoRA
checkpoint holds the adapters alone: on a resumed run fairseq2 then restores them and their
optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn import Module

from lmtune.adapters.base_weights import load_base_weights
from lmtune.adapters.lora import apply_lora, load_adapters
from lmtune.catalog.specs import LoraSpec, ModelSpec
from lmtune.errors import UserError
from lmtune.models.loading import (
    iter_model_tensors,
    load_model,
    model_config,
    model_family,
)
from lmtune.options.lora import LoraSettings

if TYPE_CHECKING:
    from fairseq2.recipe.config import ModelSection


def add_lora(model: Module, lora: LoraSpec, *, adapters: Path | None, device: torch.device, dtype: torch.dtype) -> Module:
    """Adds ``lora``'s adapters to ``model`` (its base built on the meta device), reads the frozen
    base weights into it, then the saved ``adapters`` (a step_N/model directory), if any. In place."""
    apply_lora(model, lora.settings, seed=lora.seed, device=device)
    load_base_weights(model, lora.base, iter_model_tensors(lora.base), device=device, dtype=dtype)
    if adapters is not None:
        load_adapters(model, adapters)
    return model


def load_any_model(spec: ModelSpec, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32, seed: int | None = None) -> Module:
    """The model ``spec`` names, in eval mode: a LoRA checkpoint's adapters on their base, or ``load_model``'s."""
    if spec.lora is not None:
        return load_lora_model(spec, device=device, dtype=dtype)
    return load_model(spec, device=device, dtype=dtype, seed=seed)


def check_lora_base(spec: ModelSpec) -> None:
    """A LoRA checkpoint holds only adapters: its base model's weights must still be where they were."""
    lora = spec.lora
    assert lora is not None
    base = lora.base.checkpoint
    if base is None or not Path(base).exists():
        raise UserError(f"model '{spec.name}' ({spec.source}) holds LoRA adapters for base model '{lora.base.name}', whose weights {base} are not there any more; put them back at that path (see {spec.source}/lora.yaml).")


def load_lora_model(spec: ModelSpec, *, device: torch.device | None, dtype: torch.dtype) -> Module:
    """The base model with the checkpoint's adapters on it (NF4 base for a QLoRA run), in eval mode."""
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    lora = spec.lora
    assert lora is not None and spec.checkpoint is not None
    check_lora_base(spec)
    device = device or CPU
    family = model_family(lora.base.family)
    model = family.create_new_model(model_config(lora.base), create_fake_gangs(device), dtype, meta=family.supports_meta, init_rank0_only=False)
    without_dropout = dataclasses.replace(lora, settings=dataclasses.replace(lora.settings, dropout=0.0))
    add_lora(model, without_dropout, adapters=Path(spec.checkpoint), device=device, dtype=dtype)
    model.eval()
    return model


def lora_training_model(model: Module, section: ModelSection, settings: LoraSettings, *, seed: int, base_name: str, adapter_init: Path | None, device: torch.device, resuming: bool) -> Module:
    """The model a LoRA run trains, from fairseq2's empty base: ``section`` is the recipe's model
    section (the base, under its ``+lora_base`` family), ``adapter_init`` an earlier run's
    adapters to start from (a new stage; a resumed run has its own in its checkpoint).

    Changes ``model`` in place and returns it: fairseq2 0.8.1 keeps the module it passed to
    ``setup_model`` (its ``_StandardRecipeModel.module`` is the holder's first model), so a
    new module returned from there would be dropped."""
    from lmtune.adapters.base_family import base_family_name

    if section.family is None:
        raise ValueError("a LoRA run's model section names its base's family (lmtune.runs.finetune sets it)")
    overrides = section.config_overrides
    base = ModelSpec(
        name=base_name, family=base_family_name(section.family), arch=section.arch, config=dict(overrides) if isinstance(overrides, Mapping) else {},
        checkpoint=section.path, source="the LoRA run's base",
    )  # fmt: skip
    add_lora(model, LoraSpec(settings=settings, base=base, seed=seed), adapters=None if resuming else adapter_init, device=device, dtype=section.dtype)
    model.train()
    return model
