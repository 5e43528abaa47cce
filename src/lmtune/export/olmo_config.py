"""``config.json`` of an OLMo 2 export (``Olmo2ForCausalLM``), from fairseq2's OLMo config; an OLMo 3
model (a sliding window or YaRN) goes to ``olmo3_config``.

Key by key like Llama's and Qwen's (``hf_config``): fairseq2's own OLMo converter writes the
rope theta only inside ``rope_scaling`` (transformers 4.57 reads it from ``rope_theta`` and
would use its default), and takes the special ids from the model config rather than from
the tokenizer the export ships.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fairseq2.models.olmo import OLMOConfig


def olmo_hf_config(config: OLMOConfig, common: dict[str, object]) -> dict[str, object]:
    """``common``: the keys every family's export shares (sizes, theta, ids, dtype)."""
    if config.sliding_window is not None or config.yarn_scale_config is not None:
        from lmtune.export.olmo3_config import olmo3_hf_config

        return olmo3_hf_config(config, common)
    return {
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        **common,
        "intermediate_size": config.ffn_inner_dim,
        "rms_norm_eps": float(config.rms_norm_eps),
        "rope_scaling": None,
        "attention_bias": False,
    }
