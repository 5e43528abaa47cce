"""A card that names only a Hugging Face directory: family and configuration come from its config.json.

The directories are what transformers itself writes (``save_pretrained`` of a tiny random model
built from a config), with a tokenizer the test builds beside the weights. lmtune's model on the
same files must give transformers' logits (float32, within 1e-5), and ``instruction_finetune``
must train from a card that names nothing but the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import assert_user_error, run_lmtune_in_process
from lmtune.adapters.build import load_any_model
from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import resolve_model
from transformers_dirs import write_transformers_dir

TOLERANCE = 1e-5


def write_card(cards: Path, name: str, checkpoint: Path, **extra: object) -> None:
    (cards / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "checkpoint": str(checkpoint), **extra}))


def transformers_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(ids).logits


def lmtune_logits(name: str, ids: torch.Tensor) -> torch.Tensor:
    from fairseq2.nn import BatchLayout

    model = load_any_model(resolve_model(CardStore(), name, None))
    with torch.no_grad():
        return model(ids, BatchLayout.of(ids))


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "llama": ("llama", {}),
    "llama_llama3_rope_scaling": ("llama", {"rope_scaling": LLAMA3_ROPE}),  # 20 positions > 8: the scaling matters
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    # transformers' default layer_types (every 4th layer full; fairseq2's own would make the 6th full too)
    "olmo3_default_layer_types": ("olmo3", {"num_hidden_layers": 6, "layer_types": None}),
    "olmo3_without_yarn": ("olmo3", {"rope_scaling": None}),
    # YaRN's attention factor inferred by transformers from mscale / mscale_all_dim
    "olmo3_yarn_mscale": ("olmo3", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 2.0, "mscale_all_dim": 1.0}}),
}
FAMILY_OF = {"llama": "llama", "qwen2": "qwen", "qwen3": "qwen", "olmo3": "olmo"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_bare_hf_directory_loads_with_transformers_logits(variant: str, tmp_path: Path, isolated_user_cards: Path) -> None:
    model_type, changes = VARIANTS[variant]
    directory = write_transformers_dir(model_type, tmp_path / model_type, **changes)
    if "layer_types" in changes and changes["layer_types"] is None:  # transformers writes its default out: drop it
        config = json.loads((directory / "config.json").read_text())
        assert config.pop("layer_types")[-1] == "sliding_attention"
        (directory / "config.json").write_text(json.dumps(config))
    write_card(isolated_user_cards, "my_model", directory)
    spec = resolve_model(CardStore(), "my_model", None)
    assert spec.family == FAMILY_OF[model_type]
    assert spec.tokenizer is not None and spec.tokenizer.path == directory
    ids = torch.randint(0, 400, (2, 20), generator=torch.Generator().manual_seed(1))
    assert (lmtune_logits("my_model", ids) - transformers_logits(directory, ids)).abs().max().item() < TOLERANCE


def test_assets_show_prints_what_was_detected(tmp_path: Path, isolated_user_cards: Path) -> None:
    directory = write_transformers_dir("llama", tmp_path / "hf")
    write_card(isolated_user_cards, "my_model", directory, model_config={"max_seq_len": 128})
    r = run_lmtune_in_process("assets", "show", "my_model")
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["model_family"] == "llama" and shown["hf_architecture"] == "LlamaForCausalLM"
    assert shown["model_config"]["ffn_inner_dim"] == 96 and shown["model_config"]["rope_theta"] == 50_000.0
    assert shown["model_config"]["max_seq_len"] == 128  # the card's own model_config wins
    assert shown["tokenizer"] == str(directory)
    listed = run_lmtune_in_process("assets", "list", "--kind", "model").stdout
    assert any(line.split()[:2] == ["my_model", "llama"] for line in listed.splitlines())
    assert any(line.split()[:2] == ["mistral_7b_v0.3_instruct", "mistral"] for line in listed.splitlines())
    table = listed.split("what lmtune does with each family")[1].splitlines()[1:]
    assert table[0].split() == ["family", "SFT", "LoRA", "QLoRA", "packing", "HF", "export", "vLLM"]
    assert {row.split()[0] for row in table[1:]} == {"llama", "qwen", "olmo2", "olmo3", "mistral", "gpt2", "transformers"}


def test_explicit_family_and_arch_are_kept(tmp_path: Path, isolated_user_cards: Path) -> None:
    directory = write_transformers_dir("llama", tmp_path / "hf")
    write_card(isolated_user_cards, "my_model", directory, model_family="llama", model_arch="llama3_2_1b", model_config={"model_dim": 64})
    card = CardStore().get("my_model")
    assert card is not None and "hf_architecture" not in card.fields and card.get("model_arch") == "llama3_2_1b"


def test_bad_directories_are_one_sentence(tmp_path: Path, isolated_user_cards: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    write_card(isolated_user_cards, "no_config", empty)
    gpt_neox = tmp_path / "neox"
    gpt_neox.mkdir()
    (gpt_neox / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    write_card(isolated_user_cards, "neox", gpt_neox)
    shown = run_lmtune_in_process("assets", "show", "neox")
    # No native family, so transformers builds it (lmtune.models.transformers_fairseq2); without a tokenizer it cannot train.
    assert shown.returncode == 0 and "model_family: transformers" in shown.stdout and "GPTNeoXForCausalLM" in shown.stdout, shown.stdout
    out = tmp_path / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=no_config")
    assert_user_error(r, "no_config", f"{empty} has no config.json")
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=neox")
    assert_user_error(r, "model 'neox' names no tokenizer")
    assert not out.exists()


@pytest.mark.slow
def test_instruction_finetune_from_a_card_naming_only_the_directory(tmp_path: Path, isolated_user_cards: Path) -> None:
    directory = write_transformers_dir("llama", tmp_path / "hf")
    write_card(isolated_user_cards, "my_model", directory)
    out = tmp_path / "out"
    r = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=my_model",
        "max_num_steps=2", "checkpoint_every_n_steps=2", "publish_metrics_every_n_steps=1", "tensorboard=false",
        "lr_scheduler.num_warmup_steps=0", env={"LMTUNE_USER_ASSET_DIR": str(isolated_user_cards)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    meta = yaml.safe_load((out / "checkpoints" / "model.yaml").read_text())
    assert meta["model_family"] == "llama" and meta["model_config"]["ffn_inner_dim"] == 96
    assert (out / "checkpoints" / "step_2" / "model").is_dir()


def test_a_card_saying_model_family_mistral_reads_its_hf_directory_as_mistral(tmp_path: Path, isolated_user_cards: Path) -> None:
    """fairseq2's own mistral family reads no HF weights: a card with only model_family: mistral is read as
    the bare directory is (llama-built, exported as Mistral); one that also names an arch is refused."""
    directory = write_transformers_dir("mistral", tmp_path / "hf")
    write_card(isolated_user_cards, "plain", directory, model_family="mistral", tokenizer_family="mistral")
    write_card(isolated_user_cards, "with_arch", directory, model_family="mistral", model_arch="mistral_7b")
    spec = resolve_model(CardStore(), "plain", None)
    assert spec.family == "llama" and spec.hf_export == {"model_type": "mistral", "sliding_window": 4096}
    assert spec.tokenizer is not None and spec.tokenizer.family == "llama"
    ids = torch.randint(0, 400, (2, 20), generator=torch.Generator().manual_seed(1))
    assert (lmtune_logits("plain", ids) - transformers_logits(directory, ids)).abs().max().item() < TOLERANCE
    r = run_lmtune_in_process("instruction_finetune", str(tmp_path / "out"), "--config-file", "tiny_gsm8k", "--config", "model=with_arch")
    assert_user_error(r, "card 'with_arch'", "model_family 'mistral' is fairseq2's reference Mistral", "write the card as name and checkpoint only")
    assert not (tmp_path / "out").exists()


def test_a_llama_directory_with_a_chatml_bpe_tokenizer_gets_the_gpt2_tokenizer(tmp_path: Path, isolated_user_cards: Path) -> None:
    """SmolLM2's layout: Llama's layers (tied embeddings, rope theta 1e5) and a GPT-2-style BPE with ChatML
    turns, which fairseq2's llama tokenizer (Llama 3's special tokens only) cannot read."""
    from lmtune.models.loading import load_tokenizer
    from transformers_dirs import write_olmo_tokenizer

    directory = write_transformers_dir("llama", tmp_path / "hf", tie_word_embeddings=True, rope_theta=100_000.0)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / f).unlink(missing_ok=True)
    special = write_olmo_tokenizer(directory)
    write_card(isolated_user_cards, "smol", directory)
    spec = resolve_model(CardStore(), "smol", None)
    assert spec.family == "llama" and spec.config["tied_embeddings"] is True and spec.config["rope_theta"] == 100_000.0
    assert spec.tokenizer is not None and spec.tokenizer.family == "gpt2" and spec.tokenizer.config == {"eos_token": "<|endoftext|>"}
    tokenizer = load_tokenizer(spec.tokenizer)
    assert tokenizer.vocab_info.eos_idx == special["<|endoftext|>"]
    assert tokenizer.create_encoder(mode="prompt")("<|im_end|>").tolist() == [special["<|im_end|>"]]
    ids = torch.randint(0, 400, (2, 20), generator=torch.Generator().manual_seed(1))
    assert (lmtune_logits("smol", ids) - transformers_logits(directory, ids)).abs().max().item() < TOLERANCE


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling type 'linear' is not one lmtune reads for OLMo 3; it reads none or 'yarn'"),
        ("layer_types", ["sliding_attention", "full_attention"], "'layer_types' must list 4 entries (num_hidden_layers)"),
        ("sliding_window", None, "'sliding_window' is None; lmtune reads OLMo 3 models with a positive integer window"),
    ],
)
def test_an_olmo3_config_lmtune_cannot_build_exactly_is_one_sentence(key: str, value: object, says: str, tmp_path: Path, isolated_user_cards: Path) -> None:
    from lmtune.errors import UserError

    directory = write_transformers_dir("olmo3", tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    write_card(isolated_user_cards, "my_model", directory)
    with pytest.raises(UserError) as caught:
        resolve_model(CardStore(), "my_model", None)
    assert says in str(caught.value) and str(directory / "config.json") in str(caught.value)
