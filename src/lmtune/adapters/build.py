"""A LoRA checkpoint loaded in-process: its adapters on its frozen base (generation, export, tests).

Recipes build the model a LoRA run trains in ``lmtune.adapters.training_model``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmtune.adapters.base_weights import load_base_weights
from lmtune.adapters.lora import apply_lora, load_adapters
from lmtune.catalog.specs import ModelSpec
from lmtune.errors import UserError
from lmtune.models.loading import iter_model_tensors, load_model, model_config, model_family


def load_any_model(spec: ModelSpec, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32, seed: int | None = None) -> torch.nn.Module:
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


def load_lora_model(spec: ModelSpec, *, device: torch.device | None, dtype: torch.dtype) -> torch.nn.Module:
    """The base model with the checkpoint's adapters on it (NF4 base for a QLoRA run); the base
    is built empty and read tensor by tensor, so a QLoRA base is never whole in float32."""
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    lora = spec.lora
    assert lora is not None
    check_lora_base(spec)
    device = device or CPU
    model = model_family(lora.base.family).create_new_model(model_config(lora.base), create_fake_gangs(device), dtype, meta=True, init_rank0_only=False)
    apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=0.0, targets=lora.targets, quantize=lora.quantize, seed=lora.seed, device=device)
    load_base_weights(model, lora.base, iter_model_tensors(lora.base), device=device, dtype=dtype)
    load_adapters(model, Path(spec.checkpoint))  # type: ignore[arg-type]
    model.eval()
    return model


