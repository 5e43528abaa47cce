"""A Hugging Face directory lmtune has no native family for, read by transformers itself.

Gemma 3, Phi-3, Granite, GPT-NeoX, SmolLM...: whatever ``AutoConfig`` knows without remote code
is a causal LM that ``lmtune.models.transformers_family`` can wrap; a multimodal directory
(Gemma 3 4B and up) is read as its language model (``text_config``, ``lmtune.models.multimodal_text``).
Only the local directory is read
(``local_files_only=True``); transformers is imported here, on this path alone, because it is heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.errors import UserError


def transformers_config(directory: Path) -> Any:
    """The directory's config as transformers reads it; a UserError when transformers does not know it."""
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory} has no config.json; point 'checkpoint:' at a Hugging Face model directory.")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as ex:
        text = str(ex).strip()
        first = text.splitlines()[0] if text else type(ex).__name__
        raise UserError(f"{directory / 'config.json'}: transformers cannot build this model ({first}); lmtune takes causal LMs that transformers knows without remote code.") from None
    text_config = getattr(config, "text_config", None)
    if multimodal_architecture(directory) is not None and text_config is not None:
        return text_config  # the language model alone; its vision tower is left out
    return config


def multimodal_architecture(directory: Path) -> str | None:
    """``Gemma3ForConditionalGeneration`` for a directory whose config.json has both a text_config and a
    vision_config (a vision tower beside the language model); None for a text-only directory."""
    import json

    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("text_config"), dict) or not isinstance(raw.get("vision_config"), dict):
        return None
    archs = raw.get("architectures")
    return str(archs[0]) if isinstance(archs, list) and archs else str(raw.get("model_type", "multimodal"))


def transformers_architecture(directory: Path) -> str:
    """The causal LM class transformers would build for the directory (``GPTNeoXForCausalLM``), or a UserError."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    config = transformers_config(directory)
    kls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if kls is None:
        raise UserError(f"{directory / 'config.json'}: model_type {config.model_type!r} is no causal LM transformers builds; lmtune fine-tunes causal LMs.")
    return str(getattr(kls, "__name__", kls))


def transformers_fields(directory: Path) -> dict[str, object]:
    """The card keys of a directory lmtune builds through transformers (``lmtune.models.transformers_fairseq2``):
    its tokenizer is read from ``tokenizer.json`` as GPT-2's is (byte-level BPE), ending responses with the
    directory's own EOS token."""
    import json

    architecture = transformers_architecture(directory)
    config = transformers_config(directory)
    sizes = {key: value for key, value in (("max_seq_len", getattr(config, "max_position_embeddings", None)), ("vocab_size", getattr(config, "vocab_size", None))) if isinstance(value, int)}
    fields: dict[str, object] = {
        "model_family": "transformers", "model_config": {"directory": str(directory.resolve()), **sizes}, "tokenizer_family": "gpt2",
        "hf_architecture": architecture, "hf_model_type": config.model_type,
    }  # fmt: skip
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            eos = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("eos_token")
        except (OSError, ValueError, AttributeError):
            eos = None
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            fields["tokenizer_config"] = {"eos_token": eos}
    return fields
