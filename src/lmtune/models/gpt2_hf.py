"""GPT-2's tensors as transformers' ``GPT2LMHeadModel`` stores them <-> lmtune's fairseq2 GPT-2.

Three things differ besides the names:
- GPT-2's projections are ``Conv1D`` layers, whose weight is (in, out): the transpose of
  ``nn.Linear``'s (out, in).
- ``attn.c_attn`` holds the query, key and value projections in one (in, 3 * dim) tensor.
- fairseq2's learned position table has one more row, first, for padding (always zero).

Checkpoints saved by ``GPT2LMHeadModel.save_pretrained`` name tensors ``transformer.h.N...``;
the original OpenAI conversions (the Hub's ``gpt2`` ... ``gpt2-xl``) name them ``h.N...`` and
may carry each layer's causal-mask buffers (``attn.bias``, ``attn.masked_bias``), which are
dropped. A name missing from the tables is an error, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from lmtune.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

    from lmtune.models.gpt2 import Gpt2Config

# fairseq2 name inside decoder.layers.N  ->  HF name inside transformer.h.N (Conv1D weights are transposed)
LAYER_KEYS: dict[str, str] = {
    "self_attn_layer_norm.weight":  "ln_1.weight",
    "self_attn_layer_norm.bias":    "ln_1.bias",
    "self_attn.output_proj.weight": "attn.c_proj.weight",
    "self_attn.output_proj.bias":   "attn.c_proj.bias",
    "ffn_layer_norm.weight":        "ln_2.weight",
    "ffn_layer_norm.bias":          "ln_2.bias",
    "ffn.inner_proj.weight":        "mlp.c_fc.weight",
    "ffn.inner_proj.bias":          "mlp.c_fc.bias",
    "ffn.output_proj.weight":       "mlp.c_proj.weight",
    "ffn.output_proj.bias":         "mlp.c_proj.bias",
}  # fmt: skip

# q, k and v (weight and bias) are one HF tensor each: attn.c_attn.weight / attn.c_attn.bias, in this order.
FUSED_QKV = ("q_proj", "k_proj", "v_proj")

TOP_KEYS: dict[str, str] = {
    "decoder_frontend.embed.weight":       "transformer.wte.weight",
    "decoder_frontend.pos_encoder.weight": "transformer.wpe.weight",
    "decoder.layer_norm.weight":           "transformer.ln_f.weight",
    "decoder.layer_norm.bias":             "transformer.ln_f.bias",
}  # fmt: skip

FS2_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
HF_LAYER = re.compile(r"^h\.(\d+)\.(.+)$")
HF_MASK_BUFFERS = ("attn.bias", "attn.masked_bias")  # causal masks old conversions saved; recomputed, never learned


def is_hf_state_dict(state_dict: dict[str, object]) -> bool:
    return any(k in state_dict for k in ("transformer.wte.weight", "wte.weight"))


def convert_gpt2_state_dict(state_dict: dict[str, object], config: Gpt2Config) -> dict[str, object]:
    """fairseq2's ``state_dict_converter``: an HF GPT-2 state dict -> fairseq2 keys; a fairseq2 one
    (a training checkpoint) passes through. The head is tied to the embeddings either way."""
    import torch

    if is_hf_state_dict(state_dict):
        fs2_layer = {hf: fs2 for fs2, hf in LAYER_KEYS.items()}
        fs2_top = {hf.removeprefix("transformer."): fs2 for fs2, hf in TOP_KEYS.items()}
        out: dict[str, object] = {}
        for key, value in state_dict.items():
            tensor: Tensor = value  # type: ignore[assignment]
            name = key.removeprefix("transformer.")
            if name == "lm_head.weight":
                continue  # tied: the embeddings
            m = HF_LAYER.match(name)
            if m is None:
                if name not in fs2_top:
                    raise ValueError(f"tensor '{key}' is not a GPT-2 tensor")
                if name == "wpe.weight":  # fairseq2's row 0 is padding's
                    tensor = torch.cat([tensor.new_zeros(1, tensor.shape[1]), tensor])
                out[fs2_top[name]] = tensor
                continue
            layer, rest = f"decoder.layers.{m.group(1)}.", m.group(2)
            if rest in HF_MASK_BUFFERS:
                continue
            if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
                kind = rest.rsplit(".", 1)[1]
                parts = tensor.chunk(3, dim=-1)  # (in, 3 * dim) or (3 * dim,)
                for proj, part in zip(FUSED_QKV, parts):
                    out[f"{layer}self_attn.{proj}.{kind}"] = part.t().contiguous() if kind == "weight" else part.contiguous()
                continue
            if rest not in fs2_layer:
                raise ValueError(f"tensor '{key}' is not a GPT-2 tensor")
            out[layer + fs2_layer[rest]] = _from_conv1d(tensor) if rest.endswith("weight") and tensor.dim() == 2 else tensor
        state_dict = out
    state_dict["final_proj.weight"] = state_dict["decoder_frontend.embed.weight"]
    return state_dict


def _from_conv1d(tensor: Tensor) -> Tensor:
    return tensor.t().contiguous()


def hf_tensors(tensors: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """fairseq2 (name, tensor) pairs -> GPT2LMHeadModel's, in the same streaming order: each
    layer's q/k/v projections are held only until all three have arrived, then fused into c_attn.
    The tied head is left out (transformers ties it from ``tie_word_embeddings``)."""
    import torch

    pending: dict[str, dict[str, Tensor]] = {}
    for name, tensor in tensors:
        if name == "final_proj.weight":
            continue
        if name in TOP_KEYS:
            yield TOP_KEYS[name], tensor[1:] if name == "decoder_frontend.pos_encoder.weight" else tensor
            continue
        m = FS2_LAYER.match(name)
        if m is None:
            raise UserError(f"the checkpoint holds tensor '{name}', which has no counterpart in GPT-2's Hugging Face layout; is it a model of another family?")
        layer, rest = m.group(1), m.group(2)
        hf_layer = f"transformer.h.{layer}."
        qkv = re.fullmatch(r"self_attn\.([qkv]_proj)\.(weight|bias)", rest)
        if qkv is not None:
            proj, kind = qkv.groups()
            group = pending.setdefault(f"{layer}.{kind}", {})
            group[proj] = tensor
            if len(group) == 3:
                del pending[f"{layer}.{kind}"]
                if kind == "weight":  # Conv1D: (in, 3 * dim), q | k | v side by side
                    yield hf_layer + "attn.c_attn.weight", torch.cat([group[p].t() for p in FUSED_QKV], dim=1)
                else:
                    yield hf_layer + "attn.c_attn.bias", torch.cat([group[p] for p in FUSED_QKV])
            continue
        if rest not in LAYER_KEYS:
            raise UserError(f"the checkpoint holds tensor '{name}', which has no counterpart in GPT-2's Hugging Face layout; is it a model of another family?")
        is_conv1d = rest.endswith("proj.weight")
        yield hf_layer + LAYER_KEYS[rest], tensor.t() if is_conv1d else tensor
    if pending:
        raise UserError(f"the checkpoint lacks part of a fused q/k/v projection (layer.kind {', '.join(sorted(pending))}); it is not a whole GPT-2 model.")


def hf_config(config: Gpt2Config, *, bos: int | None, eos: int | None, dtype: str, transformers_version: str) -> dict[str, object]:
    """config.json of a GPT2LMHeadModel with ``config``'s shape."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.model_dim,
        "n_layer": config.num_layers,
        "n_head": config.num_attn_heads,
        "n_inner": config.ffn_inner_dim,
        "activation_function": config.activation,
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout_p,
        "embd_pdrop": config.dropout_p,
        "attn_pdrop": config.dropout_p,
        "initializer_range": config.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype,
        "transformers_version": transformers_version,
    }


def peft_adapter(adapters: Iterable[tuple[str, Tensor, Tensor]], rank: int, alpha: float) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, object]]:
    """A LoRA run's adapters -> PEFT's for GPT2LMHeadModel: HF module -> (lora_A, lora_B), and the
    adapter_config.json keys that differ from Llama's.

    ``adapters``: (fairseq2 module name, A (rank x in), B (out x rank)) of each adapted projection.
    c_attn is one module for q, k and v, so their three adapters become one of rank 3 * rank: A
    stacks the three A's, B puts the three B's on its diagonal, so B @ A stacks the three updates
    exactly; its alpha is 3 * alpha, keeping PEFT's scale alpha / rank. The Conv1D modules take
    PEFT's ``fan_in_fan_out``; A and B keep nn.Linear's layout either way."""
    out: dict[str, tuple[Tensor, Tensor]] = {}
    fused: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
    for name, a, b in adapters:
        m = FS2_LAYER.match(name)
        if m is None:
            raise UserError(f"LoRA adapter '{name}' sits outside GPT-2's decoder layers; lmtune cannot write it as a PEFT adapter.")
        layer, rest = m.group(1), m.group(2)
        qkv = re.fullmatch(r"self_attn\.([qkv]_proj)", rest)
        if qkv is not None:
            fused.setdefault(layer, {})[qkv.group(1)] = (a, b)
        elif f"{rest}.weight" in LAYER_KEYS:
            out[f"transformer.h.{layer}.{LAYER_KEYS[rest + '.weight'].removesuffix('.weight')}"] = (a, b)
        else:
            raise UserError(f"LoRA adapter '{name}' is on no projection of GPT-2's Hugging Face layout.")
    for layer, parts in fused.items():
        first_a, first_b = next(iter(parts.values()))
        dim_in, dim_out = first_a.shape[1], first_b.shape[0]
        stacked_a = first_a.new_zeros(3 * rank, dim_in)
        diagonal_b = first_b.new_zeros(3 * dim_out, 3 * rank)
        for i, proj in enumerate(FUSED_QKV):
            if proj in parts:
                a, b = parts[proj]
                stacked_a[i * rank : (i + 1) * rank] = a
                diagonal_b[i * dim_out : (i + 1) * dim_out, i * rank : (i + 1) * rank] = b
        out[f"transformer.h.{layer}.attn.c_attn"] = (stacked_a, diagonal_b)
    targets = sorted({"c_attn" if k.endswith("attn.c_attn") else ".".join(k.split(".")[-2:]) for k in out})
    config: dict[str, object] = {"target_modules": targets, "fan_in_fan_out": True}
    if fused:
        config["rank_pattern"] = {"c_attn": 3 * rank}
        config["alpha_pattern"] = {"c_attn": 3 * alpha}
    return out, config
