"""The model a LoRA run trains, built inside fairseq2's recipe (``setup_model``).

fairseq2 hands the recipe the base model empty, on the meta device
(``lmtune.adapters.base_family``), on every rank and whether the run starts or resumes.
The adapters are added first, then the frozen base weights are read from the base model's
own files, NF4-quantized as they arrive for QLoRA (``lmtune.adapters.base_weights``). A LoRA
checkpoint holds the adapters alone: on a resumed run fairseq2 then restores them and their
optimizer state.
"""

from __future__ import annotations

from torch.nn import Module

from lmtune.catalog.specs import ModelSpec


def lora_training_model(model: Module, section: object, lora: object, device: object, *, resuming: bool) -> Module:
    """``section``: the recipe's ModelSection (the base); ``lora``: its LoraSection.

    Changes ``model`` in place and returns it: fairseq2 0.8.1 keeps the module it passed to
    ``setup_model`` (its ``_StandardRecipeModel.module`` is the holder's first model), so a
    new module returned from there would be dropped."""
    from lmtune.models.loading import iter_model_tensors
    from lmtune.adapters.lora import apply_lora, load_adapters
    from lmtune.adapters.base_weights import load_base_weights
    from lmtune.adapters.base_family import base_family_name

    s = section
    spec = ModelSpec(lora.base_name, base_family_name(s.family), s.arch, dict(s.config_overrides or {}), s.path, "the LoRA run's base")  # type: ignore[attr-defined]
    apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets, quantize=lora.quantize, seed=lora.seed, device=device)  # type: ignore[attr-defined, arg-type]
    load_base_weights(model, spec, iter_model_tensors(spec), device=device, dtype=s.dtype)  # type: ignore[arg-type, attr-defined]
    if lora.adapter_init is not None and not resuming:  # type: ignore[attr-defined]
        load_adapters(model, lora.adapter_init)  # type: ignore[attr-defined]
    model.train()
    return model
