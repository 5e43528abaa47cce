"""Deterministic tiny models, checkpoints and tokenizers in every format lmtune loads.

Models: a fairseq2 model of the family with seeded random weights (every tensor,
norms and biases included, so a swapped key cannot hide), written as
- a Meta reference checkpoint (``consolidated.00.pth`` + ``params.json``),
- a Hugging Face directory (``config.json`` + ``model.safetensors``), whole or sharded,
- a fairseq2 training checkpoint, by a real ``lmtune instruction_finetune`` run.
The Meta and HF key tables and Llama's q/k rotary permutation are written here,
independently of fairseq2's converters, so a test compares two implementations.

Tokenizers: a Llama 3 tiktoken ``tokenizer.model``, a SentencePiece ``.model``
(Llama 2 settings) and Hugging Face ``tokenizer.json`` directories (Llama 3 and
Qwen layouts), all trained here on CORPUS.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# ------------------------------------------------------------------- models


@dataclass
class TinyModel:
    family: str  # fairseq2 model family: "llama" or "qwen"
    base_card: str  # the shipped lmtune card whose architecture this shrinks
    overrides: dict[str, object]  # the card's model_config
    config: object  # fairseq2's config dataclass (LLaMAConfig / QwenConfig)
    state_dict: dict[str, torch.Tensor]  # fairseq2 keys; no separate head when tied

    def card(self, name: str, checkpoint: Path) -> dict[str, object]:
        """A user card for this model's weights at ``checkpoint``."""
        return {"name": name, "base": self.base_card, "model_config": self.overrides, "checkpoint": str(checkpoint)}


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, each once: a tied head shares the embedding tensor."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[key] = t.detach()
    return out


def _random_state_dict(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, t in unique_state_dict(model).items():
        noise = torch.randn(t.shape, generator=gen)
        if key.endswith("norm.weight"):
            out[key] = 1.0 + 0.2 * noise
        elif key.endswith(".bias"):
            out[key] = 0.1 * noise
        elif key == "decoder_frontend.embed.weight":
            out[key] = 0.5 * noise
        else:
            out[key] = noise * t.shape[1] ** -0.5
    return out


def build_tiny_model(family: str, base_card: str, overrides: dict[str, object], seed: int = 0) -> TinyModel:
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import ModelSpec
    from lmtune.models.loading import model_config

    arch = CardStore().get(base_card).get("model_arch")  # type: ignore[union-attr]
    spec = ModelSpec(name=base_card, family=family, arch=str(arch), config=dict(overrides), checkpoint=None, source="tiny_builders")
    model = load_any_model(spec)
    return TinyModel(family, base_card, dict(overrides), model_config(spec), _random_state_dict(model, seed))


def tiny_llama(*, seed: int = 0, tied: bool = False, num_kv_heads: int = 2, rope_scaling: bool = False) -> TinyModel:
    """Llama 3.2 layout; ``rope_scaling`` uses a 16-token original context so the
    Llama 3 frequency scaling changes logits at the positions tests use."""
    overrides: dict[str, object] = {
        "model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": num_kv_heads,
        "ffn_inner_dim": 128, "ffn_inner_dim_multiple_of": 16, "vocab_size": 256, "max_seq_len": 64,
        "pad_idx": None, "tied_embeddings": tied, "use_scaled_rope": rope_scaling,
    }
    if rope_scaling:
        overrides["rope_scale"] = {"factor": 8.0, "frequency_factors": [1.0, 4.0], "original_context_length": 16}
    return build_tiny_model("llama", "llama3_2_1b", overrides, seed)


def tiny_qwen25(*, seed: int = 0, tied: bool = True) -> TinyModel:
    """Qwen2.5 layout: q/k/v biases."""
    overrides: dict[str, object] = {
        "model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 96,
        "vocab_size": 256, "max_seq_len": 64, "tied_embeddings": tied,
    }
    return build_tiny_model("qwen", "qwen25_1.5b", overrides, seed)


def tiny_qwen3(*, seed: int = 0) -> TinyModel:
    """Qwen3 layout: q/k RMSNorm, no biases, head_dim * heads != model_dim."""
    overrides: dict[str, object] = {
        "model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "ffn_inner_dim": 96, "vocab_size": 256, "max_seq_len": 64,
    }
    return build_tiny_model("qwen", "qwen3_0.6b", overrides, seed)


def float64_model(builder, **kw) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    """``builder(**kw)``'s model in float64 and train mode, to compare two computations closely."""
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    from lmtune.models.loading import model_family

    t = builder(**kw)
    model = model_family(t.family).create_new_model(t.config, create_fake_gangs(CPU), torch.float64, meta=False, init_rank0_only=False)
    model.load_state_dict({k: v.double() for k, v in t.state_dict.items()}, strict=not t.config.tied_embeddings)
    return model.train()


# fairseq2 name inside decoder.layers.N -> (HF name inside model.layers.N, Meta name inside layers.N)
LAYER_KEYS = {
    "self_attn_layer_norm.weight": ("input_layernorm.weight", "attention_norm.weight"),
    "self_attn.q_proj.weight": ("self_attn.q_proj.weight", "attention.wq.weight"),
    "self_attn.k_proj.weight": ("self_attn.k_proj.weight", "attention.wk.weight"),
    "self_attn.v_proj.weight": ("self_attn.v_proj.weight", "attention.wv.weight"),
    "self_attn.q_proj.bias": ("self_attn.q_proj.bias", None),
    "self_attn.k_proj.bias": ("self_attn.k_proj.bias", None),
    "self_attn.v_proj.bias": ("self_attn.v_proj.bias", None),
    "self_attn.q_norm.weight": ("self_attn.q_norm.weight", None),
    "self_attn.k_norm.weight": ("self_attn.k_norm.weight", None),
    "self_attn.output_proj.weight": ("self_attn.o_proj.weight", "attention.wo.weight"),
    "ffn_layer_norm.weight": ("post_attention_layernorm.weight", "ffn_norm.weight"),
    "ffn.gate_proj.weight": ("mlp.gate_proj.weight", "feed_forward.w1.weight"),
    "ffn.inner_proj.weight": ("mlp.up_proj.weight", "feed_forward.w3.weight"),
    "ffn.output_proj.weight": ("mlp.down_proj.weight", "feed_forward.w2.weight"),
}
TOP_KEYS = {
    "decoder_frontend.embed.weight": ("model.embed_tokens.weight", "tok_embeddings.weight"),
    "decoder.layer_norm.weight": ("model.norm.weight", "norm.weight"),
    "final_proj.weight": ("lm_head.weight", "output.weight"),
}
LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _rename(state_dict: dict[str, torch.Tensor], meta: bool, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state_dict.items():
        m = LAYER_KEY.match(key)
        if m:
            name = LAYER_KEYS[m.group(2)][meta]
            new = f"layers.{m.group(1)}.{name}" if meta else f"model.layers.{m.group(1)}.{name}"
        else:
            new = TOP_KEYS[key][meta]
        if new is None:
            raise KeyError(f"{key} has no Meta reference name")
        out[new] = t.to(dtype).clone().contiguous()
    return out


def _to_hf_rotary_order(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Meta/fairseq2 Llama rotate pairs of adjacent dims (0,1),(2,3)..; HF rotates
    dim i with i + head_dim/2: put each head's even rows first, odd rows after."""
    head_dim = w.shape[0] // num_heads
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return w.reshape(num_heads, head_dim, -1)[:, order].reshape(w.shape)


def hf_state_dict(model: TinyModel, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    sd = _rename(model.state_dict, meta=False, dtype=dtype)
    c = model.config
    if model.family == "llama":
        for i in range(c.num_layers):  # type: ignore[attr-defined]
            q, k = f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.k_proj.weight"
            sd[q] = _to_hf_rotary_order(sd[q], c.num_attn_heads)  # type: ignore[attr-defined]
            sd[k] = _to_hf_rotary_order(sd[k], c.num_key_value_heads)  # type: ignore[attr-defined]
    return sd


def hf_config(model: TinyModel) -> dict[str, object]:
    c = model.config
    sd = model.state_dict
    common = {
        "hidden_size": c.model_dim, "num_hidden_layers": c.num_layers,  # type: ignore[attr-defined]
        "num_attention_heads": c.num_attn_heads, "num_key_value_heads": c.num_key_value_heads,  # type: ignore[attr-defined]
        "intermediate_size": sd["decoder.layers.0.ffn.gate_proj.weight"].shape[0],
        "max_position_embeddings": c.max_seq_len, "vocab_size": c.vocab_size,  # type: ignore[attr-defined]
        "tie_word_embeddings": c.tied_embeddings, "rope_theta": c.rope_theta,  # type: ignore[attr-defined]
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    if model.family == "llama":
        rope = None
        if c.use_scaled_rope:  # type: ignore[attr-defined]
            s = c.rope_scale  # type: ignore[attr-defined]
            rope = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.frequency_factors[0],
                    "high_freq_factor": s.frequency_factors[1], "original_max_position_embeddings": s.original_context_length}
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common, "rms_norm_eps": 1e-5,
                "head_dim": c.model_dim // c.num_attn_heads, "rope_scaling": rope, "attention_bias": False, "mlp_bias": False}  # type: ignore[attr-defined]
    head_dim = c.head_dim or c.model_dim // c.num_attn_heads  # type: ignore[attr-defined]
    if c.qkv_proj_bias:  # type: ignore[attr-defined]
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common, "rms_norm_eps": 1e-6, "use_sliding_window": False}
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **common, "rms_norm_eps": 1e-6, "head_dim": head_dim, "attention_bias": False}


def write_meta_reference(model: TinyModel, out_dir: Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """Meta's original layout (as in Llama-3.2-1B/original/, there in bfloat16): returns the .pth file."""
    c = model.config
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = _rename(model.state_dict, meta=True, dtype=dtype)
    torch.save(sd, out_dir / "consolidated.00.pth")
    params = {
        "dim": c.model_dim, "n_layers": c.num_layers, "n_heads": c.num_attn_heads, "n_kv_heads": c.num_key_value_heads,  # type: ignore[attr-defined]
        "vocab_size": c.vocab_size, "ffn_dim_multiplier": c.ffn_inner_dim_multiplier, "multiple_of": c.ffn_inner_dim_multiple_of,  # type: ignore[attr-defined]
        "norm_eps": 1e-5, "rope_theta": c.rope_theta, "use_scaled_rope": c.use_scaled_rope,  # type: ignore[attr-defined]
    }
    (out_dir / "params.json").write_text(json.dumps(params, indent=2))
    return out_dir / "consolidated.00.pth"


def write_hf_dir(model: TinyModel, out_dir: Path, *, num_shards: int = 1, rotary_buffers: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """config.json + model.safetensors, or model-0000i-of-0000N.safetensors + index.
    ``rotary_buffers`` adds each layer's ``rotary_emb.inv_freq``, as transformers < 4.31 saved Llama."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**hf_config(model), "torch_dtype": str(dtype).removeprefix("torch.")}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    sd = hf_state_dict(model, dtype)
    if rotary_buffers:
        head_dim = int(config["head_dim"])  # type: ignore[call-overload]
        inv_freq = 1.0 / (float(config["rope_theta"]) ** (torch.arange(0, head_dim, 2).float() / head_dim))  # type: ignore[arg-type]
        for i in range(int(config["num_hidden_layers"])):  # type: ignore[call-overload]
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    if num_shards == 1:
        save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return out_dir
    keys = list(sd)
    per_shard = -(-len(keys) // num_shards)
    weight_map = {}
    for i in range(num_shards):
        name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per_shard:(i + 1) * per_shard]}
        save_file(part, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def train_tiny_checkpoint(out_dir: Path, *, steps: int = 4, every: int = 2) -> Path:
    """A real ``lmtune instruction_finetune`` run of the tiny preset (in this process: its outputs are what
    the tests read); returns OUT/checkpoints."""
    from helpers import run_lmtune_in_process

    no_cards = out_dir.parent / "no_user_cards"  # only the shipped cards, whatever the machine has
    no_cards.mkdir(parents=True, exist_ok=True)
    result = run_lmtune_in_process(
        "instruction_finetune", str(out_dir), "--config-file", "tiny_gsm8k", "--config",
        f"max_num_steps={steps}", f"checkpoint_every_n_steps={every}", f"publish_metrics_every_n_steps={every}",
        "tensorboard=false", "max_num_tokens=1024", "lr_scheduler.num_warmup_steps=0",
        "dtype=float32",  # the same weights on every machine (auto trains tiny_llama in bf16 where the CPU has a bf16 unit)
        env={"LMTUNE_USER_ASSET_DIR": str(no_cards), "FAIRSEQ2_USER_ASSET_DIR": str(no_cards)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out_dir / "checkpoints"


def shared_tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, *, steps: int, every: int) -> Path:
    """``train_tiny_checkpoint``'s OUT/checkpoints, trained once per pytest session for the modules that only
    read it: under ``pytest -n`` the workers share the session's directory (the parent of each worker's
    basetemp), and the first module to ask trains it while the others wait on its lock."""
    import fcntl
    import os
    import shutil

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    run = root / f"shared_tiny_checkpoint_{steps}_{every}"
    with open(f"{run}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (run / "complete").exists():
            shutil.rmtree(run, ignore_errors=True)  # a worker that failed or died mid-run
            train_tiny_checkpoint(run / "out", steps=steps, every=every)
            (run / "complete").touch()
    return run / "out/checkpoints"


# --------------------------------------------------------------- tokenizers

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.
Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? She sold 48 + 24 = 72 clips.
Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.
It's a test: don't stop, we'll see; they're here and you've got it, I'm sure he'd agree.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 and a price of $19.99 each.
    Indented lines, tabs\tand\ttabs, and blank lines follow.

Question: what is 7 times 8? Answer: 56. #### 56
User: Hello there! Assistant: Hi, how can I help you today?
"""

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Meta's Llama 3.1+ special tokens, appended after the BPE ranks (256 in all).
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(2, 247)]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def bpe_ranks(split_regex: str = LLAMA3_SPLIT, vocab_size: int = 400) -> dict[bytes, int]:
    """Byte-level BPE ranks trained on CORPUS with tiktoken's reference trainer."""
    from tiktoken._educational import bpe_train

    return bpe_train(CORPUS, vocab_size, split_regex, visualise=None)


def write_tiktoken_model(path: Path, ranks: dict[bytes, int]) -> Path:
    """Llama 3's ``tokenizer.model``: one "base64(token) rank" line per token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in sorted(ranks.items(), key=lambda x: x[1])]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_sentencepiece_model(path: Path, *, vocab_size: int = 400, default_normalizer: bool = False) -> Path:
    """Llama 2 settings: BPE, byte fallback, split digits, identity normalization. With
    default_normalizer, SentencePiece's own defaults instead: a unigram model, nmt_nfkc and
    remove_extra_whitespaces, as a user's ``spm_train --input ... --model_prefix ...`` gives."""
    import io

    import sentencepiece as spm

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    if default_normalizer:
        settings: dict[str, object] = {"model_type": "unigram", "normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True}
    else:
        settings = {"model_type": "bpe", "split_digits": True, "normalization_rule_name": "identity", "remove_extra_whitespaces": False, "allow_whitespace_only_pieces": True}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 4), model_writer=buf, vocab_size=vocab_size,
        byte_fallback=True, add_dummy_prefix=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False, minloglevel=2, **settings,
    )
    path.write_bytes(buf.getvalue())
    return path


def _hf_tokenizer(ranks: dict[bytes, int], split_regex: str, special: list[str], tmp: Path):  # type: ignore[no-untyped-def]
    from transformers.convert_slow_tokenizer import TikTokenConverter

    rank_file = write_tiktoken_model(tmp / "ranks.tiktoken", ranks)
    tok = TikTokenConverter(vocab_file=str(rank_file), pattern=split_regex, additional_special_tokens=special).converted()
    rank_file.unlink()
    return tok


def write_hf_llama3_tokenizer(out_dir: Path, ranks: dict[bytes, int], *, instruct: bool = False) -> Path:
    """As meta-llama/Llama-3.2-1B(-Instruct): BOS added by the post-processor."""
    from tokenizers import processors

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _hf_tokenizer(ranks, LLAMA3_SPLIT, LLAMA3_SPECIAL, out_dir)
    bos = len(ranks)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>" if instruct else "<|end_of_text|>", "model_max_length": 131072,
        "clean_up_tokenization_spaces": True, "chat_template": LLAMA3_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def write_hf_qwen_tokenizer(out_dir: Path, ranks: dict[bytes, int], *, instruct: bool = True) -> Path:
    """As Qwen/Qwen2.5-*: NFC normalizer, single digits, no BOS, ChatML."""
    from tokenizers import normalizers

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _hf_tokenizer(ranks, QWEN2_SPLIT, QWEN_SPECIAL, out_dir)
    tok.normalizer = normalizers.NFC()
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>" if instruct else "<|endoftext|>",
        "pad_token": "<|endoftext|>", "model_max_length": 32768, "errors": "replace", "split_special_tokens": False,
        "clean_up_tokenization_spaces": False, "chat_template": QWEN_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def write_hf_llama2_tokenizer(out_dir: Path, sp_model: Path) -> Path:
    """As meta-llama/Llama-2-7b-hf: tokenizer.json converted by transformers beside the SentencePiece tokenizer.model."""
    from transformers import LlamaTokenizerFast

    tok = LlamaTokenizerFast(vocab_file=str(sp_model), legacy=True, add_prefix_space=True, add_bos_token=True, add_eos_token=False)
    tok.save_pretrained(str(out_dir))
    return out_dir


def write_hf_gpt2_tokenizer(out_dir: Path, *, vocab_size: int = 300) -> Path:
    """As openai-community/gpt2: byte-level BPE (no prefix space), ``<|endoftext|>`` last in the
    vocabulary and named BOS, EOS and UNK, nothing added around a text. Trained on CORPUS."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.token_to_id("<|endoftext|>") == tok.get_vocab_size() - 1
    tok.save(str(out_dir / "tokenizer.json"))
    end = "<|endoftext|>"
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": end, "eos_token": end, "unk_token": end, "add_prefix_space": False, "model_max_length": 1024}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def tiny_hf_gpt2(out_dir: Path, *, vocab_size: int, seed: int = 0, n_positions: int = 64):  # type: ignore[no-untyped-def]
    """A transformers GPT2LMHeadModel (2 layers of 64, 2 heads of 32: vLLM's CPU attention takes no smaller) with seeded weights at a scale where greedy output
    varies from token to token, every LayerNorm and bias off its initial value, saved to ``out_dir``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias") or name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(0.1 * noise)
            else:
                p.copy_(2.0 * noise * p.shape[0] ** -0.5)  # Conv1D: (in, out)
    model.eval()
    model.save_pretrained(str(out_dir))
    return model
