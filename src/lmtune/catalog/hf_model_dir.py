"""A card that names only a Hugging Face model directory: family, architecture and configuration
read from its ``config.json``.

    name: my_model
    checkpoint: /models/my_model        # config.json, *.safetensors, tokenizer.json

``model_type`` picks the fairseq2 family and each HF key becomes the fairseq2 config key it
means, one literal function per family, so ``lmtune assets show`` prints exactly what will be
built. Keys that would change the model in ways the fairseq2 family cannot build (another
RMSNorm epsilon, biases, a rope scaling it lacks) are refused by name rather than ignored: a
model that loads but computes something else is worse than one that does not load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lmtune.errors import UserError

# fairseq2 builds Llama's (and so Mistral's) RMSNorm with this epsilon and Qwen's with 1e-6.
LLAMA_RMS_NORM_EPS = 1e-5
QWEN_RMS_NORM_EPS = 1e-6


def _get(hf: dict[str, object], key: str, default: object = None) -> object:
    return hf.get(key, default)


def _int(hf: dict[str, object], key: str, where: str, default: int | None = None) -> int:
    value = hf.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{where}: '{key}' is {value!r}; a {hf.get('model_type')} config needs an integer there.")
    return value


def _common(hf: dict[str, object], where: str) -> dict[str, object]:
    heads = _int(hf, "num_attention_heads", where)
    return {
        "model_dim": _int(hf, "hidden_size", where),
        "max_seq_len": _int(hf, "max_position_embeddings", where),
        "vocab_size": _int(hf, "vocab_size", where),
        "num_layers": _int(hf, "num_hidden_layers", where),
        "num_attn_heads": heads,
        "num_key_value_heads": _int(hf, "num_key_value_heads", where, heads),
        "ffn_inner_dim": _int(hf, "intermediate_size", where),
        "tied_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def _rope_theta(hf: dict[str, object], default: float) -> float:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta") or (scaling.get("rope_theta") if isinstance(scaling, dict) else None)
    return float(theta) if isinstance(theta, (int, float)) else default


def _rope_type(hf: dict[str, object]) -> str:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    if not isinstance(scaling, dict):
        return "default"
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def _require(hf: dict[str, object], where: str, key: str, valid: object, default: object, why: str) -> None:
    value = hf.get(key, default)
    if value != valid and not (isinstance(value, float) and isinstance(valid, float) and abs(value - valid) <= 1e-12):
        raise UserError(f"{where}: '{key}' is {value!r}, but lmtune's {why} needs {valid!r}.")


def _check_head_dim(hf: dict[str, object], where: str, config: dict[str, object], family: str) -> None:
    head_dim = hf.get("head_dim")
    natural = int(config["model_dim"]) // int(config["num_attn_heads"])  # type: ignore[call-overload]
    if head_dim is not None and head_dim != natural:
        raise UserError(f"{where}: 'head_dim' is {head_dim}, but a {family} model in fairseq2 has hidden_size / num_attention_heads = {natural}.")


def _llama(hf: dict[str, object], where: str) -> dict[str, object]:
    config = _common(hf, where)
    _check_head_dim(hf, where, config, "llama")
    _require(hf, where, "rms_norm_eps", LLAMA_RMS_NORM_EPS, 1e-6, "llama family (fairseq2's RMSNorm)")
    _require(hf, where, "attention_bias", False, False, "llama family (no attention biases)")
    _require(hf, where, "mlp_bias", False, False, "llama family (no MLP biases)")
    # intermediate_size is the final width: no 2/3 scale, multiplier or rounding on top.
    config.update(ffn_inner_dim_scale=1.0, ffn_inner_dim_multiplier=1.0, ffn_inner_dim_multiple_of=1, rope_theta=_rope_theta(hf, 10_000.0))
    if config["tied_embeddings"]:
        config["shard_embed_dim"] = False  # fairseq2's llama ties the head only to a vocabulary-sharded embedding
    rope = _rope_type(hf)
    if rope == "llama3":
        s = hf.get("rope_scaling") or hf.get("rope_parameters")
        assert isinstance(s, dict)
        config["use_scaled_rope"] = True
        config["rope_scale"] = {
            "factor": float(s["factor"]),
            "frequency_factors": [float(s["low_freq_factor"]), float(s["high_freq_factor"])],
            "original_context_length": int(s["original_max_position_embeddings"]),
        }
    elif rope != "default":
        raise UserError(f"{where}: rope_scaling type '{rope}' is not one fairseq2's llama family builds; it builds none or 'llama3'.")
    return config


def _mistral(hf: dict[str, object], where: str) -> dict[str, object]:
    """Mistral is Llama's architecture plus a sliding attention window: loaded as fairseq2's llama
    family (which has rope_theta; fairseq2's own mistral family has neither theta nor HF weights),
    with sequences no longer than the window, where sliding changes nothing."""
    config = _llama(hf, where)
    window = hf.get("sliding_window")
    if isinstance(window, int) and window < int(config["max_seq_len"]):  # type: ignore[call-overload]
        config["max_seq_len"] = window  # generation stops there too, instead of attending past the window
    return config


def _qwen(hf: dict[str, object], where: str) -> dict[str, object]:
    config = _common(hf, where)
    qwen3 = hf.get("model_type") == "qwen3"
    _require(hf, where, "rms_norm_eps", QWEN_RMS_NORM_EPS, 1e-6, "qwen family (fairseq2's RMSNorm)")
    _require(hf, where, "use_sliding_window", False, False, "qwen family (full attention)")
    if _rope_type(hf) != "default":
        raise UserError(f"{where}: rope_scaling type '{_rope_type(hf)}' is not one fairseq2's qwen family builds; it builds none.")
    config.update(rope_theta=_rope_theta(hf, 1_000_000.0), qkv_proj_bias=not qwen3, q_norm=qwen3, k_norm=qwen3)
    if qwen3:
        _require(hf, where, "attention_bias", False, False, "Qwen3 (no attention biases)")
        config["head_dim"] = _int(hf, "head_dim", where, int(config["model_dim"]) // int(config["num_attn_heads"]))  # type: ignore[call-overload]
    else:
        _check_head_dim(hf, where, config, "qwen2")
    return config


def _olmo2(hf: dict[str, object], where: str) -> dict[str, object]:
    config = _common(hf, where)
    _check_head_dim(hf, where, config, "olmo")
    _require(hf, where, "attention_bias", False, False, "olmo family (no attention biases)")
    if _rope_type(hf) != "default":
        raise UserError(f"{where}: rope_scaling type '{_rope_type(hf)}' is not one lmtune reads for OLMo 2; it reads none.")
    eps = hf.get("rms_norm_eps", 1e-5)
    ids = {k: hf.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    config.update(
        rope_theta=_rope_theta(hf, 10_000.0), rms_norm_eps=float(eps),  # type: ignore[arg-type]
        pad_idx=ids["pad_token_id"], bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"] if isinstance(ids["eos_token_id"], int) else 100_257,
    )  # fmt: skip
    return config


def _olmo3_layer_types(hf: dict[str, object], where: str, num_layers: int) -> list[str]:
    """The HF list, or transformers' default when absent (every 4th layer full). Always written into
    the fairseq2 config: fairseq2's own default also makes the last layer full."""
    types = hf.get("layer_types")
    if types is None:
        return ["sliding_attention" if (i + 1) % 4 != 0 else "full_attention" for i in range(num_layers)]
    valid = ("sliding_attention", "full_attention")
    if not isinstance(types, list) or len(types) != num_layers or any(t not in valid for t in types):
        raise UserError(f"{where}: 'layer_types' must list {num_layers} entries (num_hidden_layers), each one of {', '.join(valid)}.")
    return [str(t) for t in types]


def _olmo3_yarn(hf: dict[str, object], where: str, config: dict[str, object]) -> dict[str, object]:
    """transformers' YaRN keys -> fairseq2's YaRNScaleConfig. The attention factor (explicit, or from
    factor / mscale / mscale_all_dim as transformers infers it) becomes fairseq2's ``mscale`` with
    ``mscale_all_dim`` 0, the form in which fairseq2 computes 0.1 * mscale * ln(factor) + 1."""
    import math

    s = hf.get("rope_scaling") or hf.get("rope_parameters")
    assert isinstance(s, dict)
    factor = float(s["factor"])
    if factor <= 1.0:
        raise UserError(f"{where}: YaRN 'factor' is {factor}; lmtune reads OLMo 3 YaRN factors above 1.")

    def get_mscale(m: float) -> float:
        return 0.1 * m * math.log(factor) + 1.0

    attention = s.get("attention_factor")
    mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")
    if attention is None:
        attention = get_mscale(float(mscale)) / get_mscale(float(mscale_all_dim)) if mscale and mscale_all_dim else get_mscale(1.0)
    m = (float(attention) - 1.0) / (0.1 * math.log(factor))
    if abs(m) < 1e-12:
        raise UserError(f"{where}: YaRN 'attention_factor' 1.0 cannot be built by fairseq2's YaRN encoder; lmtune reads factors that scale attention.")
    original = s.get("original_max_position_embeddings") or int(config["max_seq_len"])  # type: ignore[call-overload]
    return {
        "scale_factor": factor, "original_max_seq_len": int(original),
        "beta_fast": float(s.get("beta_fast") or 32.0), "beta_slow": float(s.get("beta_slow") or 1.0),
        "mscale": 1.0 if abs(m - 1.0) < 1e-12 else m, "mscale_all_dim": 0.0, "truncate": bool(s.get("truncate", True)),
    }  # fmt: skip


def _olmo3(hf: dict[str, object], where: str) -> dict[str, object]:
    """OLMo 2 plus sliding-window layers and, in the long-context checkpoints, YaRN rope (which
    lmtune.models.olmo3_rope applies to the full-attention layers only, as transformers does)."""
    rope = _rope_type(hf)
    if rope not in ("default", "yarn"):
        raise UserError(f"{where}: rope_scaling type '{rope}' is not one lmtune reads for OLMo 3; it reads none or 'yarn'.")
    plain = {k: v for k, v in hf.items() if k not in ("rope_scaling", "rope_parameters")}
    config = _olmo2({**plain, "rope_theta": _rope_theta(hf, 10_000.0)}, where)
    _require(hf, where, "hidden_act", "silu", "silu", "olmo family (SwiGLU)")
    window = hf.get("sliding_window", 4096)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise UserError(f"{where}: 'sliding_window' is {window!r}; lmtune reads OLMo 3 models with a positive integer window.")
    config["sliding_window"] = window
    config["layer_types"] = _olmo3_layer_types(hf, where, int(config["num_layers"]))  # type: ignore[call-overload]
    config["yarn_scale_config"] = _olmo3_yarn(hf, where, config) if rope == "yarn" else None
    return config


# GPT-2's activation_function values lmtune's GPT-2 builds (lmtune.models.gpt2.GELU_APPROXIMATIONS' keys).
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu")


def _gpt2(hf: dict[str, object], where: str) -> dict[str, object]:
    """A GPT2LMHeadModel's config.json -> the ``model_config`` of a ``gpt2`` card (what differs from
    ``Gpt2Config``'s fields), refusing what lmtune's GPT-2 does not build."""
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False), ("tie_word_embeddings", True)):
        if key in hf and hf[key] != want:
            raise UserError(f"{where}: {key} is {hf[key]}; lmtune's GPT-2 is built with {key}={want}.")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise UserError(f"{where}: activation_function '{activation}' is not one lmtune's GPT-2 builds; valid: {', '.join(GPT2_ACTIVATIONS)}.")
    dim = int(hf.get("n_embd", 768))  # type: ignore[call-overload]
    inner = hf.get("n_inner")
    drops = {float(hf.get(k, 0.1)) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}  # type: ignore[arg-type]
    return {
        "model_dim": dim,
        "max_seq_len": int(hf.get("n_positions", 1024)),  # type: ignore[call-overload]
        "vocab_size": int(hf.get("vocab_size", 50257)),  # type: ignore[call-overload]
        "num_layers": int(hf.get("n_layer", 12)),  # type: ignore[call-overload]
        "num_attn_heads": int(hf.get("n_head", 12)),  # type: ignore[call-overload]
        "ffn_inner_dim": int(inner) if inner is not None else 4 * dim,  # type: ignore[call-overload]
        "activation": activation,
        "layer_norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),  # type: ignore[arg-type]
        "dropout_p": max(drops),
        "init_std": float(hf.get("initializer_range", 0.02)),  # type: ignore[arg-type]
    }


# model_type -> (fairseq2 family, tokenizer family, HF config -> fairseq2 model_config)
HF_MODEL_TYPES: dict[str, tuple[str, str, Callable[[dict[str, object], str], dict[str, object]]]] = {
    "llama":   ("llama", "llama", _llama),
    "mistral": ("llama", "llama", _mistral),
    "qwen2":   ("qwen",  "qwen",  _qwen),
    "qwen3":   ("qwen",  "qwen",  _qwen),
    "olmo2":   ("olmo",  "olmo",  _olmo2),
    "olmo3":   ("olmo",  "olmo",  _olmo3),
    "gpt2":    ("gpt2",  "gpt2",  _gpt2),
}  # fmt: skip


def read_hf_config(directory: Path) -> dict[str, object]:
    file = directory / "config.json"
    if not file.is_file():
        raise UserError(f"{directory} has no config.json, so lmtune cannot tell which model it holds; point 'checkpoint:' at a Hugging Face model directory or give the card model_family and model_arch.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as ex:
        raise UserError(f"{file} cannot be read as JSON ({ex}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{file} holds no JSON object; a Hugging Face config.json is one.")
    return data


def detected_fields(directory: Path) -> dict[str, object]:
    """The card keys a Hugging Face directory implies: model_family, model_config, tokenizer_family,
    and hf_architecture (shown by ``assets show``); a UserError naming what is not understood."""
    hf = read_hf_config(directory)
    where = str(directory / "config.json")
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        from lmtune.catalog.transformers_dir import transformers_fields

        return transformers_fields(directory)
    family, tokenizer_family, convert = HF_MODEL_TYPES[str(model_type)]
    archs = hf.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    fields: dict[str, object] = {"model_family": family, "model_config": convert(hf, where), "tokenizer_family": tokenizer_family, "hf_architecture": arch, "hf_model_type": model_type}
    if tokenizer_family == "llama" and _has_non_llama3_tokenizer_json(directory):
        # e.g. SmolLM2: Llama's layers, a GPT-2-style BPE with ChatML turns. fairseq2's llama tokenizer
        # reads tokenizer.json with Llama 3's special tokens only; lmtune's gpt2 family reads any.
        fields["tokenizer_family"] = "gpt2"
        eos = _tokenizer_config_eos(directory)
        if eos is not None:
            fields["tokenizer_config"] = {"eos_token": eos}
    if model_type == "mistral":
        # Built as fairseq2's llama family: the export must say Mistral again, with its window.
        window = hf.get("sliding_window")
        fields["hf_export"] = {"model_type": "mistral", "sliding_window": window if isinstance(window, int) else None}
    return fields


def _has_non_llama3_tokenizer_json(directory: Path) -> bool:
    """A tokenizer.json without Llama 3's <|begin_of_text|>, and no tokenizer.model beside it."""
    file = directory / "tokenizer.json"
    if (directory / "tokenizer.model").is_file() or not file.is_file():
        return False
    try:
        return "<|begin_of_text|>" not in file.read_text(encoding="utf-8")
    except OSError:
        return False


def _tokenizer_config_eos(directory: Path) -> str | None:
    try:
        eos = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def checkpoint_dir_of(fields: dict[str, object]) -> Path | None:
    """The card's checkpoint when it is a directory that may be read for what it holds."""
    checkpoint = fields.get("checkpoint")
    if not isinstance(checkpoint, str) or "://" in checkpoint or fields.get("init") == "random":
        return None
    path = Path(checkpoint)
    return path if path.is_dir() else None


def with_detected_model(fields: dict[str, object]) -> dict[str, object]:
    """A card without model_family whose checkpoint is an HF directory, completed from its config.json
    (the card's own model_config merged on top; its tokenizer defaults to the same directory). A card
    saying only ``model_family: mistral`` of a Mistral directory is read the same way (fairseq2's own
    mistral family reads no HF weights); a ``transformers`` card gets its directory.
    Unchanged when nothing can be detected: using the card as a model then says why."""
    from lmtune.files import deep_merge

    directory = checkpoint_dir_of(fields)
    if directory is None:
        return fields
    family = fields.get("model_family")
    if family == "transformers":
        return _with_transformers_directory(fields, directory)
    plain_mistral = family == "mistral" and "model_arch" not in fields and "model_config" not in fields
    if ("model_family" in fields and not plain_mistral) or "model_arch" in fields:
        return fields
    try:
        found = detected_fields(directory)
    except UserError:
        return fields
    if plain_mistral and found.get("hf_model_type") != "mistral":
        return fields
    out = {**fields, **{k: v for k, v in found.items() if k != "model_config"}}
    own = fields.get("model_config")
    out["model_config"] = deep_merge(found["model_config"], own) if isinstance(own, dict) else found["model_config"]  # type: ignore[arg-type]
    if "tokenizer" not in fields and "tokenizer_ref" not in fields and any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        out["tokenizer"] = str(directory)
    for key in ("tokenizer_family", "tokenizer_config"):
        if key in fields and not (plain_mistral and key == "tokenizer_family"):
            out[key] = fields[key]
    return out


def _with_transformers_directory(fields: dict[str, object], directory: Path) -> dict[str, object]:
    """A ``model_family: transformers`` card (a shipped one, given its checkpoint by a user card)
    completed from its directory as a bare directory card is: model_config.directory, the sizes, the
    tokenizer. The card's own keys win, but for the architecture and sizes, which are what the directory
    holds (a shipped card's are the published checkpoint's)."""
    from lmtune.catalog.transformers_dir import transformers_fields
    from lmtune.files import deep_merge

    own = fields.get("model_config")
    if isinstance(own, dict) and own.get("directory"):
        return fields
    try:
        found = transformers_fields(directory)
    except UserError:
        return fields
    out = {**{k: v for k, v in found.items() if k != "model_config"}, **fields, "hf_architecture": found["hf_architecture"]}
    out["model_config"] = deep_merge(own, found["model_config"]) if isinstance(own, dict) else found["model_config"]  # type: ignore[arg-type]
    if isinstance(fields.get("tokenizer_config"), dict) and isinstance(found.get("tokenizer_config"), dict):
        out["tokenizer_config"] = deep_merge(found["tokenizer_config"], fields["tokenizer_config"])  # type: ignore[arg-type]
    if "tokenizer" not in fields and "tokenizer_ref" not in fields and (directory / "tokenizer.json").is_file():
        out["tokenizer"] = str(directory)
    return out


def why_not_detected(fields: dict[str, object], card: str, where: str) -> str:
    """The sentence for a card with no model_family: what its directory lacks, or what a card needs."""
    directory = checkpoint_dir_of(fields)
    if directory is not None:
        try:
            detected_fields(directory)
        except UserError as ex:
            return f"card '{card}': {ex}"
    return f"card '{card}' ({where}) has no model_family and no Hugging Face directory as checkpoint; it cannot be used as a model."
