"""A Hugging Face directory lmtune has no native family for, read by transformers itself.

Gemma 3, Phi-3, Granite, GPT-NeoX, SmolLM...: whatever ``AutoConfig`` knows without remote code
is a causal LM that ``lmtune.models.transformers_family`` can wrap. Only the local directory is read
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
        return AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as ex:
        text = str(ex).strip()
        first = text.splitlines()[0] if text else type(ex).__name__
        raise UserError(f"{directory / 'config.json'}: transformers cannot build this model ({first}); lmtune takes causal LMs that transformers knows without remote code.") from None


def transformers_architecture(directory: Path) -> str:
    """The causal LM class transformers would build for the directory (``GPTNeoXForCausalLM``), or a UserError."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    config = transformers_config(directory)
    kls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if kls is None:
        raise UserError(f"{directory / 'config.json'}: model_type {config.model_type!r} is no causal LM transformers builds; lmtune fine-tunes causal LMs.")
    return str(getattr(kls, "__name__", kls))


def not_native_sentence(directory: Path, model_type: object, native: list[str]) -> str:
    """Why a directory whose model_type is no native family cannot be a card's model yet: transformers'
    own refusal, or which causal LM it is and where lmtune takes it (the Python API, not yet the CLI)."""
    where = directory / "config.json"
    try:
        architecture = transformers_architecture(directory)
    except UserError as ex:
        return str(ex)
    return (
        f"{where}: model_type {model_type!r} ({architecture}) is no family lmtune builds natively ({', '.join(native)}); "
        "its transformers-backed wrapper (lmtune.models.transformers_family) trains, generates and exports it from Python, but the CLI recipes do not take it yet."
    )
