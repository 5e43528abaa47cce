"""A causal LM lmtune has no native family for (GPT-NeoX), run through the transformers-backed wrapper:
its logits, packed logits, training loss, greedy tokens and export against transformers itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fairseq2.datasets import SequenceBatch
from fairseq2.nn import BatchLayout

from lmtune.errors import UserError
from lmtune.models.transformers_family import (
    TransformersCausalLM,
    load_transformers_causal_lm,
)
from lmtune.training.nll_unit import target_nll

VOCAB = 97


def write_tiny_neox(out_dir: Path, *, seed: int = 0) -> Path:
    """A random GPT-NeoX (parallel residual, partial rotary, biases) written as an HF directory."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, rotary_pct=0.5, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture
def neox(tmp_path: Path) -> tuple[Path, TransformersCausalLM]:
    directory = write_tiny_neox(tmp_path / "neox")
    return directory, load_transformers_causal_lm(directory)


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def test_logits_padded_and_packed_equal_each_example_alone(neox: tuple[Path, TransformersCausalLM]) -> None:
    _, model = neox
    model.eval()
    a, b = tokens(5, 1), tokens(9, 2)
    with torch.no_grad():
        alone_a, alone_b = (model.hf(x[None]).logits[0] for x in (a, b))
        padded = torch.zeros(2, 9, dtype=torch.long)
        padded[0, :5], padded[1] = a, b
        by_row = model(padded, BatchLayout.of(padded, [5, 9]))
        flat = torch.cat([a, b, torch.zeros(3, dtype=torch.long)])  # a pad tail, as fairseq2's packer leaves
        packed = model(flat, BatchLayout.of(flat, [5, 9], packed=True))
    assert isinstance(by_row, torch.Tensor) and isinstance(packed, torch.Tensor)
    torch.testing.assert_close(by_row[0, :5], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_row[1], alone_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:5], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[5:14], alone_b, atol=1e-5, rtol=0)
    # Without the block-diagonal mask, b would see a: the check above can fail.
    with torch.no_grad():
        leaky = model.hf(flat[None, :14]).logits[0, 5:14]
    assert (leaky - alone_b).abs().max() > 1e-3


def test_training_loss_equals_transformers_loss(neox: tuple[Path, TransformersCausalLM]) -> None:
    """lmtune's training unit loss (summed NLL over the response) over the number of targets
    is transformers' own mean loss with the prompt labelled -100, packed and not."""
    _, model = neox
    a, b = tokens(8, 3), tokens(6, 4)
    mask_a = torch.tensor([False] * 3 + [True] * 5)
    mask_b = torch.tensor([False] * 2 + [True] * 4)
    flat = torch.cat([a, b])
    batch = SequenceBatch(flat, [8, 6], packed=True, target_mask=torch.cat([mask_a, mask_b]))
    loss, targets = target_nll(model, batch)
    ours = loss / targets.num_target_elements

    def labels(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.where(m, x, torch.full_like(x, -100))

    sums = []
    for x, m in ((a, mask_a), (b, mask_b)):
        out = model.hf(input_ids=x[None], labels=labels(x, m)[None])
        sums.append(out.loss * (m[1:].sum()))  # transformers averages over its shifted labels
    theirs = sum(sums) / (mask_a[1:].sum() + mask_b[1:].sum())
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
    ours.backward()
    assert model.hf.gpt_neox.embed_in.weight.grad is not None


def test_greedy_tokens_equal_generate(neox: tuple[Path, TransformersCausalLM]) -> None:
    _, model = neox
    model.eval()
    prompt = tokens(6, 5)
    expected = model.hf.generate(prompt[None], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 6:].tolist()
    assert model.greedy(prompt.tolist(), max_new_tokens=12) == expected


def test_export_after_a_training_step_loads_in_transformers(neox: tuple[Path, TransformersCausalLM], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    directory, model = neox
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = tokens(10, 6)
    loss, _ = target_nll(model, SequenceBatch(x[None], [10]))
    loss.backward()
    optimizer.step()
    out = tmp_path / "export"
    model.save_hf_dir(out, tokenizer_dir=directory)
    assert (out / "tokenizer_config.json").is_file() and not out.with_name("export.partial").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    base = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    model.eval()
    with torch.no_grad():
        trained = model.hf(x[None]).logits
        torch.testing.assert_close(reloaded(x[None]).logits, trained, atol=1e-5, rtol=0)
        assert (base(x[None]).logits - trained).abs().max() > 1e-3  # the export holds the trained weights


def test_lora_adapter_loads_with_peft(neox: tuple[Path, TransformersCausalLM], tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    directory, model = neox
    peft_model = get_peft_model(model.hf, LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value", "dense"], init_lora_weights=False))
    lora = TransformersCausalLM(peft_model)
    x = tokens(10, 7)
    loss, _ = target_nll(lora, SequenceBatch(x[None], [10]))
    loss.backward()
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(directory, local_files_only=True), tmp_path / "adapter").eval()
    lora.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[None]).logits, peft_model(x[None]).logits, atol=1e-5, rtol=0)


def test_random_init_from_config_only(tmp_path: Path) -> None:
    directory = write_tiny_neox(tmp_path / "neox")
    (directory / "model.safetensors").unlink()
    a = load_transformers_causal_lm(directory, random_init=True, seed=3)
    b = load_transformers_causal_lm(directory, random_init=True, seed=3)
    torch.testing.assert_close(a.hf.state_dict(), b.hf.state_dict())


def test_unknown_architecture_is_one_sentence(tmp_path: Path) -> None:
    directory = tmp_path / "odd"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "not_a_real_model", "architectures": ["NotARealModelForCausalLM"]}))
    before = sorted(p.name for p in directory.iterdir())
    with pytest.raises(UserError) as info:
        load_transformers_causal_lm(directory)
    message = str(info.value)
    assert "config.json" in message and "transformers cannot build" in message and "\n" not in message
    assert sorted(p.name for p in directory.iterdir()) == before


def test_cards_naming_such_directories_say_what_they_are(tmp_path: Path, isolated_user_cards: Path) -> None:
    """A card naming a GPT-NeoX directory is the transformers-backed family (this one has no tokenizer, so
    training says so); one naming an architecture transformers does not know says so; either way exit 2
    and nothing written. Training through the CLI: tests/test_transformers_family_cli.py."""
    import yaml

    from helpers import assert_user_error, run_lmtune_in_process

    neox = write_tiny_neox(tmp_path / "neox")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "not_a_real_model", "architectures": ["NotARealModelForCausalLM"]}))
    for name, directory in (("neox", neox), ("odd", odd)):
        (isolated_user_cards / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "checkpoint": str(directory)}))
    out = tmp_path / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=neox")
    assert_user_error(r, "model 'neox' names no tokenizer")
    shown = run_lmtune_in_process("assets", "show", "neox")
    assert shown.returncode == 0 and "model_family: transformers" in shown.stdout and "hf_architecture: GPTNeoXForCausalLM" in shown.stdout
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=odd")
    assert_user_error(r, f"{odd / 'config.json'}: transformers cannot build this model", "not_a_real_model")
    assert not out.exists()


def test_packing_probe_tells_an_architecture_that_mixes_examples(neox: tuple[Path, TransformersCausalLM]) -> None:
    """GPT-NeoX keeps packed examples apart; a model that drops the mask (as an architecture that
    rebuilds its own does) fails the probe, and packing is then off."""
    from lmtune.models.transformers_family import packing_or_length_batching

    _, model = neox
    assert model.packs_examples_apart() and packing_or_length_batching(model, True)
    original = model.hf.forward

    def without_mask(**kw):  # type: ignore[no-untyped-def]
        kw.pop("attention_mask", None)
        kw.pop("position_ids", None)
        return original(**kw)

    model.hf.forward = without_mask  # type: ignore[method-assign]
    assert not model.packs_examples_apart()
    assert packing_or_length_batching(model, True, say=False) is False
    assert model.training  # the probe leaves the mode as it found it


def test_padded_batch_without_target_mask_counts_no_pad_position(neox: tuple[Path, TransformersCausalLM]) -> None:
    """A pretraining-style batch (every token a target) padded to one width: the loss is the sum of each
    example's own transformers loss, the pad positions contribute nothing."""
    _, model = neox
    a, b = tokens(5, 8), tokens(9, 9)
    padded = torch.zeros(2, 9, dtype=torch.long)
    padded[0, :5], padded[1] = a, b
    loss, targets = target_nll(model, SequenceBatch(padded, [5, 9]))
    assert targets.num_target_elements == 4 + 8
    with torch.no_grad():
        expected = sum(model.hf(input_ids=x[None], labels=x[None]).loss * (len(x) - 1) for x in (a, b))
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-6)


def tiny_hf(kind: str) -> TransformersCausalLM:
    import transformers as T

    common = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    configs = {
        # Gemma 3: one sliding layer (window 4), one full layer; longer examples than the window below.
        "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"], **common),
        "phi3": lambda: T.Phi3Config(pad_token_id=0, **common),
        "granite": lambda: T.GraniteConfig(**common),
    }
    torch.manual_seed(0)
    return TransformersCausalLM(T.AutoModelForCausalLM.from_config(configs[kind](), attn_implementation="sdpa").eval())


@pytest.mark.parametrize("kind", ["gemma3_text", "phi3", "granite"])
def test_other_architectures_pack_examples_apart(kind: str) -> None:
    model = tiny_hf(kind)
    a, b = tokens(9, 10), tokens(7, 11)
    flat = torch.cat([a, b])
    with torch.no_grad():
        packed = model(flat, BatchLayout.of(flat, [9, 7], packed=True))
        alone = [model.hf(x[None]).logits[0] for x in (a, b)]
    assert isinstance(packed, torch.Tensor)
    torch.testing.assert_close(packed[:9], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[9:], alone[1], atol=1e-5, rtol=0)
    assert model.packs_examples_apart()


def test_a_sliding_window_model_without_layer_types_is_not_packed() -> None:
    """Mistral-style: one sliding window for every layer, no per-type masks; the 4D mask would drop the
    window, so the probe says no and the run batches by length."""
    import transformers as T

    config = T.MistralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, sliding_window=4)
    model = TransformersCausalLM(T.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"))
    assert not model.packs_examples_apart()
