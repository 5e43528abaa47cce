"""Bad input through the real CLI: one sentence, exit 2, no traceback, OUT untouched.

Errors found before training starts are checked in-process (lmtune.cli.main, the same sentence and
exit code); those raised inside a fairseq2 run, where a traceback could slip onto stderr, in a real process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import assert_user_error, run_lmtune_in_process

TINY = ["--config-file", "tiny_gsm8k", "--config", "max_num_steps=2"]


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    """An OUT that already holds a file, which no failed run may touch."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    return out


def _untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def _jsonl(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_unknown_config_key_suggests(out: Path) -> None:
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, "max_num_step=3")
    assert_user_error(r, "max_num_step", "did you mean 'max_num_steps'")
    _untouched(out)


def test_wrong_type(out: Path) -> None:
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, "batch_size=big"), "batch_size", "integer")
    _untouched(out)


def test_missing_dataset_path(out: Path, tmp_path: Path) -> None:
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, f"dataset={tmp_path}/nope")
    assert_user_error(r, f"{tmp_path}/nope", "no such file")
    _untouched(out)


def test_malformed_jsonl_line(out: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path, '{"src": "a", "tgt": "b"}\n{"src": "a", "tgt": \n')
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, f"dataset={data}"), f"{data}:2", "not valid JSON")
    _untouched(out)


def test_record_without_fields(out: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path, '{"src": "a", "tgt": "b"}\n\n{"prompt": "a"}\n')
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, f"dataset={data}"), f"{data}:3", "neither 'src' nor 'messages'")
    data = _jsonl(tmp_path, '{"src": "a"}\n')
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, f"dataset={data}"), f"{data}:1", "no 'tgt'")
    _untouched(out)


def test_empty_dataset(out: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path, "\n\n")
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, f"dataset={data}"), str(data), "no records")
    _untouched(out)


@pytest.mark.slow
def test_every_example_too_long(out: Path) -> None:
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, "max_seq_len=8", "max_num_tokens=64")
    assert_user_error(r, "every example is longer than max_seq_len=8")
    assert (out / "keep.txt").read_text() == "precious"


def test_unknown_model_and_tokenizer_names(out: Path) -> None:
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, "model=tiny_lama"), "unknown model 'tiny_lama'", "tiny_llama")
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, "tokenizer=tiny_tokeniser"), "unknown tokenizer", "tiny_tokenizer")
    _untouched(out)


def test_card_yaml_syntax_error(out: Path, isolated_user_cards: Path) -> None:
    bad = isolated_user_cards / "bad.yaml"
    bad.write_text("name: x\nmodel_family: [llama\n")
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY), f"{bad}:", "YAML syntax error")
    _untouched(out)


def test_card_checkpoint_missing(out: Path, isolated_user_cards: Path) -> None:
    (isolated_user_cards / "m.yaml").write_text("name: my_model\nbase: tiny_llama\ncheckpoint: /nowhere/model.pt\n")
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *TINY, "model=my_model"), "my_model", "/nowhere/model.pt does not exist")
    _untouched(out)


@pytest.mark.slow
def test_tokenizer_larger_than_model_vocabulary(out: Path, isolated_user_cards: Path) -> None:
    (isolated_user_cards / "m.yaml").write_text("name: small_vocab\nbase: tiny_llama\nmodel_config:\n  vocab_size: 300\n")
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, "model=small_vocab")
    assert_user_error(r, "476 tokens", "vocab_size=300")
    _untouched(out)


def test_unknown_preset_and_missing_model() -> None:
    assert_user_error(run_lmtune_in_process("instruction_finetune", "/tmp/x", "--config-file", "tiny_gsm"), "tiny_gsm8k")
    assert_user_error(run_lmtune_in_process("instruction_finetune", "/tmp/x", "--config", "dataset=tiny_gsm8k"), "'model' is not set")


TINY_LLAMA = {  # assets/tiny.yaml's tiny_llama
    "model_dim": 128, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 512,
    "vocab_size": 512, "pad_idx": 2, "tied_embeddings": True, "max_seq_len": 512,
}


@pytest.mark.slow
def test_checkpoint_of_another_size(out: Path, tmp_path: Path, isolated_user_cards: Path) -> None:
    from tiny_builders import build_tiny_model, write_meta_reference

    pth = write_meta_reference(build_tiny_model("llama", "tiny_llama", TINY_LLAMA), tmp_path / "weights")  # model_dim 128
    card = f"name: my_model\nbase: tiny_llama\ninit: null\ncheckpoint: {pth}\nmodel_config:\n  model_dim: 64\n"
    (isolated_user_cards / "m.yaml").write_text(card)
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, "model=my_model")
    assert_user_error(r, str(pth), "does not fit the model's architecture", "(512, 64) in the model", "model_config")
    assert (out / "keep.txt").read_text() == "precious"
    r = run_lmtune_in_process("generate", str(tmp_path / "gen"), "--config", "model=my_model", "dataset=tiny_gsm8k")
    assert_user_error(r, str(pth), "does not fit the model's architecture")
    # With the card fixed, the same OUT trains: the failed attempt left no checkpoint to protect.
    (isolated_user_cards / "m.yaml").write_text(card.replace("model_dim: 64", "model_dim: 128"))
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, "model=my_model")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_added_tokens_beyond_the_model_vocabulary(out: Path, tmp_path: Path, isolated_user_cards: Path) -> None:
    import json
    import shutil

    from lmtune.resources import assets_dir

    tok_dir = tmp_path / "tok"
    shutil.copytree(assets_dir() / "tiny/tokenizer", tok_dir)
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 476, "content": "<|tool|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (tok_dir / "tokenizer.json").write_text(json.dumps(data))
    cards = f"name: tok_plus\ntokenizer: {tok_dir}\ntokenizer_family: llama\ntokenizer_config:\n  impl: hg\n  use_eot: true\n---\n"
    cards += "name: vocab_476\nbase: tiny_llama\ntokenizer_ref: tok_plus\nmodel_config:\n  vocab_size: 476\n"
    (isolated_user_cards / "m.yaml").write_text(cards)
    r = run_lmtune_in_process("instruction_finetune", str(out), *TINY, "model=vocab_476")
    assert_user_error(r, "477 tokens", "vocab_size=476")
    _untouched(out)


@pytest.mark.parametrize("verb", ["instruction_finetune", "pretrain", "generate", "sweep", "demo"])
def test_no_sweep_dir_is_accepted_and_changes_nothing(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fairseq2's tutorial passes --no-sweep-dir; lmtune writes into OUT itself."""
    from lmtune.cli import main

    with pytest.raises(SystemExit) as exit:
        main([verb, "--help"])
    assert exit.value.code == 0
    assert "--no-sweep-dir" in capsys.readouterr().out
    if verb == "demo":  # no --dump-config
        return
    args = [str(tmp_path / "out"), "--dump-config", *(["--grid", "seed=1,2"] if verb == "sweep" else [])]
    assert main([verb, *args]) == 0
    plain = capsys.readouterr().out
    assert main([verb, "--no-sweep-dir", *args]) == 0
    assert capsys.readouterr().out == plain != ""
    assert not (tmp_path / "out").exists()
