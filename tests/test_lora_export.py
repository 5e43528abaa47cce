"""A LoRA (and QLoRA) checkpoint in transformers, PEFT and `lmtune generate`.

Each run trains a few steps (so B != 0), then `lmtune write_hf_config` writes the merged
directory and, with --adapter, a PEFT adapter beside its base. The reference is lmtune's
own LoRA model: PEFT on the exported base must give its logits to 1e-5 and its greedy
tokens, and transformers on the merged export must generate what `lmtune generate`
generates from the checkpoint itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import REPO, assert_user_error, run_lmtune_in_process
from lora_runs import LORA_ARGS, losses, train, write_base
from test_generate import hf_greedy

pytestmark = pytest.mark.slow  # trains LoRA and QLoRA runs and exports them

MAX_GEN_LEN = 24
LOGIT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base(tmp_path_factory.mktemp("lora_base"))


@pytest.fixture(scope="module", params=["lora", "qlora"])
def exported(request: pytest.FixtureRequest, cards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp(request.param)
    extra = ["lora.quantize=nf4"] if request.param == "qlora" else []
    out = train(root / "out", cards, *LORA_ARGS, *extra, "export_hf=last")  # the merged export, as training ends
    assert (out / "checkpoints/step_6/hf/config.json").is_file()
    env = {"LMTUNE_USER_ASSET_DIR": str(cards)}
    r = run_lmtune_in_process("write_hf_config", str(out), "--adapter", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (REPO / "assets/tiny/gsm8k/test/test.jsonl").read_text().splitlines()[:3]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(line + "\n" for line in lines))
    r = run_lmtune_in_process("generate", str(root / "gen"), "--config", f"checkpoint_dir={out}/checkpoints", "model=last_checkpoint",
                   f"dataset={prompts}", f"generator_config.max_gen_len={MAX_GEN_LEN}", "score=none", "dtype=float32", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (root / "gen/generations.jsonl").read_text().splitlines()]
    return {"kind": request.param, "out": out, "step": out / "checkpoints/step_6", "rows": rows, "cards": cards}


def _lmtune_model_and_prompts(exported: dict[str, object]):  # type: ignore[no-untyped-def]
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.specs import model_from_checkpoint_dir
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import read_records
    from lmtune.models.loading import load_tokenizer

    spec = model_from_checkpoint_dir(exported["out"] / "checkpoints", None, "test")  # type: ignore[operator]
    assert spec.lora is not None and spec.lora.settings.quantize == ("nf4" if exported["kind"] == "qlora" else "none")
    encoder = ExampleEncoder(load_tokenizer(spec.tokenizer), spec.tokenizer.hf_dir)  # type: ignore[arg-type]
    records = read_records(REPO / "assets/tiny/gsm8k/test/test.jsonl", need_target=False)[:3]
    prompts = [encoder.encode_prompt(r) for r in records]
    return load_any_model(spec), prompts


def _stops(hf_dir: Path) -> list[int]:
    eos = json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def test_peft_on_the_exported_base_gives_lmtunes_logits_and_tokens(exported: dict[str, object]) -> None:
    from fairseq2.nn import BatchLayout
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    step: Path = exported["step"]  # type: ignore[assignment]
    config = json.loads((step / "hf_adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(step / "hf_adapter_base") and config["r"] == 4
    model, prompts = _lmtune_model_and_prompts(exported)
    base = AutoModelForCausalLM.from_pretrained(str(step / "hf_adapter_base"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(step / "hf_adapter")).eval()
    width = min(len(p) for p in prompts)
    ids = torch.tensor([p[:width] for p in prompts])
    with torch.no_grad():
        expected = model(ids, BatchLayout.of(ids))
        got = peft_model(input_ids=ids).logits
        plain = peft_model.get_base_model()
        with peft_model.disable_adapter():
            without = plain(input_ids=ids).logits
    diff = (got - expected).abs().max().item()
    print(f"{exported['kind']}: PEFT vs lmtune max abs logit difference {diff:.2e}; the adapter moves logits by up to {(without - expected).abs().max().item():.2e}")
    assert diff < LOGIT_TOLERANCE
    assert (without - expected).abs().max().item() > 100 * LOGIT_TOLERANCE  # the adapter matters: B != 0
    stops = _stops(step / "hf_adapter_base")
    for prompt, row in zip(prompts, exported["rows"]):  # type: ignore[call-overload]
        assert hf_greedy(peft_model, prompt, stops, MAX_GEN_LEN) == row["token_ids"]


def test_merged_export_generates_what_lmtune_generates_from_the_checkpoint(exported: dict[str, object]) -> None:
    from transformers import AutoModelForCausalLM

    step: Path = exported["step"]  # type: ignore[assignment]
    _, prompts = _lmtune_model_and_prompts(exported)
    merged = AutoModelForCausalLM.from_pretrained(str(step / "hf"), dtype=torch.float32).eval()
    stops = _stops(step / "hf")
    rows = exported["rows"]
    assert all(len(row["token_ids"]) > 0 for row in rows)  # type: ignore[attr-defined]
    for prompt, row in zip(prompts, rows):  # type: ignore[call-overload]
        assert hf_greedy(merged, prompt, stops, MAX_GEN_LEN) == row["token_ids"]


def test_qlora_keeps_a_4bit_base_and_trains(exported: dict[str, object]) -> None:
    if exported["kind"] != "qlora":
        pytest.skip("QLoRA only")
    from torchao.dtypes.nf4tensor import NF4Tensor

    from lmtune.adapters.lora import lora_modules

    steps = losses(exported["out"])  # type: ignore[arg-type]
    assert steps[6] < steps[1], steps
    model, _ = _lmtune_model_and_prompts(exported)
    modules = dict(lora_modules(model))
    assert len(modules) == 14 and all(m.quantized and isinstance(m.nf4_weight, NF4Tensor) and m.weight is None for m in modules.values())
    # 4 bits per weight plus block scales, against 32.
    q = modules["decoder.layers.0.self_attn.q_proj"].nf4_weight
    assert q.quantized_data.numel() * q.quantized_data.element_size() * 8 == q.numel() * 4


def test_export_of_a_checkpoint_whose_base_is_gone_is_refused(exported: dict[str, object], tmp_path: Path) -> None:
    if exported["kind"] != "lora":
        pytest.skip("one kind is enough")
    out = tmp_path / "moved"
    shutil.copytree(exported["out"], out, ignore=shutil.ignore_patterns("hf*"))  # type: ignore[arg-type]
    card_file = out / "checkpoints/lora.yaml"
    card = yaml.safe_load(card_file.read_text())
    card["base"]["checkpoint"] = str(tmp_path / "gone")
    card_file.write_text(yaml.safe_dump(card))
    env = {"LMTUNE_USER_ASSET_DIR": str(exported["cards"])}
    for flags in ([], ["--adapter"]):
        line = assert_user_error(run_lmtune_in_process("write_hf_config", str(out), *flags, env=env), "lora_base", str(tmp_path / "gone"))
        assert "not there" in line
    assert not list((out / "checkpoints/step_6").glob("*hf*"))
    r = run_lmtune_in_process("generate", str(tmp_path / "gen"), "--config", f"checkpoint_dir={out}/checkpoints", "dataset=tiny_gsm8k", env=env)
    assert_user_error(r, "lora_base", "not there")


# ------------------------------------------------------- Qwen2.5 and Qwen3 layouts

QWEN = {"model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 96, "max_seq_len": 64, "vocab_size": 416}


@pytest.mark.parametrize("base_card,arch,overrides", [
    ("qwen25_1.5b", "qwen25_1_5b", {**QWEN, "tied_embeddings": True}),  # q/k/v biases
    ("qwen3_0.6b", "qwen3_0.6b", {**QWEN, "tied_embeddings": False, "head_dim": 32}),  # q/k norms, heads x head_dim != model_dim
], ids=["qwen25", "qwen3"])
def test_qwen_adapters_export_to_peft_and_merged(base_card: str, arch: str, overrides: dict[str, object], tmp_path: Path) -> None:
    """Adapters with random A and B on a Qwen base, written as a run would, exported both ways."""
    from fairseq2.nn import BatchLayout
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtune.adapters.build import load_any_model
    from lmtune.adapters.lora import apply_lora, lora_modules, target_names
    from lmtune.catalog.specs import LoraSpec, ModelSpec, TokenizerSpec
    from lmtune.export.hf_dir import export_hf
    from lmtune.export.peft_adapter import export_peft_adapter
    from lmtune.options.lora import LoraSettings
    from tiny_builders import (
        QWEN2_SPLIT,
        bpe_ranks,
        build_tiny_model,
        write_hf_dir,
        write_hf_qwen_tokenizer,
    )

    tiny = build_tiny_model("qwen", base_card, overrides, seed=5)
    base = ModelSpec(name=base_card, family="qwen", arch=arch, config=overrides, checkpoint=write_hf_dir(tiny, tmp_path / "base"), source="test")
    tokenizer = TokenizerSpec(name="qwen_hf", family="qwen", path=write_hf_qwen_tokenizer(tmp_path / "tok", bpe_ranks(QWEN2_SPLIT)), config={"use_im_end": True})
    settings = LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=target_names("all_linear", base_card))
    model = apply_lora(load_any_model(base), settings, seed=1)
    generator = torch.Generator().manual_seed(2)
    for _, m in lora_modules(model):
        m.lora_b.data.copy_(0.05 * torch.randn(m.lora_b.shape, generator=generator))
    shard = tmp_path / "run/step_1/model/pp_00/tp_00"
    shard.mkdir(parents=True)
    torch.save(model.state_dict(), shard / "sdp_00.pt")  # the adapters alone, as in a checkpoint
    spec = ModelSpec(name="checkpoint", family="qwen", arch=arch, config=overrides, checkpoint=tmp_path / "run/step_1/model", source="test",
                     tokenizer=tokenizer, lora=LoraSpec(settings=settings, base=base, seed=1))

    ids = torch.randint(0, 416, (2, 24), generator=generator)
    with torch.no_grad():
        expected = load_any_model(spec)(ids, BatchLayout.of(ids))
        export_peft_adapter(spec, tokenizer, tmp_path / "adapter", log=lambda m: None)
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tmp_path / "adapter_base"), dtype=torch.float32), str(tmp_path / "adapter"))
        got = peft_model(input_ids=ids).logits
        export_hf(spec, tokenizer, tmp_path / "merged", log=lambda m: None)
        merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)(input_ids=ids).logits
        base_only = load_any_model(base)(ids, BatchLayout.of(ids))
    # Float32 rounding grows with the logits' size (23.7 here for Qwen2.5: 1.3e-5 apart, ~7 ulps on this AMD CPU):
    # the bound is 1e-6 of the largest logit, at least LOGIT_TOLERANCE.
    assert (got - expected).abs().max().item() < max(LOGIT_TOLERANCE, 1e-6 * expected.abs().max().item())
    assert (merged - expected).abs().max().item() < 1e-4  # merging rounds W + BA once more
    assert (base_only - expected).abs().max().item() > 100 * LOGIT_TOLERANCE
