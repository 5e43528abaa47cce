"""OLMo 2, OLMo 3 and Mistral (and Qwen2), native: lmtune's fairseq2 model against transformers' on the same weights.

Each family is a tiny random model that transformers builds from its own config and saves
(``transformers_dirs``), named by a card that gives nothing but the directory. Proven against
transformers, float32: the logits (within 1e-5), greedy tokens (identical to ``generate``), the
training loss of a packed batch through lmtune's train step loss with per-example attention (equal
to the sum of transformers' per-example losses), and the HF export (transformers' logits on it
within 1e-5 of lmtune's model). A real ``instruction_finetune`` run with packing trains each family
and exports its checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml

from helpers import run_lmtune_in_process
from lmtune.adapters.build import load_any_model
from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import ModelSpec, resolve_model
from transformers_dirs import OLMO3_SIZES, write_transformers_dir

TOLERANCE = 1e-5
# model_type -> (lmtune family, HF architecture of the export)
FAMILIES = {
    "olmo2": ("olmo", "Olmo2ForCausalLM"),
    # Sliding-window layers (window 8 < the 40-token inputs) and YaRN: fairseq2's olmo family, with
    # plain RoPE on the sliding layers as transformers has it (lmtune.models.olmo3_rope).
    "olmo3": ("olmo", "Olmo3ForCausalLM"),
    "mistral": ("llama", "MistralForCausalLM"),  # built as fairseq2's llama family, exported as Mistral
    "qwen2": ("qwen", "Qwen2ForCausalLM"),  # the same proofs for a family lmtune had, from a bare directory
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def hf_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(model_type, the HF directory transformers wrote)."""
    return request.param, write_transformers_dir(request.param, tmp_path_factory.mktemp(request.param) / "hf", seed=5)


@pytest.fixture()
def family_dir(hf_dir: tuple[str, Path], isolated_user_cards: Path) -> tuple[str, Path, Path]:
    """(model_type, HF directory, user card directory), with card 'my_model' naming only the directory."""
    model_type, directory = hf_dir
    (isolated_user_cards / "my_model.yaml").write_text(yaml.safe_dump({"name": "my_model", "checkpoint": str(directory)}))
    return model_type, directory, isolated_user_cards


def _spec() -> ModelSpec:
    return resolve_model(CardStore(), "my_model", None)


def _transformers(directory: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # transformers would random-init a weight it cannot find
    return model.eval()


def _lmtune_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from fairseq2.nn import BatchLayout

    with torch.no_grad():
        return model(ids, BatchLayout.of(ids))


def _ids(vocab: int = 400) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(11))


def test_logits_equal_transformers(family_dir) -> None:  # type: ignore[no-untyped-def]
    model_type, directory, _ = family_dir
    spec = _spec()
    assert spec.family == FAMILIES[model_type][0]
    ids = _ids()
    with torch.no_grad():
        reference = _transformers(directory)(ids).logits
    diff = (_lmtune_logits(load_any_model(spec), ids) - reference).abs().max().item()
    assert diff < TOLERANCE, diff


def test_greedy_tokens_equal_transformers_generate(family_dir) -> None:  # type: ignore[no-untyped-def]
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    _, directory, _ = family_dir
    spec = _spec()
    assert spec.tokenizer is not None
    model, tokenizer = load_any_model(spec), load_tokenizer(spec.tokenizer)
    reference = _transformers(directory)
    rng = random.Random(2)
    prompts = [[rng.randint(0, 399) for _ in range(n)] for n in (5, 17, 9)]
    stop = [int(tokenizer.vocab_info.eos_idx)]  # type: ignore[arg-type]
    completions = Generator(model, tokenizer, GeneratorOptions(max_gen_len=24), stop_ids=stop)(prompts)
    for prompt, c in zip(prompts, completions):
        ids = torch.tensor([prompt])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, eos_token_id=stop, pad_token_id=stop[0])
        expected = out[0, len(prompt) :].tolist()
        if stop[0] in expected:
            expected = expected[: expected.index(stop[0]) + 1]
        assert c.token_ids == expected
    assert len({tuple(c.token_ids) for c in completions}) > 1


def test_packed_training_loss_equals_transformers(family_dir) -> None:  # type: ignore[no-untyped-def]
    """The train step's loss (lmtune.training.nll_unit.target_nll) on a packed batch, with the
    per-example attention instruction_finetune uses, against transformers' per-example losses."""
    from fairseq2.models.transformer import (
        get_default_sdpa_factory,
        set_default_sdpa_factory,
    )

    from lmtune.data.packing import collate_packed
    from lmtune.models.document_attention import DocumentSDPA
    from lmtune.training.nll_unit import target_nll

    _, directory, _ = family_dir
    before = get_default_sdpa_factory()
    set_default_sdpa_factory(DocumentSDPA)
    try:
        model = load_any_model(_spec())
    finally:
        set_default_sdpa_factory(before)
    assert any(type(m).__name__ == "DocumentSDPA" for m in model.modules())
    model.train()
    rng = random.Random(4)
    items = []
    for n in (13, 6, 29, 10):
        prompt = rng.randint(1, n - 2)
        items.append({"tokens": torch.tensor([rng.randint(0, 399) for _ in range(n)]), "target_mask": torch.tensor([False] * prompt + [True] * (n - prompt))})
    loss, targets = target_nll(model, collate_packed(items))

    reference = _transformers(directory)
    expected = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for x in items:
            logits = reference(x["tokens"].unsqueeze(0)).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits, x["tokens"][1:], reduction="none")
            expected += nll[x["target_mask"][1:]].double().sum()
    assert targets.num_target_elements == sum(int(x["target_mask"][1:].sum()) for x in items)
    assert abs(loss.item() - expected.item()) < 1e-4 * max(1.0, expected.item() / 100), (loss.item(), expected.item())


def test_export_gives_transformers_the_same_logits(family_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from lmtune.export.hf_dir import export_hf, resolve_export

    model_type, _, _ = family_dir
    spec, tok, _ = resolve_export("my_model")
    out = export_hf(spec, tok, tmp_path / "export", log=lambda m: None)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [FAMILIES[model_type][1]]
    if model_type == "mistral":
        assert config["sliding_window"] == json.loads((family_dir[1] / "config.json").read_text())["sliding_window"] == 4096
    if model_type == "olmo3":
        source = json.loads((family_dir[1] / "config.json").read_text())
        assert (config["sliding_window"], config["layer_types"]) == (source["sliding_window"], source["layer_types"]) == (8, OLMO3_SIZES["layer_types"])
        assert config["rope_scaling"]["rope_type"] == "yarn" and config["rope_scaling"]["factor"] == 8.0
    ids = _ids()
    with torch.no_grad():
        exported = _transformers(out)(ids).logits
    diff = (_lmtune_logits(load_any_model(spec), ids) - exported).abs().max().item()
    assert diff < TOLERANCE, diff


@pytest.mark.slow
def test_instruction_finetune_with_packing_trains_and_exports(family_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model_type, _, cards = family_dir
    out = tmp_path / "out"
    r = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=my_model", "packing=true",
        "max_seq_len=128", "max_num_steps=2", "checkpoint_every_n_steps=2", "publish_metrics_every_n_steps=1",
        "tensorboard=false", "lr_scheduler.num_warmup_steps=0", "export_hf=last", env={"LMTUNE_USER_ASSET_DIR": str(cards)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    config = json.loads(next(out.rglob("hf/config.json")).read_text())
    assert config["architectures"] == [FAMILIES[model_type][1]]


def test_longer_sequences_than_a_sliding_window_are_refused(tmp_path: Path, isolated_user_cards: Path) -> None:
    from helpers import assert_user_error, run_lmtune_in_process

    directory = write_transformers_dir("mistral", tmp_path / "hf", sliding_window=64)
    (isolated_user_cards / "windowed.yaml").write_text(yaml.safe_dump({"name": "windowed", "checkpoint": str(directory)}))
    out = tmp_path / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=windowed", "max_seq_len=128")
    assert_user_error(r, "max_seq_len=128", "sliding attention window of model 'windowed' (64 tokens)", "max_seq_len=64 or less")
    assert not out.exists()


def _lora_round_trip(model_type: str, cards: Path, out: Path, *extra: str, tolerance: float = TOLERANCE) -> None:
    """A LoRA run on card 'my_model', its adapter exported beside its base: PEFT on that base must give
    the logits of lmtune's own LoRA model (for QLoRA: its dequantized NF4 base plus the adapters)."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtune.catalog.specs import model_from_checkpoint_dir

    env = {"LMTUNE_USER_ASSET_DIR": str(cards)}
    r = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "model=my_model", "lora.rank=4", "lora.alpha=8",
        "max_seq_len=128", "max_num_steps=3", "checkpoint_every_n_steps=3", "tensorboard=false", "learning_rate=1e-2",
        "lr_scheduler.num_warmup_steps=0", *extra, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_lmtune_in_process("write_hf_config", str(out), "--adapter", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    step = out / "checkpoints/step_3"
    assert json.loads((step / "hf_adapter_base/config.json").read_text())["architectures"] == [FAMILIES[model_type][1]]
    model = load_any_model(model_from_checkpoint_dir(out / "checkpoints", None, "test"))
    base = AutoModelForCausalLM.from_pretrained(str(step / "hf_adapter_base"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(step / "hf_adapter")).eval()
    ids = _ids()
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            without = peft_model.get_base_model()(input_ids=ids).logits
    expected = _lmtune_logits(model, ids)
    assert (got - expected).abs().max().item() < tolerance
    assert (without - expected).abs().max().item() > 100 * tolerance  # the adapter matters: B != 0


@pytest.mark.slow
def test_lora_run_exports_an_adapter_peft_loads_with_lmtunes_logits(family_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model_type, _, cards = family_dir
    # 2e-5: PEFT adds each adapter's product to the base layer's output in its own order; on Mistral's trained
    # adapters (logits up to ~7) the two differ by up to 1.0-1.2e-5, about 20 float32 steps at that size.
    _lora_round_trip(model_type, cards, tmp_path / "out", tolerance=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_qlora_run_exports_an_adapter_peft_loads_with_lmtunes_logits(model_type: str, tmp_path: Path, isolated_user_cards: Path) -> None:
    # NF4 quantizes in blocks: projections 256 and 512 wide, as a real model's are multiples of the blocks.
    directory = write_transformers_dir(model_type, tmp_path / "hf", seed=6, weight_std=0.1, hidden_size=256, intermediate_size=512)
    (isolated_user_cards / "my_model.yaml").write_text(yaml.safe_dump({"name": "my_model", "checkpoint": str(directory)}))
    # 5e-5: the run's NF4 linear (torchao, dequantizing as it multiplies) against transformers' float32 linear
    # on the dequantized weights sums in another order; measured up to 1.4e-5 on logits of a few units.
    _lora_round_trip(model_type, isolated_user_cards, tmp_path / "out", "lora.quantize=nf4", tolerance=5e-5)
