"""``config.json`` of an OLMo 3 export (``Olmo3ForCausalLM``), from fairseq2's OLMo config.

OLMo 2's keys (``olmo_config``) plus the sliding window, every layer's type written out (fairseq2's
default pattern also makes the last layer full, transformers' does not), and YaRN as transformers
reads it, with the attention factor fairseq2 computes written explicitly. lmtune builds OLMo 3 with
YaRN on the full-attention layers only, as transformers runs it (lmtune.models.olmo3_rope).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fairseq2.models.olmo import OLMOConfig, YaRNScaleConfig


def fairseq2_layer_types(config: OLMOConfig) -> list[str]:
    """The layer types fairseq2's OLMo factory builds: the config's, or its default pattern
    (every 4th layer and the last one full)."""
    if config.layer_types is not None:
        return list(config.layer_types)
    n = config.num_layers
    return ["full_attention" if i == n - 1 or (i + 1) % 4 == 0 else "sliding_attention" for i in range(n)]


def yarn_attention_factor(yarn: YaRNScaleConfig) -> float:
    """The factor fairseq2's YaRNRotaryEncoder scales cos and sin by."""

    def get_mscale(m: float) -> float:
        return 1.0 if yarn.scale_factor <= 1 else 0.1 * m * math.log(yarn.scale_factor) + 1.0

    if yarn.mscale and yarn.mscale_all_dim:
        return get_mscale(yarn.mscale) / get_mscale(yarn.mscale_all_dim)
    return get_mscale(yarn.mscale or 1.0)


def olmo3_hf_config(config: OLMOConfig, common: dict[str, object]) -> dict[str, object]:
    """``common``: the keys every family's export shares (sizes, theta, ids, dtype)."""
    rope_scaling = None
    yarn = config.yarn_scale_config
    if yarn is not None:
        rope_scaling = {
            "rope_type": "yarn",
            "factor": float(yarn.scale_factor),
            "original_max_position_embeddings": int(yarn.original_max_seq_len),
            "beta_fast": float(yarn.beta_fast),
            "beta_slow": float(yarn.beta_slow),
            "attention_factor": yarn_attention_factor(yarn),
            "truncate": bool(yarn.truncate),
        }
    return {
        "architectures": ["Olmo3ForCausalLM"],
        "model_type": "olmo3",
        **common,
        "intermediate_size": config.ffn_inner_dim,
        "rms_norm_eps": float(config.rms_norm_eps),
        "rope_scaling": rope_scaling,
        "attention_bias": False,
        "sliding_window": config.sliding_window,
        "layer_types": fairseq2_layer_types(config),
    }
