"""Loading a ModelSpec / TokenizerSpec in-process with fairseq2's model and tokenizer families.

Recipes load through fairseq2's recipe runtime; this module is for everything
else that needs a model in hand: generation, export, tests.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from lmtune.catalog.specs import ModelSpec, TokenizerSpec
from lmtune.errors import UserError
from lmtune.files import deep_merge
from lmtune.models.checkpoint_formats import (
    has_stale_rotary_buffers,
    load_llama_without_stale_rotary_buffers,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fairseq2.data.tokenizers import Tokenizer
    from fairseq2.models import ModelFamily
    from fairseq2.models.llama import LLaMAConfig
    from fairseq2.runtime.dependency import DependencyContainer, DependencyResolver
    from fairseq2.utils.structured import ValueConverter


def resolver() -> DependencyResolver:
    """fairseq2's dependency resolver (initialising fairseq2, with lmtune's ``gpt2`` family, when
    nothing has), reading tensor files with lmtune.safe_load's loader: checkpoint files never run code."""
    from fairseq2 import init_fairseq2
    from fairseq2.error import InvalidOperationError
    from fairseq2.runtime.dependency import get_dependency_resolver

    from lmtune.models.olmo3_rope import use_transformers_olmo3_rope
    from lmtune.safe_load import use_safe_tensor_loader

    # lmtune's own families join fairseq2's when lmtune is the first to start it; when fairseq2 has
    # started already (an earlier call, or a recipe's run, whose ``register`` adds them), nothing to do.
    with suppress(InvalidOperationError):
        init_fairseq2(extras=_register_lmtune_families)
    found = get_dependency_resolver()
    use_safe_tensor_loader(found)
    use_transformers_olmo3_rope(found)  # OLMo 3's sliding layers without YaRN, as transformers runs them
    return found


def _register_lmtune_families(container: DependencyContainer) -> None:
    """lmtune's own model families: GPT-2, and any other causal LM transformers builds."""
    from lmtune.models.gpt2 import register_gpt2_family
    from lmtune.models.transformers_fairseq2 import register_transformers_family

    register_gpt2_family(container)
    register_transformers_family(container)


def model_family(name: str) -> ModelFamily:
    from fairseq2.models import ModelFamily

    family = resolver().maybe_resolve(ModelFamily, key=name)
    if family is None:
        raise UserError(f"model_family '{name}' is not known to fairseq2 (known: llama, qwen, mistral, ...).")
    return family


def _unstructured(converter: ValueConverter, config: object) -> dict[str, Any]:
    """A config dataclass as the nested dicts fairseq2's converter makes of it."""
    out = converter.unstructure(config)
    assert isinstance(out, dict)
    return out


def model_config(spec: ModelSpec) -> object:
    from fairseq2.utils.structured import ValueConverter

    family = model_family(spec.family)
    if spec.arch is not None:
        config = family.maybe_get_arch_config(spec.arch)
        if config is None:
            raise UserError(f"model '{spec.name}': model_arch '{spec.arch}' is not a {spec.family} architecture.")
    else:
        config = family.config_kls()
    if not spec.config:
        return config
    converter = resolver().resolve(ValueConverter)
    merged = deep_merge(_unstructured(converter, config), spec.config)
    try:
        structured = converter.structure(merged, family.config_kls)
    except Exception as ex:
        raise UserError(f"model '{spec.name}': model_config does not fit a {spec.family} model ({ex}).") from None
    validate = getattr(structured, "validate", None)  # a config that checks itself (fairseq2's Validatable: GPT-2's)
    if validate is not None and (result := validate()).has_error():
        raise UserError(f"model '{spec.name}': model_config is not a valid {spec.family} configuration: {result}")
    return structured


def model_width(spec: ModelSpec) -> int | None:
    """The model's ``model_dim`` (a LoRA checkpoint's: its base's), which lmtune.precision weighs on a CPU."""
    config = model_config(spec.lora.base if spec.lora is not None else spec)
    width = getattr(config, "model_dim", None)
    return width if isinstance(width, int) else None


def load_model(spec: ModelSpec, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32, seed: int | None = None) -> torch.nn.Module:
    """The model in eval mode; randomly initialised when the spec has no checkpoint
    (``init: random``), the same weights for the same ``seed``."""
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    if spec.lora is not None:
        raise ValueError(f"{spec.name} is a LoRA checkpoint: load it with lmtune.adapters.build.load_any_model")
    family = model_family(spec.family)
    config = model_config(spec)
    gangs = create_fake_gangs(device or CPU)
    if spec.checkpoint is None:
        if seed is not None:
            torch.manual_seed(seed)
        model = family.create_new_model(config, gangs, dtype, meta=False, init_rank0_only=False)
    elif spec.family == "llama" and has_stale_rotary_buffers(Path(spec.checkpoint)):
        model = load_llama_without_stale_rotary_buffers(family, cast("LLaMAConfig", config), gangs, dtype, Path(spec.checkpoint), spec.name)
    else:
        model = family.load_custom_model(Path(spec.checkpoint), config, gangs, dtype, False, False, None)
    model.eval()
    return model


def iter_model_tensors(spec: ModelSpec) -> Iterator[tuple[str, torch.Tensor]]:
    """(fairseq2 key, tensor) for each tensor of ``spec``'s weights, one at a time, read by
    fairseq2's checkpoint loader (memory-mapped, converted to fairseq2's keys)."""
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    if spec.checkpoint is None:  # randomly initialised (``init: random``)
        yield from load_model(spec).state_dict().items()
        return
    try:
        yield from model_family(spec.family).iter_checkpoint(Path(spec.checkpoint), model_config(spec), create_fake_gangs(CPU), True, None)
    except (KeyError, RuntimeError, ValueError) as ex:
        reason = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise UserError(f"model '{spec.name}': checkpoint {spec.checkpoint} cannot be read as a {spec.family} model ({reason}).") from None


def load_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    from fairseq2.data.tokenizers import TokenizerFamily
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.utils.structured import ValueConverter

    family = resolver().maybe_resolve(TokenizerFamily, key=spec.family)
    if family is None:
        raise UserError(f"tokenizer_family '{spec.family}' is not known to fairseq2.")
    converter = resolver().resolve(ValueConverter)
    config = converter.structure(deep_merge(_unstructured(converter, family.config_kls()), spec.config), family.config_kls)
    return family.load_custom_tokenizer(spec.path, config, create_fake_gangs(CPU))
