"""Every checkpoint format lmtune claims loads to the same weights and the reference's logits.

Each tiny model is written as a Meta reference checkpoint, a Hugging Face directory
and a sharded one, registered with a user card, resolved and loaded the way the CLI
does; transformers' model on the same HF files is the reference (float32 logits
within 1e-4, identical argmax).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lmtune.adapters.build import load_any_model
from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import ModelSpec, model_from_checkpoint_dir, resolve_model
from lmtune.errors import UserError
from lmtune.models.loading import model_config
from tiny_builders import (
    TinyModel,
    tiny_llama,
    tiny_qwen3,
    tiny_qwen25,
    train_tiny_checkpoint,
    unique_state_dict,
    write_hf_dir,
    write_meta_reference,
)

TOLERANCE = 1e-4


def _token_ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(7))


def _write_cards(user_dir: Path, cards: list[dict[str, object]]) -> None:
    (user_dir / "tiny_models.yaml").write_text(yaml.safe_dump_all(cards, sort_keys=False))


def _load(name: str, checkpoint_dir: Path | None = None) -> tuple[ModelSpec, torch.nn.Module]:
    spec = resolve_model(CardStore(), name, checkpoint_dir)
    return spec, load_any_model(spec)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from fairseq2.nn import BatchLayout

    with torch.no_grad():
        return model(ids, BatchLayout.of(ids))


def _reference_logits(hf_dir: Path, ids: torch.Tensor, **config_changes: object) -> torch.Tensor:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    for key, value in config_changes.items():
        setattr(config, key, value)
    ref, info = AutoModelForCausalLM.from_pretrained(hf_dir, config=config, dtype=torch.float32, output_loading_info=True)
    # transformers would silently random-init a weight it cannot find.
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == [], info
    ref.eval()
    with torch.no_grad():
        return ref(ids).logits


def _assert_same_weights(model: torch.nn.Module, tiny: TinyModel) -> None:
    loaded = unique_state_dict(model)
    assert loaded.keys() == tiny.state_dict.keys()
    for key, expected in tiny.state_dict.items():
        assert torch.equal(loaded[key], expected), key
    if tiny.config.tied_embeddings:  # type: ignore[attr-defined]
        assert model.final_proj.weight is model.decoder_frontend.embed.weight


def _assert_close(logits: torch.Tensor, reference: torch.Tensor) -> None:
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max().item() < TOLERANCE
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))


LLAMA_VARIANTS = {
    "untied_gqa": dict(tied=False, num_kv_heads=2, rope_scaling=False),
    "tied_gqa_llama3_rope_scaling": dict(tied=True, num_kv_heads=2, rope_scaling=True),
    "untied_mha_llama3_rope_scaling": dict(tied=False, num_kv_heads=4, rope_scaling=True),
}


@pytest.mark.parametrize("variant", LLAMA_VARIANTS)
def test_llama_meta_reference_and_hf_directories(variant: str, isolated_user_cards: Path, tmp_path: Path) -> None:
    tiny = tiny_llama(seed=1, **LLAMA_VARIANTS[variant])  # type: ignore[arg-type]
    meta_file = write_meta_reference(tiny, tmp_path / "original")
    hf_dir = write_hf_dir(tiny, tmp_path / "hf")
    sharded_dir = write_hf_dir(tiny, tmp_path / "hf_sharded", num_shards=3)
    assert len(list(sharded_dir.glob("model-0000?-of-00003.safetensors"))) == 3
    _write_cards(isolated_user_cards, [
        tiny.card("tiny_meta_file", meta_file),
        tiny.card("tiny_meta_dir", meta_file.parent),
        tiny.card("tiny_hf@user", hf_dir),  # a brand-new name given as name@user
        tiny.card("tiny_hf_sharded", sharded_dir),
    ])
    ids = _token_ids(256)
    reference = _reference_logits(hf_dir, ids)
    for name in ("tiny_meta_file", "tiny_meta_dir", "tiny_hf", "tiny_hf_sharded"):
        spec, model = _load(name)
        assert spec.arch == "llama3_2_1b" and spec.family == "llama"
        _assert_same_weights(model, tiny)  # so the Meta and the HF loads agree exactly
        _assert_close(_logits(model, ids), reference)
    if tiny.config.use_scaled_rope:  # type: ignore[attr-defined]
        # The positions used are long enough for Llama 3 scaling to change the logits.
        unscaled = _reference_logits(hf_dir, ids, rope_scaling=None)
        assert (unscaled - reference).abs().max().item() > 100 * TOLERANCE


QWEN_VARIANTS = {
    "qwen25_tied_qkv_bias": lambda: tiny_qwen25(seed=2, tied=True),
    "qwen25_untied_qkv_bias": lambda: tiny_qwen25(seed=3, tied=False),
    "qwen3_qk_norm_head_dim": lambda: tiny_qwen3(seed=4),
}


@pytest.mark.parametrize("variant", QWEN_VARIANTS)
def test_qwen_hf_directories(variant: str, isolated_user_cards: Path, tmp_path: Path) -> None:
    tiny = QWEN_VARIANTS[variant]()
    hf_dir = write_hf_dir(tiny, tmp_path / "hf")
    sharded_dir = write_hf_dir(tiny, tmp_path / "hf_sharded", num_shards=2)
    _write_cards(isolated_user_cards, [tiny.card("tiny_qwen", hf_dir), tiny.card("tiny_qwen_sharded", sharded_dir)])
    ids = _token_ids(256)
    reference = _reference_logits(hf_dir, ids)
    for name in ("tiny_qwen", "tiny_qwen_sharded"):
        spec, model = _load(name)
        assert spec.family == "qwen"
        _assert_same_weights(model, tiny)
        _assert_close(_logits(model, ids), reference)


def test_hf_file_paths_inside_the_directory_load_too(isolated_user_cards: Path, tmp_path: Path) -> None:
    """A card may name model.safetensors itself rather than its directory."""
    tiny = tiny_llama(seed=5, tied=True)
    hf_dir = write_hf_dir(tiny, tmp_path / "hf")
    _write_cards(isolated_user_cards, [tiny.card("tiny_file", hf_dir / "model.safetensors")])
    _, model = _load("tiny_file")
    _assert_same_weights(model, tiny)


def test_bfloat16_checkpoints_load_as_float32(isolated_user_cards: Path, tmp_path: Path) -> None:
    """Released Llama and Qwen weights are bfloat16; lmtune loads them into float32 exactly."""
    tiny = tiny_llama(seed=8)
    meta_file = write_meta_reference(tiny, tmp_path / "original", dtype=torch.bfloat16)
    hf_dir = write_hf_dir(tiny, tmp_path / "hf", num_shards=2, dtype=torch.bfloat16)
    _write_cards(isolated_user_cards, [tiny.card("tiny_meta_bf16", meta_file), tiny.card("tiny_hf_bf16", hf_dir)])
    rounded = {k: v.to(torch.bfloat16).float() for k, v in tiny.state_dict.items()}
    expected = TinyModel(tiny.family, tiny.base_card, tiny.overrides, tiny.config, rounded)
    ids = _token_ids(256)
    reference = _reference_logits(hf_dir, ids)
    for name in ("tiny_meta_bf16", "tiny_hf_bf16"):
        _, model = _load(name)
        assert model.decoder_frontend.embed.weight.dtype == torch.float32
        _assert_same_weights(model, expected)
        _assert_close(_logits(model, ids), reference)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.mktemp("run") / "out", steps=4, every=2)


@pytest.mark.slow
def test_training_checkpoints_load_exactly(trained_run: Path, tmp_path: Path) -> None:
    checkpoints = trained_run
    weights = {}
    for ref, step in (("last_checkpoint", 4), ("checkpoint_step_2", 2), ("checkpoint_step_4", 4)):
        spec, model = _load(ref, checkpoints)
        assert spec.step == step and spec.family == "llama"
        assert spec.tokenizer is not None and spec.tokenizer.name == "tiny_tokenizer"
        saved = torch.load(checkpoints / f"step_{step}/model/pp_00/tp_00/sdp_00.pt", weights_only=True)
        loaded = model.state_dict()
        assert saved.keys() == loaded.keys()
        for key, tensor in saved.items():
            assert torch.equal(loaded[key], tensor), key
        weights[ref] = (spec, model)
    assert model_from_checkpoint_dir(checkpoints, None, "resume_checkpoint_dir") == weights["last_checkpoint"][0]
    step2 = weights["checkpoint_step_2"][1].state_dict()["decoder.layers.0.ffn.gate_proj.weight"]
    step4 = weights["last_checkpoint"][1].state_dict()["decoder.layers.0.ffn.gate_proj.weight"]
    assert not torch.equal(step2, step4)  # training moved the weights

    # The trained model, written as an HF directory, gives transformers the same logits.
    spec, model = weights["last_checkpoint"]
    trained = TinyModel("llama", "", spec.config, model_config(spec), unique_state_dict(model))
    hf_dir = write_hf_dir(trained, tmp_path / "hf")
    ids = _token_ids(trained.config.vocab_size)  # type: ignore[attr-defined]
    _assert_close(_logits(model, ids), _reference_logits(hf_dir, ids))


def test_llama_hf_directory_from_old_transformers_with_rotary_buffers(isolated_user_cards: Path, tmp_path: Path) -> None:
    """transformers < 4.31 saved each layer's rotary inv_freq; fairseq2 refuses those keys, lmtune drops them."""
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.model_checkpoint import CorruptModelCheckpointError

    from lmtune.models.loading import model_family

    tiny = tiny_llama(seed=6, tied=True)
    hf_dir = write_hf_dir(tiny, tmp_path / "hf_old", num_shards=2, rotary_buffers=True)
    _write_cards(isolated_user_cards, [tiny.card("tiny_old_hf", hf_dir), {**tiny.card("wrong_dim", hf_dir), "model_config": {**tiny.overrides, "model_dim": 32}}])
    spec = resolve_model(CardStore(), "tiny_old_hf", None)
    with pytest.raises(CorruptModelCheckpointError, match="not compatible"):  # why lmtune.models.checkpoint_formats exists
        model_family("llama").load_custom_model(hf_dir, model_config(spec), create_fake_gangs(CPU), torch.float32, False, False, None)
    model = load_any_model(spec)
    _assert_same_weights(model, tiny)
    ids = _token_ids(256)
    _assert_close(_logits(model, ids), _reference_logits(hf_dir, ids))
    with pytest.raises(UserError, match=rf"model 'wrong_dim': checkpoint {hf_dir} does not fit"):
        _load("wrong_dim")
