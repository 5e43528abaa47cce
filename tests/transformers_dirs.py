"""Tiny random Hugging Face model directories written by transformers itself, with a tokenizer the
tests build beside the weights: what a user's local directory of that family holds."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tiny_builders import (
    QWEN2_SPLIT,
    QWEN_CHAT_TEMPLATE,
    _hf_tokenizer,
    bpe_ranks,
    write_hf_llama3_tokenizer,
    write_hf_qwen_tokenizer,
)

SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
# YaRN as the OLMo 3 7B checkpoints have it (factor 8, betas 32 and 1), scaled to a tiny context.
OLMO3_YARN = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.2079441541679836}
OLMO3_SIZES = dict(num_hidden_layers=4, rope_theta=50_000.0, sliding_window=8, rope_scaling=OLMO3_YARN, layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"])
OLMO_SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def write_olmo_tokenizer(out_dir: Path) -> dict[str, int]:
    """As allenai/OLMo-2-*: byte-level BPE, <|endoftext|> as BOS/EOS, <|pad|>, ChatML turns; returns the special ids."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = bpe_ranks(QWEN2_SPLIT)
    tok = _hf_tokenizer(ranks, QWEN2_SPLIT, OLMO_SPECIAL, out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>",
        "unk_token": "<|endoftext|>", "model_max_length": 4096, "clean_up_tokenization_spaces": False, "chat_template": QWEN_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {name: len(ranks) + i for i, name in enumerate(OLMO_SPECIAL)}


def write_transformers_dir(model_type: str, out: Path, seed: int = 0, weight_std: float = 0.2, **changes: object) -> Path:
    """A tiny random model of ``model_type`` saved by transformers (norms and biases random
    too), with a matching tokenizer. ``weight_std``: wider models need smaller weights for logits
    of a few units, which two float32 implementations agree on to 1e-5."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type in ("qwen2", "qwen3"):
        config = AutoConfig.for_model(model_type, **{**SIZES, "vocab_size": 448, "tie_word_embeddings": True, "rms_norm_eps": 1e-6, **changes})
        write_hf_qwen_tokenizer(out, bpe_ranks(QWEN2_SPLIT), instruct=False)
    elif model_type == "olmo2":
        ids = write_olmo_tokenizer(out)
        special = {"pad_token_id": ids["<|pad|>"], "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"]}
        config = AutoConfig.for_model("olmo2", **{**SIZES, "vocab_size": 448, "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 50_000.0, **special, **changes})
    elif model_type == "olmo3":
        # As allenai/Olmo-3-7B-*: sliding layers (3 of 4) and YaRN rope, here 4 layers with a window
        # of 8 tokens and YaRN from 32 positions, so that both act on the tests' 40-token inputs.
        ids = write_olmo_tokenizer(out)
        special = {"pad_token_id": ids["<|pad|>"], "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"]}
        olmo3 = {**OLMO3_SIZES, **special, **changes}
        config = AutoConfig.for_model("olmo3", **{**SIZES, "vocab_size": 448, "tie_word_embeddings": False, "rms_norm_eps": 1e-6, **olmo3})
    else:  # llama, mistral
        config = AutoConfig.for_model(model_type, **{**SIZES, "vocab_size": 704, "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 50_000.0, **changes})
        write_hf_llama3_tokenizer(out, bpe_ranks(), instruct=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * weight_std + (1.0 if p.dim() == 1 else 0.0))
    model.save_pretrained(out)
    return out
