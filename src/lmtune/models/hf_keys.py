"""fairseq2 tensor names and layouts -> Hugging Face Llama / Qwen2 / Qwen3 / OLMo 2 ones.

The names are one literal table: Llama, Qwen2 and Qwen3 share the HF layout, and a
tensor a family does not have (biases, q/k norms) simply never arrives. OLMo 2 differs
only in where its two norms sit (after attention and after the FFN, not before them):
FAMILY_LAYER_KEYS. A name missing from the table is an error, never silently dropped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lmtune.errors import UserError

if TYPE_CHECKING:
    import torch

# fairseq2 name inside decoder.layers.N  ->  HF name inside model.layers.N
LAYER_KEYS: dict[str, str] = {
    "self_attn_layer_norm.weight": "input_layernorm.weight",
    "self_attn.q_proj.weight":     "self_attn.q_proj.weight",
    "self_attn.q_proj.bias":       "self_attn.q_proj.bias",
    "self_attn.k_proj.weight":     "self_attn.k_proj.weight",
    "self_attn.k_proj.bias":       "self_attn.k_proj.bias",
    "self_attn.v_proj.weight":     "self_attn.v_proj.weight",
    "self_attn.v_proj.bias":       "self_attn.v_proj.bias",
    "self_attn.q_norm.weight":     "self_attn.q_norm.weight",
    "self_attn.k_norm.weight":     "self_attn.k_norm.weight",
    "self_attn.output_proj.weight": "self_attn.o_proj.weight",
    "ffn_layer_norm.weight":       "post_attention_layernorm.weight",
    "ffn.gate_proj.weight":        "mlp.gate_proj.weight",
    "ffn.inner_proj.weight":       "mlp.up_proj.weight",
    "ffn.output_proj.weight":      "mlp.down_proj.weight",
}  # fmt: skip

TOP_KEYS: dict[str, str] = {
    "decoder_frontend.embed.weight": "model.embed_tokens.weight",
    "decoder.layer_norm.weight":     "model.norm.weight",
    "final_proj.weight":             "lm_head.weight",
}  # fmt: skip

# Per family, the LAYER_KEYS entries whose HF name differs. fairseq2's OLMo keeps Llama's module
# names for its post-norms (self_attn_layer_norm, ffn_layer_norm), HF names them by position.
FAMILY_LAYER_KEYS: dict[str, dict[str, str]] = {
    "olmo": {
        "self_attn_layer_norm.weight": "post_attention_layernorm.weight",
        "ffn_layer_norm.weight":       "post_feedforward_layernorm.weight",
    },
}  # fmt: skip

LAYER_NAME = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")

# The families the table describes: what lmtune exports to Hugging Face and adapts with LoRA.
HF_FAMILIES = ("llama", "qwen", "olmo")


def projection_modules() -> dict[str, str]:
    """Hugging Face projection name (q_proj, ..., down_proj) -> fairseq2 module inside decoder.layers.N,
    read from LAYER_KEYS, in its order: the linear layers LoRA may adapt."""
    return {hf.split(".")[-2]: fs2.removesuffix(".weight") for fs2, hf in LAYER_KEYS.items() if hf.endswith("_proj.weight")}


def hf_name(name: str, family: str = "llama") -> str:
    m = LAYER_NAME.match(name)
    if m is not None and m.group(2) in LAYER_KEYS:
        key = FAMILY_LAYER_KEYS.get(family, {}).get(m.group(2)) or LAYER_KEYS[m.group(2)]
        return f"model.layers.{m.group(1)}.{key}"
    if name in TOP_KEYS:
        return TOP_KEYS[name]
    raise UserError(f"the checkpoint holds tensor '{name}', which has no Hugging Face counterpart in lmtune's Llama/Qwen/OLMo key table; is it a model of another family?")


def is_lm_head(name: str) -> bool:
    return name == "final_proj.weight"


def rotary_to_hf(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """fairseq2's Llama rotates interleaved pairs (0,1),(2,3)...; HF's Llama rotates halves
    (0,d/2),(1,d/2+1)...: reorder each head's q/k output rows from the first order to the second."""
    model_dim = weight.shape[-1]
    return weight.view(num_heads, head_dim // 2, 2, model_dim).transpose(1, 2).reshape(num_heads * head_dim, model_dim)


def to_hf_tensor(name: str, tensor: torch.Tensor, family: str, config: object, head_dim: int) -> torch.Tensor:
    """The tensor in HF layout. Only Llama needs q/k rows reordered: fairseq2's Qwen and OLMo already use HF's rotary layout."""
    if family == "llama" and name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
        heads = config.num_attn_heads if ".q_proj." in name else config.num_key_value_heads  # type: ignore[attr-defined]
        return rotary_to_hf(tensor, heads, head_dim)
    return tensor


def cast(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast, refusing a cast that turns finite weights into infinities (float16's range ends at 65504)."""
    import torch

    if not tensor.is_floating_point():
        raise UserError(f"checkpoint tensor '{name}' has dtype {tensor.dtype}, not a floating-point type; lmtune exports float32, bfloat16 or float16 weights only.")
    out = tensor.to(dtype)
    if out.dtype != tensor.dtype and bool(torch.isinf(out).any()) and not bool(torch.isinf(tensor).any()):
        biggest = float(tensor.abs().max())
        dname = str(dtype).removeprefix("torch.")
        raise UserError(f"weights cannot be cast to {dname}: tensor '{name}' holds values up to {biggest:.4g}, beyond {dname}'s range; use --dtype bfloat16 or float32.")
    return out
