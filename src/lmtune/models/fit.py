"""Whether a tokenizer and a sequence length fit a model, checked before any step runs:
token ids beyond the embedding table, or positions beyond the model's maximum, would
crash the first batch that holds one."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from lmtune.catalog.specs import TokenizerSpec
from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer


def tokenizer_size(spec: TokenizerSpec, tokenizer: Tokenizer) -> int:
    """Highest token id + 1. fairseq2's vocab_info leaves out a tokenizer.json's added
    tokens, which the chat template or a user's data may still produce."""
    size = int(tokenizer.vocab_info.size)
    if spec.hf_dir is None:
        return size
    data = json.loads((spec.hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
    return max(size, max(ids, default=-1) + 1)


def check_vocabulary(model_name: str, model_config: object, spec: TokenizerSpec, tokenizer: Tokenizer) -> None:
    vocab_size = getattr(model_config, "vocab_size", None)
    size = tokenizer_size(spec, tokenizer)
    if vocab_size is not None and size > vocab_size:
        raise UserError(f"tokenizer '{spec.name}' has {size} tokens but model '{model_name}' has vocab_size={vocab_size}; use the model's own tokenizer or a model with a larger vocabulary.")


def fitted_max_seq_len(model_name: str, model_config: object, max_seq_len: int, *, warn: bool = True) -> int:
    """``max_seq_len``, or the model's maximum when that is shorter (with a warning)."""
    model_max = getattr(model_config, "max_seq_len", None)
    if model_max is None or max_seq_len <= model_max:
        return max_seq_len
    if warn:
        print(f"lmtune: warning: max_seq_len={max_seq_len} is longer than model '{model_name}' allows; using max_seq_len={model_max}.", file=sys.stderr)
    return int(model_max)
