"""LoRA on a transformers-backed model (``lmtune.models.transformers_family``): which layers get adapters.

lmtune's native families name their projections by Llama's Hugging Face names (``lmtune.adapters.lora``); a
transformers model has its own (GPT-NeoX: ``query_key_value``, ``dense``, ``dense_h_to_4h``, ``dense_4h_to_h``).
``lora.targets`` takes them as PEFT's ``target_modules`` does: a name matches a module whose path is it or ends
with ``.name``, and only ``nn.Linear`` layers are adapted, never the output head. ``all_linear`` is every such
layer (PEFT's ``all-linear``). So the adapter exported with these names (``lmtune.export.peft_adapter``) is the
one PEFT builds on the same base.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch.nn import Module

from lmtune.catalog.specs import ModelSpec
from lmtune.catalog.transformers_dir import transformers_config
from lmtune.errors import UserError
from lmtune.options.lora import ALL_LINEAR


def linear_paths(hf: Module) -> list[str]:
    """The paths of ``hf``'s ``nn.Linear`` layers (the output head left out), in module order."""
    head = hf.get_output_embeddings()  # type: ignore[operator]
    return [name for name, m in hf.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def matches(path: str, target: str) -> bool:
    """PEFT's rule for a ``target_modules`` name: the whole path, or its last components."""
    return path == target or path.endswith("." + target)


def adapted_paths(hf: Module, targets: Iterable[str]) -> list[str]:
    names = list(targets)
    return [path for path in linear_paths(hf) if any(matches(path, t) for t in names)]


def transformers_target_names(targets: list[str] | str, model: ModelSpec) -> list[str]:
    """``lora.targets`` -> names of the model's linear layers (``all_linear``: each distinct last name), checked."""
    from transformers import AutoModelForCausalLM

    directory = model.config.get("directory")
    if not directory:
        raise UserError(f"model '{model.name}' ({model.source}) names no transformers directory (model_config.directory), so lmtune cannot tell its linear layers for LoRA.")
    with torch.device("meta"):  # the module tree alone: no weights are made or read
        hf = AutoModelForCausalLM.from_config(transformers_config(Path(str(directory))))
    paths = linear_paths(hf)
    known = list(dict.fromkeys(path.rpartition(".")[2] for path in paths))
    names = list(known) if targets == ALL_LINEAR else [targets] if isinstance(targets, str) else list(targets)
    valid = ", ".join([*known, ALL_LINEAR])
    for name in names:
        if not any(matches(path, name) for path in paths):
            raise UserError(f"config key 'lora.targets': '{name}' is not a linear layer of model '{model.name}' ({type(hf).__name__}); valid: {valid}.")
    if not names:
        raise UserError(f"config key 'lora.targets' is empty; name linear layers of model '{model.name}' ({valid}).")
    return list(dict.fromkeys(names))
