"""The model a LoRA run trains, built inside fairseq2's recipe (``setup_model``).

fairseq2 has created or loaded the base model by then. On a resumed run it has only
created an empty one, expecting the checkpoint to fill every weight, but a LoRA
checkpoint holds the adapters alone: the base weights are loaded again from the base
model's own files, and fairseq2 then restores the adapters and their optimizer state.
Ranks other than 0 also get an empty model (fairseq2 loads on rank 0 and lets DDP
broadcast); they load the base too, since a 4-bit base is never broadcast.
"""

from __future__ import annotations

from torch.nn import Module

from lmtune.catalog.specs import ModelSpec


def lora_training_model(model: Module, section: object, lora: object, device: object, *, resuming: bool) -> Module:
    """``section``: the recipe's ModelSection (the base); ``lora``: its LoraSection.

    Changes ``model`` in place and returns it: fairseq2 0.8.1 keeps the module it passed to
    ``setup_model`` (its ``_StandardRecipeModel.module`` is the holder's first model), so a
    new module returned from there would be dropped."""
    from fairseq2.nn.utils.module import reset_non_persistent_buffers, to_device, to_empty

    from lmtune.catalog.loading import load_model
    from lmtune.train.lora import apply_lora, load_adapters

    if resuming or any(p.is_meta for p in model.parameters()):
        s = section
        spec = ModelSpec(lora.base_name, s.family, s.arch, dict(s.config_overrides or {}), s.path, "the LoRA run's base")  # type: ignore[attr-defined]
        base = load_model(spec, device=device)  # type: ignore[arg-type]
        to_empty(model, device)  # type: ignore[arg-type]
        model.load_state_dict(base.state_dict())  # strict: every base weight
        reset_non_persistent_buffers(model)
        del base
    to_device(model, device)  # type: ignore[arg-type]  # before quantizing: NF4 weights are plain attributes, moved by nothing
    apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets, quantize=lora.quantize, seed=lora.seed)  # type: ignore[attr-defined]
    if lora.adapter_init is not None and not resuming:  # type: ignore[attr-defined]
        load_adapters(model, lora.adapter_init)  # type: ignore[attr-defined]
    model.train()
    return model
