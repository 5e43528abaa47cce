"""LoRA on a transformers-backed model (a tiny GPT-NeoX, which lmtune has no native family for) through the CLI:
the adapted layers are the ones PEFT adapts for the same target names, a resumed run's losses equal an
uninterrupted run's, the frozen base is unchanged, and the exported adapter loaded by PEFT (and the merged
export loaded by transformers) gives the logits and greedy tokens of lmtune's own model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import assert_user_error, losses, run_lmtune_in_process
from test_transformers_family_cli import (
    VOCAB,
    assert_generate_is_greedy,
    write_neox_dir,
)

NEOX_LINEAR = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
RUN_ARGS = [
    "--config-file", "tiny_gsm8k", "--config", "model=my_neox", "checkpoint_every_n_steps=3", "keep_last_n_checkpoints=2",
    "publish_metrics_every_n_steps=1", "tensorboard=false", "learning_rate=3e-3", "lr_scheduler.num_warmup_steps=0", "dtype=float32",
    "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1",
]  # fmt: skip


def neox_card(root: Path, cards: Path) -> Path:
    directory = write_neox_dir(root / "neox")
    (cards / "my_neox.yaml").write_text(yaml.safe_dump({"name": "my_neox", "checkpoint": str(directory)}))
    return directory


def test_targets_are_the_linear_layers_peft_adapts_for_the_same_names(tmp_path: Path, isolated_user_cards: Path) -> None:
    from fairseq2.nn import BatchLayout
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmtune.adapters.lora import lora_modules
    from lmtune.adapters.transformers_lora import transformers_target_names
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.errors import UserError
    from lmtune.models.loading import load_model
    from lmtune.options.lora import LoraSettings

    directory = neox_card(tmp_path, isolated_user_cards)
    spec = resolve_model(CardStore(), "my_neox", None)
    assert transformers_target_names("all_linear", spec) == NEOX_LINEAR  # never the output head, embed_out
    assert transformers_target_names(["attention.dense", "query_key_value"], spec) == ["attention.dense", "query_key_value"]
    with pytest.raises(UserError, match="'q_proj' is not a linear layer of model 'my_neox' \\(GPTNeoXForCausalLM\\); valid: query_key_value, dense, dense_h_to_4h, dense_4h_to_h, all_linear"):
        transformers_target_names(["q_proj"], spec)

    from lmtune.adapters.lora import apply_lora

    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    for targets, adapted in ((NEOX_LINEAR, 8), (["attention.dense", "dense_h_to_4h"], 4)):  # 2 layers
        model = load_model(spec)
        with torch.no_grad():
            before = model(ids, BatchLayout.of(ids))
        apply_lora(model, LoraSettings(rank=4, alpha=8, targets=targets))
        ours = sorted(name.removeprefix("hf.") for name, _ in lora_modules(model))
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(directory), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        theirs = sorted(name.removeprefix("base_model.model.").removesuffix(".lora_A") for name, _ in peft.named_modules() if name.endswith(".lora_A"))
        assert ours == theirs and len(ours) == adapted
        with torch.no_grad():
            assert torch.equal(model(ids, BatchLayout.of(ids)), before)  # B = 0: the adapted model starts as the base


def test_unknown_target_and_qlora_are_refused_in_one_sentence(tmp_path: Path, isolated_user_cards: Path) -> None:
    neox_card(tmp_path, isolated_user_cards)
    out = tmp_path / "out"
    line = assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *RUN_ARGS, "lora.targets=[query_key_value,q_proj]"))
    assert "'lora.targets': 'q_proj'" in line and "valid: query_key_value, dense, dense_h_to_4h, dense_4h_to_h, all_linear" in line
    line = assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *RUN_ARGS, "lora.quantize=nf4"))
    assert "lora.quantize=nf4 is not supported for model 'my_neox'" in line and "without lora.quantize" in line
    assert not out.exists()


@pytest.mark.slow
def test_lora_run_resumes_exports_a_peft_adapter_and_generates(tmp_path: Path, isolated_user_cards: Path) -> None:
    from fairseq2.nn import BatchLayout
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model

    directory = neox_card(tmp_path, isolated_user_cards)

    def train(out: Path, steps: int) -> str:
        r = run_lmtune_in_process("instruction_finetune", str(out), *RUN_ARGS, f"max_num_steps={steps}")
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stderr

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, 6)
    # As after kill -9 right after the step-3 checkpoint: step_6 and the later metrics gone.
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints/step_6")
    metrics = resumed / "metrics/train.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:3]))
    (resumed / ".lmtune.lock").unlink(missing_ok=True)
    assert "resuming from step 3" in train(resumed, 6)
    loss = losses(resumed)
    assert [loss[s] for s in (4, 5, 6)] == [losses(straight)[s] for s in (4, 5, 6)]  # the adapters, dropout's and the data's state restored
    assert loss[6] < loss[1], loss
    checkpoints = resumed / "checkpoints"

    def adapters(out: Path) -> dict[str, torch.Tensor]:
        state = torch.load(out / "checkpoints/step_6/model/pp_00/tp_00/sdp_00.pt", weights_only=True)
        return state.get("model", state)  # type: ignore[no-any-return]

    saved = adapters(resumed)
    assert saved.keys() == adapters(straight).keys() and all(torch.equal(t, adapters(straight)[k]) for k, t in saved.items())
    assert len(saved) == 2 * 2 * len(NEOX_LINEAR) and all(k.endswith((".lora_a", ".lora_b")) for k in saved)  # the adapters alone
    assert yaml.safe_load((checkpoints / "lora.yaml").read_text())["targets"] == NEOX_LINEAR

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    for extra in (["--adapter", "--output", str(adapter)], ["--output", str(merged)]):
        r = run_lmtune_in_process("write_hf_config", str(checkpoints), *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == sorted(NEOX_LINEAR)
    start, base = load_file(str(directory / "model.safetensors")), load_file(str(adapter.with_name("adapter_base") / "model.safetensors"))
    assert sorted(start) == sorted(base) and all(torch.equal(start[k], base[k]) for k in start)  # the frozen base did not move

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter.with_name("adapter_base"), dtype=torch.float32), adapter).eval()
    assert len(load_file(str(adapter / "adapter_model.safetensors"))) == len(saved)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ours = load_any_model(resolve_model(CardStore(), "last_checkpoint", checkpoints))
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = ours(ids, BatchLayout.of(ids))
        assert (logits - peft(ids).logits).abs().max() <= 1e-5
        assert (logits - plain(ids).logits).abs().max() <= 1e-5
        assert (logits - AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)(ids).logits).abs().max() > 1e-3  # trained

    assert_generate_is_greedy(tmp_path / "gen", checkpoints, peft, merged / "tokenizer.json")


def test_preference_tuning_refuses_the_family_in_one_sentence(tmp_path: Path, isolated_user_cards: Path) -> None:
    """With LoRA now planned for the family, a preference run reached fairseq2 and failed with a traceback
    (the wrapper has no fused loss for the response log-probs); it is refused before OUT is touched."""
    neox_card(tmp_path, isolated_user_cards)
    out = tmp_path / "out"
    for extra in ([], ["lora.rank=4"]):
        result = run_lmtune_in_process("preference_finetune", str(out), "--config", "model=my_neox", "dataset=tiny_gsm8k", *extra)
        assert "model 'my_neox', which lmtune builds through transformers" in assert_user_error(result, "preference tuning does not take")
    assert not out.exists()
