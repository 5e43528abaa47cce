"""A GPT-NeoX directory (no native lmtune family) fine-tuned, resumed, exported and generated with
through the CLI: the transformers-backed family (lmtune.models.transformers_fairseq2), checked
against transformers itself on the exported directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import losses, metric_rows, run_lmtune_in_process
from tiny_builders import write_hf_gpt2_tokenizer

VOCAB = 300  # write_hf_gpt2_tokenizer's: <|endoftext|> is id 299
END_OF_TEXT = VOCAB - 1


def write_neox_dir(out: Path) -> Path:
    """A random GPT-NeoX written by transformers' save_pretrained, with a GPT-2-style tokenizer.json beside it."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    write_hf_gpt2_tokenizer(out, vocab_size=VOCAB)
    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=256,
        rotary_pct=0.5, eos_token_id=END_OF_TEXT, bos_token_id=END_OF_TEXT,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def train(out: Path, steps: int, model: str = "my_neox") -> str:
    r = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", f"model={model}", f"max_num_steps={steps}",
        "checkpoint_every_n_steps=3", "keep_last_n_checkpoints=2", "publish_metrics_every_n_steps=1", "tensorboard=false", "lr_scheduler.num_warmup_steps=0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


@pytest.mark.slow
def test_an_architecture_that_mixes_packed_examples_is_batched_by_length(tmp_path: Path, isolated_user_cards: Path) -> None:
    """Starcoder2 with a sliding window (and no layer_types) loses its window under the 4D mask, so the
    packing probe refuses it: the run says so once, says nowhere else that it packs, and its batches are padded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path / "starcoder2"
    write_hf_gpt2_tokenizer(directory, vocab_size=VOCAB)
    config = AutoConfig.for_model(
        "starcoder2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, sliding_window=4, eos_token_id=END_OF_TEXT, bos_token_id=END_OF_TEXT,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    (isolated_user_cards / "sc2.yaml").write_text(yaml.safe_dump({"name": "sc2", "checkpoint": str(directory)}))
    out = tmp_path / "out"
    stderr = train(out, 2, model="sc2")
    assert stderr.count("Starcoder2ForCausalLM does not keep packed examples apart") == 1, stderr[-3000:]
    # Nothing else the run shows (header, steps, summary) says that it packs.
    others = [line for line in stderr.splitlines() if re.search(r"\bpack(ed|ing|s)?\b", line, re.IGNORECASE) and "does not keep packed examples apart" not in line]
    assert not others, others
    assert all(row["Padding"] > 0 for row in metric_rows(out))


@pytest.mark.slow
def test_finetune_resume_export_and_generate_through_the_cli(tmp_path: Path, isolated_user_cards: Path) -> None:
    from fairseq2.nn import BatchLayout
    from transformers import AutoModelForCausalLM

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model

    directory = write_neox_dir(tmp_path / "neox")
    (isolated_user_cards / "my_neox.yaml").write_text(yaml.safe_dump({"name": "my_neox", "checkpoint": str(directory)}))
    out = tmp_path / "out"
    train(out, 3)
    train(out, 6)  # the rerun resumes from step_3
    checkpoints = out / "checkpoints"
    assert (checkpoints / "step_3" / "model").is_dir() and (checkpoints / "step_6" / "model").is_dir()
    meta = yaml.safe_load((checkpoints / "model.yaml").read_text())
    assert meta["model_family"] == "transformers" and meta["model_config"]["directory"] == str(directory.resolve())
    assert all(row["Padding"] == 0 for row in metric_rows(out))  # packed: GPT-NeoX keeps packed examples apart
    loss = losses(out)
    assert sorted(loss) == [1, 2, 3, 4, 5, 6]
    assert loss[6] < loss[4] < loss[1], loss

    export = tmp_path / "export"
    r = run_lmtune_in_process("write_hf_config", str(checkpoints), "--output", str(export))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (export / "tokenizer.json").is_file()
    ref = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    start = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert not torch.equal(ref.gpt_neox.embed_in.weight, start.gpt_neox.embed_in.weight)  # the trained weights, not the card's

    wrapped = load_any_model(resolve_model(CardStore(), "last_checkpoint", checkpoints))
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = wrapped(ids, BatchLayout.of(ids))
        theirs = ref(ids).logits
    assert (ours - theirs).abs().max() <= 1e-5

    assert_generate_is_greedy(tmp_path / "gen", checkpoints, ref, export / "tokenizer.json")


def assert_generate_is_greedy(gen: Path, checkpoints: Path, reference: torch.nn.Module, tokenizer_json: Path) -> None:
    """``lmtune generate`` on the last checkpoint completes its first prompt with ``reference``'s greedy tokens (transformers' generate)."""
    from tokenizers import Tokenizer

    r = run_lmtune_in_process(
        "generate", str(gen), "--config", f"checkpoint_dir={checkpoints}", "model=last_checkpoint", "dataset=tiny_gsm8k", "dtype=float32",
        "batch_size=4", "generator_config.max_gen_len=12",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads((gen / "generations.jsonl").read_text().splitlines()[0])
    prompt = Tokenizer.from_file(str(tokenizer_json)).encode(row["prompt"]).ids
    with torch.no_grad():
        greedy = reference.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=END_OF_TEXT, pad_token_id=END_OF_TEXT)
    assert row["token_ids"] == greedy[0, len(prompt) :].tolist()
