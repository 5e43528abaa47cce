"""LoRA fine-tuning: adapters on a frozen base, checkpoints of the adapters alone, exact resume.
(Two ranks and gradient accumulation against one batch: test_lora_ranks.py.)

The reference for each number: the base model itself (step 0 of LoRA changes nothing),
a full fine-tuning checkpoint of the same model (size), an uninterrupted run (resume).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import assert_user_error, run_lmtune_in_process
from lora_runs import (
    BASE_CONFIG,
    LORA_ARGS,
    RUN_ARGS,
    adapter_tensors,
    dir_bytes,
    losses,
    train,
    write_base,
)
from resume_runs import cut_back

pytestmark = pytest.mark.slow  # trains LoRA runs


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base(tmp_path_factory.mktemp("lora_base"))


@pytest.fixture(scope="module")
def lora_run(cards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("lora") / "out", cards, *LORA_ARGS)


def _base_spec(cards: Path):  # type: ignore[no-untyped-def]
    from lmtune.catalog.specs import ModelSpec

    card = yaml.safe_load((cards / "lora_base.yaml").read_text())
    return ModelSpec(name="lora_base", family="llama", arch="llama3_2_1b", config=BASE_CONFIG, checkpoint=Path(card["checkpoint"]), source="test")


def test_adapters_start_as_the_base_model_and_only_they_train(cards: Path) -> None:
    from fairseq2.nn import BatchLayout

    from lmtune.adapters.build import load_any_model
    from lmtune.adapters.lora import apply_lora, target_names
    from lmtune.options.lora import LoraSettings

    base = load_any_model(_base_spec(cards))
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(ids, BatchLayout.of(ids))
    model = apply_lora(base, LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=target_names("all_linear", "lora_base")))
    got = model(ids, BatchLayout.of(ids))
    assert torch.equal(got, expected)  # B = 0: exactly the base model
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(trainable) == 2 * 7 * 2 and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    got.logsumexp(-1).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert all(model.get_parameter(n).grad is not None for n in trainable if n.endswith("lora_b"))
    # Each target's A is Kaiming-uniform: bounded by 1/sqrt(in_features), and not zero.
    a = model.get_parameter("decoder.layers.0.ffn.output_proj.lora_a")
    assert 0 < a.abs().max() <= a.shape[1] ** -0.5


def test_lora_run_trains_and_checkpoints_only_adapters(lora_run: Path) -> None:
    steps = losses(lora_run)
    assert sorted(steps) == list(range(1, 7))
    assert steps[6] < steps[1], steps
    state = adapter_tensors(lora_run / "checkpoints/step_6")
    assert state and all(k.endswith(("lora_a", "lora_b")) for k in state), sorted(state)[:5]
    assert len(state) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B)
    assert any(k.endswith("lora_b") and v.abs().max() > 0 for k, v in state.items())  # B has moved
    card = yaml.safe_load((lora_run / "checkpoints/lora.yaml").read_text())
    assert (card["rank"], card["alpha"], card["base"]["name"]) == (4, 8.0, "lora_base")


def test_lora_card_and_effective_config_keep_their_format(lora_run: Path, tmp_path: Path) -> None:
    """lora.yaml as lmtune has written it since LoRA came (flat settings, seed, base) loads and is
    written back key for key; OUT/lmtune.yaml's lora section holds the user's keys, resolved."""
    from lmtune.catalog.specs import LoraSpec

    earlier = {
        "rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["q_proj", "v_proj"], "quantize": "nf4", "seed": 7,
        "base": {"name": "lora_base", "model_family": "llama", "model_arch": "llama3_2_1b", "model_config": {"num_layers": 2}, "checkpoint": str(tmp_path / "hf")},
    }  # fmt: skip
    spec = LoraSpec.from_card(earlier, "test")
    assert (spec.settings.rank, spec.settings.targets, spec.settings.quantize, spec.seed, spec.base.checkpoint) == (4, ["q_proj", "v_proj"], "nf4", 7, tmp_path / "hf")
    assert spec.as_card() == earlier
    assert LoraSpec.from_card({k: v for k, v in earlier.items() if k != "seed"}, "test").seed == 0  # cards from before the seed was kept
    written = yaml.safe_load((lora_run / "checkpoints/lora.yaml").read_text())
    assert list(written) == list(earlier) and list(written["base"]) == list(earlier["base"])
    effective = yaml.safe_load((lora_run / "lmtune.yaml").read_text())["lora"]
    assert effective == {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "quantize": "none"}


def test_lora_checkpoint_is_at_most_5_percent_of_a_full_one(lora_run: Path, cards: Path, tmp_path: Path) -> None:
    full = train(tmp_path / "full", cards, "max_num_steps=3")
    full_bytes = dir_bytes(full / "checkpoints/step_3")
    lora_bytes = dir_bytes(lora_run / "checkpoints/step_6")  # both the last checkpoint: model, optimizer, trainer, data
    ratio = lora_bytes / full_bytes
    print(f"LoRA checkpoint {lora_bytes} bytes, full {full_bytes} bytes: {ratio:.2%}")
    assert ratio <= 0.05, ratio


@pytest.fixture(scope="module")
def qlora_run(cards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("qlora") / "out", cards, *LORA_ARGS, *QLORA_ARGS)


QLORA_ARGS = ["lora.quantize=nf4"]


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_resumed_lora_run_has_identical_losses(kind: str, request: pytest.FixtureRequest, tmp_path: Path, cards: Path) -> None:
    """As after kill -9 right after the step-3 checkpoint: step_6 and the later metrics gone. The
    resumed run reloads (and for QLoRA re-quantizes) the base and restores the adapters."""
    lora_run: Path = request.getfixturevalue(f"{kind}_run")
    out = tmp_path / "resumed"
    cut_back(lora_run, out, keep_step=3, drop_step=6)
    result = run_lmtune_in_process("instruction_finetune", str(out), *RUN_ARGS, *LORA_ARGS, *(QLORA_ARGS if kind == "qlora" else []), env={"LMTUNE_USER_ASSET_DIR": str(cards)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from step 3" in result.stderr
    expected, resumed = losses(lora_run), losses(out)
    assert [resumed[s] for s in (4, 5, 6)] == [expected[s] for s in (4, 5, 6)]
    a, b = adapter_tensors(lora_run / "checkpoints/step_6"), adapter_tensors(out / "checkpoints/step_6")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- bad input


def _refused(tmp_path: Path, cards: Path, *keys: str) -> str:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_lmtune_in_process("instruction_finetune", str(out), *RUN_ARGS, *keys, env={"LMTUNE_USER_ASSET_DIR": str(cards)})
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written, nothing lost
    return assert_user_error(result)


def test_unknown_target_lists_the_valid_names(tmp_path: Path, cards: Path) -> None:
    line = _refused(tmp_path, cards, "lora.rank=4", "lora.targets=[q_proj,qkv_proj]")
    assert "'qkv_proj'" in line and "lora_base" in line
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all_linear" in line


@pytest.mark.parametrize("rank", ["0", "-2"])
def test_explicit_rank_below_one_is_refused(tmp_path: Path, cards: Path, rank: str) -> None:
    line = _refused(tmp_path, cards, f"lora.rank={rank}")
    assert "lora.rank" in line and "at least 1" in line


def test_quantize_on_a_family_without_support_is_refused(tmp_path: Path, cards: Path) -> None:
    (cards / "mistral.yaml").write_text(yaml.safe_dump({"name": "tiny_mistral", "model_family": "mistral", "model_arch": "7b", "checkpoint": str(cards), "tokenizer_ref": "tiny_tokenizer"}))
    try:
        line = _refused(tmp_path, cards, "model=tiny_mistral", "lora.rank=4", "lora.quantize=nf4")
    finally:
        (cards / "mistral.yaml").unlink()
    assert "lora.quantize=nf4" in line and "mistral" in line and "lmtune adapts llama, qwen, olmo, gpt2, transformers models" in line


def test_quantize_without_rank_and_lora_on_random_weights_are_refused(tmp_path: Path, cards: Path) -> None:
    assert "also set lora.rank" in _refused(tmp_path, cards, "lora.quantize=nf4")
    shutil.rmtree(tmp_path / "out")
    assert "init: random" in _refused(tmp_path, cards, "model=tiny_llama", "lora.rank=4")


def test_new_stage_from_a_lora_checkpoint_continues_its_adapters(lora_run: Path, tmp_path: Path, cards: Path) -> None:
    """Stage 2's warmup starts at learning rate 0, so what it saves after step 1 is what it started from."""
    out = tmp_path / "stage2"
    result = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", f"resume_checkpoint_dir={lora_run}/checkpoints",
        "model=last_checkpoint", "max_num_steps=2", "checkpoint_every_n_steps=1", "publish_metrics_every_n_steps=1",
        "keep_last_n_models=2", "lr_scheduler.num_warmup_steps=1", "max_num_tokens=1024", "tensorboard=false",
        env={"LMTUNE_USER_ASSET_DIR": str(cards)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    started, stage1 = adapter_tensors(out / "checkpoints/step_1"), adapter_tensors(lora_run / "checkpoints/step_6")
    assert started.keys() == stage1.keys() and all(torch.equal(started[k], stage1[k]) for k in stage1)
    trained = adapter_tensors(out / "checkpoints/step_2")
    assert any(not torch.equal(trained[k], started[k]) for k in started)
    card, card1 = (yaml.safe_load((d / "checkpoints/lora.yaml").read_text()) for d in (out, lora_run))
    assert (card["rank"], card["alpha"], card["targets"], card["base"]) == (card1["rank"], card1["alpha"], card1["targets"], card1["base"])


def test_new_stage_with_another_rank_is_refused(lora_run: Path, tmp_path: Path, cards: Path) -> None:
    line = _refused(tmp_path, cards, f"resume_checkpoint_dir={lora_run}/checkpoints", "model=last_checkpoint", "lora.rank=8")
    assert "rank 4" in line and "lora.rank" in line


def test_validation_scores_the_adapted_model(cards: Path, tmp_path: Path) -> None:
    """The validation loss at step 3 is that of the step-3 checkpoint's model (base + adapters), recomputed here."""
    from fairseq2.nn import BatchLayout

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.specs import model_from_checkpoint_dir
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import read_records
    from lmtune.models.loading import load_tokenizer
    from lmtune.resources import assets_dir

    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(line + "\n" for line in (assets_dir() / "tiny/gsm8k/test/test.jsonl").read_text().splitlines()[:16]))
    out = train(tmp_path / "out", cards, "lora.rank=4", "lora.alpha=8", f"valid_dataset={valid}", "validate_every_n_steps=3", "eval_task=none")
    logged = losses(out, "valid")
    spec = model_from_checkpoint_dir(out / "checkpoints", 3, "test")
    model = load_any_model(spec)
    encoder = ExampleEncoder(load_tokenizer(spec.tokenizer), spec.tokenizer.hf_dir)  # type: ignore[arg-type]
    total, targets = 0.0, 0
    with torch.no_grad():
        for record in read_records(valid):
            ex = encoder.encode(record)
            ids = torch.tensor([ex.tokens])
            logp = model(ids[:, :-1], BatchLayout.of(ids[:, :-1])).log_softmax(-1)[0]
            mask = torch.tensor(ex.target_mask[1:])
            total -= logp.gather(-1, ids[0, 1:, None])[:, 0][mask].sum().item()
            targets += int(mask.sum())
    assert abs(logged[3] - total / targets) < 1e-4 * abs(logged[3]), (logged[3], total / targets)
    assert logged[6] != logged[3]


def test_activation_checkpointing_gives_the_same_run(lora_run: Path, tmp_path: Path, cards: Path) -> None:
    """Layers recomputed in backward (dropout masks replayed): the losses and adapters of the run without."""
    checkpointed = train(tmp_path / "ac", cards, *LORA_ARGS, "activation_checkpointing=true")
    la, l0 = losses(checkpointed), losses(lora_run)
    assert sorted(la) == sorted(l0)
    for step in l0:
        assert la[step] == pytest.approx(l0[step], rel=1e-6), step
    a, b = adapter_tensors(checkpointed / "checkpoints/step_6"), adapter_tensors(lora_run / "checkpoints/step_6")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
