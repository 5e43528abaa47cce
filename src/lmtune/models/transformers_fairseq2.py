"""The transformers-backed wrapper (``lmtune.models.transformers_family``) as a fairseq2 model family,
so the CLI recipes train, checkpoint, resume and generate with it as with a native family.

A card naming a local Hugging Face directory whose model_type lmtune does not build natively gets
``model_family: transformers`` and ``model_config: {directory: DIR}``: the family builds transformers'
model from that directory's config.json and fairseq2 then loads the weights from the checkpoint,
the directory's safetensors at first (keys gain the wrapper's ``hf.`` prefix), lmtune's own
checkpoints afterwards (keys have it already).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import torch

from lmtune.models.transformers_family import (
    TransformersCausalLM,
    load_transformers_causal_lm,
)

if TYPE_CHECKING:
    from fairseq2.runtime.dependency import DependencyContainer

TRANSFORMERS_FAMILY: Final = "transformers"


@dataclass(kw_only=True)
class TransformersModelConfig:
    directory: str = ""
    """The local Hugging Face directory whose config.json says what transformers builds."""
    max_seq_len: int = 2048
    """Its max_position_embeddings: what lmtune's length checks read, as for a fairseq2 decoder config."""
    vocab_size: int | None = None


def create_transformers_model(config: TransformersModelConfig) -> TransformersCausalLM:
    if not config.directory:
        raise ValueError("a transformers-backed model needs model_config.directory (a local Hugging Face directory).")
    # Fresh weights from the config; fairseq2 overwrites them with the checkpoint's.
    return load_transformers_causal_lm(Path(config.directory), random_init=True, dtype=torch.get_default_dtype())


def convert_transformers_state_dict(state_dict: dict[str, Any], config: TransformersModelConfig) -> dict[str, Any]:
    """A transformers checkpoint's keys under the wrapper's ``hf.``; lmtune's own checkpoints have it already.
    A multimodal directory's (Gemma 3 4B) language model keeps its tensors alone, under the causal LM's names."""
    from lmtune.models.multimodal_text import text_model_state_dict

    if any(key.startswith("hf.") for key in state_dict):
        return {key if key.startswith("hf.") else f"hf.{key}": value for key, value in state_dict.items()}
    return {f"hf.{key}": value for key, value in text_model_state_dict(state_dict).items()}


def hf_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The wrapper's state dict as transformers names it (``hf.`` stripped)."""
    return {key.removeprefix("hf."): value for key, value in state_dict.items()}


def register_transformers_family(container: DependencyContainer) -> None:
    """The ``transformers`` model family beside fairseq2's; registering twice does nothing."""
    from fairseq2.composition import register_model_family
    from fairseq2.models import ModelFamily

    from lmtune.fairseq2_internals import has_registration

    if has_registration(container, ModelFamily, TRANSFORMERS_FAMILY):
        return
    # No meta-device init: transformers builds non-persistent buffers (rotary tables) in its constructor.
    register_model_family(
        container, TRANSFORMERS_FAMILY, kls=TransformersCausalLM, config_kls=TransformersModelConfig, factory=create_transformers_model,
        supports_meta=False, state_dict_converter=convert_transformers_state_dict,
    )  # fmt: skip
