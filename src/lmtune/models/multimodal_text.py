"""The language model of a multimodal Hugging Face directory (google/gemma-3-4b-it and up:
Gemma3ForConditionalGeneration, a SigLIP vision tower and projector beside the language model),
fine-tuned alone as the causal LM its ``text_config`` describes (Gemma3ForCausalLM).

The directory's language-model tensors are renamed to that causal LM's names and the vision
tensors left out; the export is then a text-only directory. Saves name the language model
``language_model.model.X`` (older ones, and transformers 4.57's own ``save_pretrained``) or
``model.language_model.X`` (transformers >= 4.52's in-memory names); ``lm_head.weight`` is absent
when tied to the embeddings.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The multimodal names -> the causal LM's, first match wins.
TEXT_KEYS = (
    (re.compile(r"^language_model\.model\."), "model."),
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
)
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")

_said: set[str] = set()


def text_model_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's tensors under the causal LM's names; the vision tower's and projector's dropped.
    A text-only state dict comes back as it is."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(VISION_PREFIXES):
            continue
        for pattern, replacement in TEXT_KEYS:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        out[key] = value
    return out


def say_vision_left_out(directory: Path, architecture: str) -> None:
    """Once per directory and process, on stderr: only the language model is fine-tuned."""
    if str(directory) in _said:
        return
    _said.add(str(directory))
    print(f"lmtune: {directory} is multimodal ({architecture}); its vision tower is left out and its language model is fine-tuned as a text-only causal LM.", file=sys.stderr)
