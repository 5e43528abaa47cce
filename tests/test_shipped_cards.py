"""Every shipped model card resolves, and its architecture is the published checkpoint's.

The published values below are facts copied from each model's ``config.json`` on the Hugging Face
hub (hidden_size, num_hidden_layers, ...), written here by hand: nothing is downloaded. A card's
sizes are what fairseq2 builds from it (its ``model_arch`` with its ``model_config`` on top), so a
card that names the wrong arch or a mistyped width fails here, not after a 7B download.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import run_lmtune_in_process
from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import ModelSpec, resolve_model
from lmtune.resources import assets_dir
from transformers_dirs import write_olmo_tokenizer

# HF config.json keys -> the fairseq2 config field each is (the llama, qwen and olmo families alike).
FAIRSEQ2_FIELD = {
    "hidden_size": "model_dim", "num_hidden_layers": "num_layers", "num_attention_heads": "num_attn_heads",
    "num_key_value_heads": "num_key_value_heads", "intermediate_size": "ffn_inner_dim", "vocab_size": "vocab_size",
    "max_position_embeddings": "max_seq_len", "rope_theta": "rope_theta", "tie_word_embeddings": "tied_embeddings",
}  # fmt: skip
OLMO3_YARN = {"factor": 8.0, "original_max_position_embeddings": 8192, "attention_factor": 1.2079441541679836}

# card -> the published config.json values of the checkpoint it names
PUBLISHED: dict[str, dict[str, object]] = {
    # allenai/OLMo-2-0425-1B-Instruct, allenai/OLMo-2-1124-7B-Instruct
    "olmo2_1b_instruct": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16, intermediate_size=8192, vocab_size=100352, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=False),
    "olmo2_7b_instruct": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008, vocab_size=100352, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=False),
    # allenai/Olmo-3-7B-Instruct, allenai/Olmo-3-7B-Think, allenai/Olmo-3-32B-Think
    "olmo3_7b_instruct": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008, vocab_size=100278, max_position_embeddings=65536, rope_theta=500000.0, sliding_window=4096, rope_scaling=OLMO3_YARN),
    "olmo3_7b_think": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008, vocab_size=100278, max_position_embeddings=65536, rope_theta=500000.0, sliding_window=4096, rope_scaling=OLMO3_YARN),
    "olmo3_32b_think": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, intermediate_size=27648, vocab_size=100278, max_position_embeddings=65536, rope_theta=500000.0, sliding_window=4096, rope_scaling=OLMO3_YARN),
    # mistralai/Mistral-7B-Instruct-v0.3
    "mistral_7b_v0.3_instruct": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=32768, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False),
    # HuggingFaceTB/SmolLM2-{135M,360M,1.7B}-Instruct
    "smollm2_135m_instruct": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
    "smollm2_360m_instruct": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, intermediate_size=2560, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
    "smollm2_1.7b_instruct": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192, vocab_size=49152, max_position_embeddings=8192, rope_theta=130000.0, tie_word_embeddings=True),
    # openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl (n_embd, n_layer, n_head, n_positions)
    "gpt2_small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, vocab_size=50257, max_position_embeddings=1024),
    "gpt2_medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, vocab_size=50257, max_position_embeddings=1024),
    "gpt2_large": dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20, vocab_size=50257, max_position_embeddings=1024),
    "gpt2_xl": dict(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25, vocab_size=50257, max_position_embeddings=1024),
    # built by transformers (model_family: transformers): the card's sizes are the length and vocabulary checks'
    # google/gemma-3-1b-it; google/gemma-3-4b-it's text_config; microsoft/Phi-3.5-mini-instruct
    "gemma3_1b_it": dict(vocab_size=262144, max_position_embeddings=32768),
    "gemma3_4b_it": dict(vocab_size=262208, max_position_embeddings=131072),
    "phi3_5_mini_instruct": dict(vocab_size=32064, max_position_embeddings=131072),
}  # fmt: skip


def _shipped_model_cards() -> list[str]:
    store = CardStore()
    shipped = assets_dir().resolve()
    return [n for n in store.names() if (c := store.get(n)) is not None and c.kind == "model" and shipped in c.file.resolve().parents]


def test_every_shipped_model_card_is_shown_with_its_family(isolated_user_cards: Path) -> None:
    names = _shipped_model_cards()
    assert set(PUBLISHED) <= set(names)
    for name in names:
        r = run_lmtune_in_process("assets", "show", name)
        assert r.returncode == 0, (name, r.stderr)
        shown = yaml.safe_load(r.stdout)
        assert shown["model_family"] in ("llama", "qwen", "olmo", "gpt2", "transformers"), (name, shown)


def _built_config(name: str) -> object:
    from lmtune.models.loading import model_config

    card = CardStore().get(name)
    assert card is not None
    arch = card.get("model_arch")
    spec = ModelSpec(name=name, family=str(card.get("model_family")), arch=arch if isinstance(arch, str) else None, config=dict(card.get("model_config") or {}), checkpoint=None, source="")  # type: ignore[call-overload]
    return model_config(spec)


@pytest.mark.parametrize("name", [n for n in PUBLISHED if not n.startswith(("gemma3", "phi3"))])
def test_native_cards_build_the_published_architecture(name: str, isolated_user_cards: Path) -> None:
    config = _built_config(name)
    for key, value in PUBLISHED[name].items():
        if key in ("sliding_window", "rope_scaling"):
            continue
        got = getattr(config, FAIRSEQ2_FIELD[key])
        assert got == value, (name, key, got, value)
    if name.startswith("olmo3"):
        from lmtune.export.olmo3_config import (
            fairseq2_layer_types,
            yarn_attention_factor,
        )

        yarn = config.yarn_scale_config  # type: ignore[attr-defined]
        assert config.sliding_window == PUBLISHED[name]["sliding_window"]  # type: ignore[attr-defined]
        assert (yarn.scale_factor, yarn.original_max_seq_len) == (OLMO3_YARN["factor"], OLMO3_YARN["original_max_position_embeddings"])
        assert abs(yarn_attention_factor(yarn) - OLMO3_YARN["attention_factor"]) < 1e-12  # type: ignore[operator]
        # transformers' default pattern (the published configs list it): every 4th layer full
        n = int(PUBLISHED[name]["num_hidden_layers"])  # type: ignore[call-overload]
        assert fairseq2_layer_types(config) == ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)]  # type: ignore[arg-type]
    if name.startswith("olmo2"):
        assert config.sliding_window is None and config.yarn_scale_config is None  # type: ignore[attr-defined]
    # fairseq2 builds it (on the meta device: no memory, no weights)
    from fairseq2.gang import create_fake_gangs

    from lmtune.models.loading import model_family

    card = CardStore().get(name)
    assert card is not None
    model = model_family(str(card.get("model_family"))).create_new_model(config, create_fake_gangs(torch.device("cpu")), torch.float32, meta=True, init_rank0_only=False)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000


@pytest.mark.parametrize("name", ["gemma3_1b_it", "gemma3_4b_it", "phi3_5_mini_instruct"])
def test_transformers_cards_hold_the_published_sizes(name: str, isolated_user_cards: Path) -> None:
    config = _built_config(name)
    assert (config.vocab_size, config.max_seq_len) == (PUBLISHED[name]["vocab_size"], PUBLISHED[name]["max_position_embeddings"])  # type: ignore[attr-defined]


def test_a_transformers_card_given_a_checkpoint_runs_transformers_model(tmp_path: Path, isolated_user_cards: Path) -> None:
    """phi3_5_mini_instruct@user naming a (tiny, random) Phi-3 directory: built by transformers from that
    directory, with transformers' logits, its tokenizer and the card's end of turn."""
    from fairseq2.nn import BatchLayout
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmtune.adapters.build import load_any_model

    directory = tmp_path / "phi3"
    write_olmo_tokenizer(directory)
    config = AutoConfig.for_model("phi3", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=448, max_position_embeddings=256, pad_token_id=401)
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    (isolated_user_cards / "phi.yaml").write_text(yaml.safe_dump({"name": "phi3_5_mini_instruct@user", "checkpoint": str(directory)}))
    spec = resolve_model(CardStore(), "phi3_5_mini_instruct", None)
    assert spec.family == "transformers" and spec.config["directory"] == str(directory.resolve())
    assert spec.config["max_seq_len"] == 256 and spec.config["vocab_size"] == 448  # the directory's, not the published 131072
    assert spec.tokenizer is not None and spec.tokenizer.path == directory and spec.tokenizer.config == {"eos_token": "<|end|>"}
    ids = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model = load_any_model(spec)
    with torch.no_grad():
        diff = (model(ids, BatchLayout.of(ids)) - reference(ids).logits).abs().max().item()
    assert diff < 1e-5, diff
    shown = yaml.safe_load(run_lmtune_in_process("assets", "show", "phi3_5_mini_instruct").stdout)
    assert shown["hf_architecture"] == "Phi3ForCausalLM" and json.loads((directory / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]


def write_tiny_gemma3_multimodal(directory: Path, *, names: str = "language_model.model") -> Path:
    """As google/gemma-3-4b-it: Gemma3ForConditionalGeneration (a SigLIP vision tower, the projector and
    the language model, embeddings tied), saved by transformers itself, with a tokenizer beside it.
    transformers 4.57 writes "language_model.model.X"; ``names="model.language_model"`` renames the
    tensors as newer saves have them ("model.language_model.X", "model.vision_tower.X", ...)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    write_olmo_tokenizer(directory)
    text = Gemma3TextConfig(vocab_size=448, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4, boi_token_index=440, eoi_token_index=441, image_token_index=442)
    torch.manual_seed(5)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # norms random too, so that every language-model tensor counts in the logits
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(directory)
    if names == "model.language_model":
        from safetensors.torch import load_file, save_file

        saved = load_file(str(directory / "model.safetensors"))
        renamed = {("model.language_model." + k.removeprefix("language_model.model.")) if k.startswith("language_model.model.") else f"model.{k}": v for k, v in saved.items()}
        save_file(renamed, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("names", ["language_model.model", "model.language_model"])
def test_gemma3_4b_it_given_the_multimodal_directory_fine_tunes_its_language_model(names: str, tmp_path: Path, isolated_user_cards: Path) -> None:
    """gemma3_4b_it@user naming the upstream (multimodal) layout: the language model is built as
    Gemma3ForCausalLM from text_config, with the multimodal model's own text-only logits; the vision
    tower is left out (said on stderr) and the export is a text-only Gemma3ForCausalLM with the same logits."""
    from fairseq2.nn import BatchLayout
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    from lmtune.adapters.build import load_any_model
    from lmtune.export.transformers_export import export_transformers_hf
    from lmtune.models.transformers_family import load_transformers_causal_lm
    from safetensors import safe_open

    directory = write_tiny_gemma3_multimodal(tmp_path / "gemma3", names=names)
    with safe_open(str(directory / "model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert all(k.startswith((names, "model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.")) for k in keys), keys[:5]
    assert any("vision_tower." in k for k in keys) and "lm_head.weight" not in keys
    (isolated_user_cards / "gemma.yaml").write_text(yaml.safe_dump({"name": "gemma3_4b_it@user", "checkpoint": str(directory)}))
    spec = resolve_model(CardStore(), "gemma3_4b_it", None)
    assert spec.family == "transformers" and spec.config["max_seq_len"] == 256 and spec.config["vocab_size"] == 448
    ids = torch.randint(0, 440, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = Gemma3ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    model = load_any_model(spec)  # the fairseq2 family: the directory's tensors through its state dict converter
    direct = load_transformers_causal_lm(directory)  # transformers' side: from the directory's safetensors
    assert type(direct.hf).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        for loaded in (model, direct):
            diff = (loaded(ids, BatchLayout.of(ids)) - expected).abs().max().item()
            assert diff < 1e-5, diff
    shown = yaml.safe_load(run_lmtune_in_process("assets", "show", "gemma3_4b_it").stdout)
    assert shown["hf_architecture"] == "Gemma3ForCausalLM"
    assert spec.tokenizer is not None
    out = export_transformers_hf(spec, spec.tokenizer, tmp_path / "export", dtype=None, log=lambda _: None)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(exported).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        diff = (exported(ids).logits - expected).abs().max().item()
    assert diff < 1e-5, diff


def test_a_multimodal_directory_says_once_that_its_vision_tower_is_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmtune.models.transformers_family import load_transformers_causal_lm

    directory = write_tiny_gemma3_multimodal(tmp_path / "gemma3")
    load_transformers_causal_lm(directory)
    load_transformers_causal_lm(directory, random_init=True)
    assert capsys.readouterr().err.count("vision tower is left out") == 1
