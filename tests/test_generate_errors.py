"""Bad input to lmtune generate / score: one sentence, exit 2, no traceback, and
nothing written to OUT. In-process (lmtune.cli.main): the same sentence and exit code as the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_user_error, run_lmtune_in_process


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def _generate(out: Path, *config: str):  # type: ignore[no-untyped-def]
    return run_lmtune_in_process("generate", str(out), "--config", *config)


def _fake_run(tmp_path: Path, steps: list[int]) -> Path:
    """A training run's checkpoint directory as fairseq2 lays it out (no weights
    are read before the name is checked)."""
    ckpt = tmp_path / "run" / "checkpoints"
    for step in steps:
        (ckpt / f"step_{step}" / "model").mkdir(parents=True)
    (ckpt / "step_9.tmp" / "model").mkdir(parents=True)  # incomplete: not a checkpoint
    (ckpt / "model.yaml").write_text("name: checkpoint\nmodel_family: llama\nmodel_config: {}\n")
    return ckpt


def test_checkpoint_that_does_not_exist_lists_those_that_do(tmp_path: Path, out: Path) -> None:
    ckpt = _fake_run(tmp_path, [200, 400])
    r = _generate(out, f"checkpoint_dir={ckpt}", "model=checkpoint_step_1000", "dataset=tiny_gsm8k")
    assert_user_error(r, "no checkpoint_step_1000", "last_checkpoint, checkpoint_step_200, checkpoint_step_400.")
    r = _generate(out, "model=checkpoint_step_200", "dataset=tiny_gsm8k")
    assert_user_error(r, "checkpoint_dir=OUT/checkpoints")
    r = _generate(out, f"checkpoint_dir={tmp_path}", "model=last_checkpoint", "dataset=tiny_gsm8k")
    assert_user_error(r, f"checkpoint_dir={tmp_path} is not a training run's checkpoint directory")
    assert not out.exists()


def test_empty_and_malformed_prompt_files(tmp_path: Path, out: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_user_error(_generate(out, "model=tiny_llama", f"dataset={empty}"), str(empty), "no records")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a"}\n{"src": \n')
    assert_user_error(_generate(out, "model=tiny_llama", f"dataset={bad}"), f"{bad}:2", "not valid JSON")
    no_prompt = tmp_path / "no_prompt.jsonl"
    no_prompt.write_text('{"src": "a"}\n{"question": "b"}\n')
    assert_user_error(_generate(out, "model=tiny_llama", f"dataset={no_prompt}"), f"{no_prompt}:2", "neither 'src' nor 'messages'")
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    (train_only / "train.jsonl").write_text('{"src": "a", "tgt": "b"}\n')
    assert_user_error(_generate(out, "model=tiny_llama", f"dataset={train_only}"), "has no test split")
    assert not out.exists()


def test_prompt_longer_than_the_model_takes(tmp_path: Path, out: Path) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"src": "short"}) + "\n" + json.dumps({"src": "Ava has 3 pens. " * 200}) + "\n")
    assert_user_error(_generate(out, "model=tiny_llama", f"dataset={data}"), f"{data}:2", "takes at most 512 tokens")
    assert not out.exists()


def test_generator_option_that_does_not_exist(out: Path) -> None:
    r = _generate(out, "model=tiny_llama", "dataset=tiny_gsm8k", "generator_config.temprature=0.5")
    assert_user_error(r, "generator_config.temprature", "did you mean 'generator_config.temperature'")
    assert_user_error(_generate(out, "model=tiny_llama", "dataset=tiny_gsm8k", "generator_config.top_p=1.5"), "top_p", "(0, 1]")
    assert_user_error(_generate(out, "model=tiny_llama", "dataset=tiny_gsm8k", "generator_config.beam_size=two"), "beam_size", "integer")
    assert_user_error(_generate(out, "model=tiny_llama", "dataset=tiny_gsm8k", "score=bleu"), "'score'", "'gsm8k'")
    assert not out.exists()


def test_score_task_that_does_not_match_the_data(tmp_path: Path, out: Path) -> None:
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"src": f"Say {w}.", "tgt": w}) + "\n" for w in ["red", "blue", "red"]))
    r = _generate(out, "model=tiny_llama", f"dataset={data}", "score=gsm8k")
    assert_user_error(r, f"{data}:1", "#### <number>", "3 of 3")
    r = _generate(out, "model=tiny_llama", f"dataset={data}", "score=classification", "labels=[red, green]")
    assert_user_error(r, f"{data}:2", "one of the labels (red, green)")
    prompts_only = tmp_path / "prompts.jsonl"
    prompts_only.write_text('{"src": "a"}\n')
    assert_user_error(_generate(out, "model=tiny_llama", f"dataset={prompts_only}", "score=exact_match"), f"{prompts_only}:1", "needs a reference")
    assert not out.exists()


def test_score_command_refuses_mismatched_and_malformed_predictions(tmp_path: Path) -> None:
    preds = tmp_path / "generations.jsonl"
    preds.write_text(json.dumps({"completion": "13", "reference": "13"}) + "\n")
    assert_user_error(run_lmtune_in_process("score", str(preds), "--task", "gsm8k"), f"{preds}:1", "#### <number>")
    preds.write_text(json.dumps({"completion": "#### 13", "reference": "#### 13"}) + "\n{oops\n")
    assert_user_error(run_lmtune_in_process("score", str(preds), "--task", "gsm8k"), f"{preds}:2", "not valid JSON")
    preds.write_text(json.dumps({"text": "13"}) + "\n")
    assert_user_error(run_lmtune_in_process("score", str(preds), "--task", "exact_match"), f"{preds}:1", "'completion'")
    assert_user_error(run_lmtune_in_process("score", str(tmp_path / "missing.jsonl"), "--task", "exact_match"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generations.jsonl"]


def test_unknown_model_with_checkpoint_dir_names_its_checkpoints(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fairseq2's tutorial computes model=checkpoint_$(basename "$CKPT_DIR"), i.e. checkpoint_checkpoints."""
    from lmtune.cli import main
    from lmtune.run_dir import SCORES

    ckpt = _fake_run(tmp_path, [200, 400])
    args = ["generate", str(out), "--config", f"checkpoint_dir={ckpt}", "model=checkpoint_checkpoints", "dataset=tiny_gsm8k"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmtune: error: unknown model 'checkpoint_checkpoints'") and err.count("\n") == 1, err
    assert f"checkpoint_dir={ckpt} holds last_checkpoint, checkpoint_step_200, checkpoint_step_400." in err, err
    (ckpt / SCORES).mkdir()
    (ckpt / SCORES / "step_200.txt").write_text("0.5\n")  # a scored run also has a best checkpoint
    assert main(args) == 2
    assert "holds last_checkpoint, best_checkpoint, checkpoint_step_200, checkpoint_step_400." in capsys.readouterr().err
    assert not out.exists()
