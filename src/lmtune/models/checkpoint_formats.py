"""Checkpoint layouts that fairseq2 0.8.1 refuses as-is, read by lmtune itself.

Hugging Face Llama directories saved by transformers before 4.31 (the Llama 1/2
conversions and many fine-tunes made from them) hold one
``model.layers.N.self_attn.rotary_emb.inv_freq`` buffer per layer. transformers
skips these on load; fairseq2 reports them as unexpected keys and refuses the whole
checkpoint. They are recomputed from the config, so lmtune drops them and converts
the rest with fairseq2's own Llama converter.

Only in-process loading (``lmtune.models.loading.load_model``) goes through here; the
training recipe loads checkpoints with fairseq2's loader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.gang import Gangs
    from fairseq2.models import ModelFamily
    from fairseq2.models.llama import LLaMAConfig

STALE_ROTARY_KEY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob("*.safetensors"))
    return [path] if path.suffix == ".safetensors" else []


def has_stale_rotary_buffers(path: Path) -> bool:
    """Whether a Hugging Face safetensors checkpoint holds the pre-4.31 rotary buffers."""
    from safetensors import safe_open

    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            if any(STALE_ROTARY_KEY.match(key) for key in f.keys()):  # noqa: SIM118  # safe_open is no dict
                return True
    return False


def load_llama_without_stale_rotary_buffers(family: ModelFamily, config: LLaMAConfig, gangs: Gangs, dtype: torch.dtype, path: Path, name: str) -> torch.nn.Module:
    """A Llama model filled from an HF checkpoint for which has_stale_rotary_buffers is true."""
    from fairseq2.models.llama import convert_llama_state_dict
    from fairseq2.nn.utils.module import reset_non_persistent_buffers, to_empty
    from safetensors.torch import load_file

    state: dict[str, object] = {}
    for file in _safetensors_files(path):
        state.update((key, t) for key, t in load_file(str(file)).items() if not STALE_ROTARY_KEY.match(key))
    # Built on the meta device: every weight comes from the checkpoint, so nothing is initialised twice.
    model = family.create_new_model(config, gangs, dtype, meta=True, init_rank0_only=False)
    to_empty(model, gangs.root.device)
    try:
        model.load_state_dict(convert_llama_state_dict(state, config))  # strict: every weight must be there
    except (KeyError, RuntimeError) as ex:
        reason = str(ex).strip().splitlines()[0]
        raise UserError(f"model '{name}': checkpoint {path} does not fit the card's llama architecture and model_config ({reason}).") from None
    reset_non_persistent_buffers(model)
    return model
