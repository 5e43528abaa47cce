"""``config.json`` and ``generation_config.json`` of a Hugging Face export, from a fairseq2 model config.

Written here, key by key, instead of through fairseq2's converters: those derive
Llama's ``intermediate_size`` from ``model_dim`` alone (wrong for any other
``ffn_inner_dim``), hard-code Llama 3's BOS/EOS ids for every vocabulary, and
leave out ``head_dim`` and the RMSNorm epsilon of Qwen models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from lmtune.errors import UserError
from lmtune.models.hf_keys import HF_FAMILIES

if TYPE_CHECKING:
    from fairseq2.models.llama import LLaMAConfig
    from fairseq2.models.olmo import OLMOConfig
    from fairseq2.models.qwen import QwenConfig

# The families lmtune exports: those of the key table, and GPT-2 (lmtune.models.gpt2_hf).
EXPORTABLE_FAMILIES = (*HF_FAMILIES, "gpt2", "transformers")  # transformers: lmtune.export.transformers_export

# fairseq2 builds Llama's RMSNorm with its default epsilon and Qwen's with 1e-6.
LLAMA_RMS_NORM_EPS = 1e-5
QWEN_RMS_NORM_EPS = 1e-6


@dataclass(kw_only=True)
class SpecialIds:
    """Token ids the export must agree on with lmtune's tokenizer."""

    bos: int | None
    eos: int | None
    pad: int | None
    stops: list[int]
    """Every id that ends a generation: the tokenizer's EOS first, then the other end-of-turn/text tokens it has."""


def llama_ffn_inner_dim(config: LLaMAConfig) -> int:
    """The width fairseq2's Llama factory gives its SwiGLU layers (GLUFeedForwardNetwork's rounding)."""
    inner = int(config.ffn_inner_dim * config.ffn_inner_dim_multiplier)
    if config.ffn_inner_dim_scale != 1.0:
        inner = int(inner * config.ffn_inner_dim_scale)
    multiple = config.ffn_inner_dim_multiple_of
    if multiple != 1:
        inner = multiple * ((inner + multiple - 1) // multiple)
    return inner


def qwen_architecture(config: QwenConfig) -> str:
    """Qwen2 has q/k/v biases and no q/k norms; Qwen3 the reverse. Anything else has no HF class."""
    bias, q_norm, k_norm = config.qkv_proj_bias, config.q_norm, config.k_norm
    if bias and not q_norm and not k_norm:
        return "Qwen2ForCausalLM"
    if not bias and q_norm and k_norm:
        return "Qwen3ForCausalLM"
    raise UserError(f"a qwen model with qkv_proj_bias={bias}, q_norm={q_norm}, k_norm={k_norm} has no Hugging Face architecture; Qwen2 has q/k/v biases and no q/k norms, Qwen3 has q/k norms and no biases.")


def head_dim(family: str, config: LLaMAConfig | QwenConfig | OLMOConfig) -> int:
    explicit = getattr(config, "head_dim", None) if family == "qwen" else None
    return explicit or config.model_dim // config.num_attn_heads


def hf_config(family: str, config: LLaMAConfig | QwenConfig | OLMOConfig, ids: SpecialIds, dtype: str, transformers_version: str) -> dict[str, object]:
    c = config
    common: dict[str, object] = {
        "vocab_size": c.vocab_size,
        "hidden_size": c.model_dim,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_attn_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": head_dim(family, c),
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "rope_theta": float(c.rope_theta),
        "tie_word_embeddings": bool(c.tied_embeddings),
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "torch_dtype": dtype,
        "transformers_version": transformers_version,
    }
    if family == "olmo":
        from lmtune.export.olmo_config import olmo_hf_config

        return olmo_hf_config(cast("OLMOConfig", c), common)
    if family == "llama":
        llama = cast("LLaMAConfig", c)
        rope_scaling = None
        if llama.use_scaled_rope:
            scale = llama.rope_scale
            rope_scaling = {
                "rope_type": "llama3",
                "factor": float(scale.factor),
                "low_freq_factor": float(scale.frequency_factors[0]),
                "high_freq_factor": float(scale.frequency_factors[1]),
                "original_max_position_embeddings": int(scale.original_context_length),
            }
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **common,
            "intermediate_size": llama_ffn_inner_dim(llama),
            "rms_norm_eps": LLAMA_RMS_NORM_EPS,
            "rope_scaling": rope_scaling,
            "attention_bias": False,
            "mlp_bias": False,
            "pretraining_tp": 1,
        }
    if family == "qwen":
        arch = qwen_architecture(cast("QwenConfig", c))
        out = {
            "architectures": [arch],
            "model_type": "qwen2" if arch == "Qwen2ForCausalLM" else "qwen3",
            **common,
            "intermediate_size": c.ffn_inner_dim,
            "rms_norm_eps": QWEN_RMS_NORM_EPS,
            "rope_scaling": None,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": c.num_layers,
        }
        if arch == "Qwen3ForCausalLM":
            out["attention_bias"] = False
        return out
    raise UserError(f"model family '{family}' has no Hugging Face exporter in lmtune; it exports: {', '.join(EXPORTABLE_FAMILIES)}.")


def generation_config(ids: SpecialIds, transformers_version: str) -> dict[str, object]:
    # Every stop id, so that an Instruct model ending turns with <|eot_id|> or <|im_end|>
    # stops in transformers and vLLM alike. No sampling defaults: vLLM would adopt them.
    return {
        "bos_token_id": ids.bos,
        "eos_token_id": ids.stops if len(ids.stops) > 1 else (ids.stops[0] if ids.stops else None),
        "pad_token_id": ids.pad,
        "transformers_version": transformers_version,
    }
