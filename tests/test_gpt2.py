"""GPT-2 (lmtune's fairseq2 family ``gpt2``) against transformers' GPT2LMHeadModel on the same weights:
logits, greedy tokens, the first training step's loss, the export, packing, pretraining.

Every model is a tiny random one transformers builds from a GPT2Config here, with a byte-level
BPE tokenizer trained here (tests/tiny_builders.py); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import losses, run_lmtune_in_process
from tiny_builders import CORPUS, tiny_hf_gpt2, write_hf_gpt2_tokenizer

VOCAB = 300


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT2LMHeadModel directory as ``save_pretrained`` writes it, with its tokenizer files."""
    out = tmp_path_factory.mktemp("gpt2_hf")
    write_hf_gpt2_tokenizer(out, vocab_size=VOCAB)
    tiny_hf_gpt2(out, vocab_size=VOCAB)
    return out


def _card(user_cards: Path, hf_dir: Path, name: str = "tiny_gpt2_hf") -> str:
    """A user card naming the directory, its shape given the way a user would (gpt2_small's, overridden)."""
    config = {"model_dim": 64, "num_layers": 2, "num_attn_heads": 2, "ffn_inner_dim": 256, "vocab_size": VOCAB, "max_seq_len": 64, "dropout_p": 0.0}
    card = {"name": name, "base": "gpt2_small", "model_config": config, "checkpoint": str(hf_dir), "tokenizer": str(hf_dir)}
    (user_cards / f"{name}.yaml").write_text(json.dumps(card))
    return name


def _transformers(hf_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def _lmtune(name: str):  # type: ignore[no-untyped-def]
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model

    spec = resolve_model(CardStore(), name, None)
    return spec, load_any_model(spec)


def _ids(n: int = 40, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_logits_equal_transformers_on_the_same_weights(isolated_user_cards: Path, hf_dir: Path) -> None:
    from fairseq2.nn import BatchLayout

    _, model = _lmtune(_card(isolated_user_cards, hf_dir))
    ids = _ids()
    with torch.no_grad():
        ours = model(ids, BatchLayout.of(ids))
        theirs = _transformers(hf_dir)(ids).logits
    assert ours.abs().max() > 1.0  # the weights are not a near-zero initialisation
    assert float((ours - theirs).abs().max()) < 1e-5


def test_a_card_naming_only_the_directory_is_gpt2_with_transformers_logits(isolated_user_cards: Path, hf_dir: Path) -> None:
    """No model_family, no base: config.json says gpt2 and gives the shape; the tokenizer is the same directory."""
    from fairseq2.nn import BatchLayout

    (isolated_user_cards / "bare_gpt2.yaml").write_text(json.dumps({"name": "bare_gpt2", "checkpoint": str(hf_dir)}))
    spec, model = _lmtune("bare_gpt2")
    assert spec.family == "gpt2" and spec.tokenizer is not None and spec.tokenizer.path == hf_dir
    ids = _ids()
    with torch.no_grad():
        diff = (model(ids, BatchLayout.of(ids)) - _transformers(hf_dir)(ids).logits).abs().max()
    assert float(diff) < 1e-5


def test_the_hub_layout_without_the_transformer_prefix_and_with_mask_buffers_loads(isolated_user_cards: Path, hf_dir: Path, tmp_path: Path) -> None:
    """The Hub's original GPT-2 conversions name tensors h.N... and keep each layer's causal-mask buffer."""
    import shutil

    from fairseq2.nn import BatchLayout
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old_layout"
    shutil.copytree(hf_dir, old)
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(old / "model.safetensors")).items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    _, model = _lmtune(_card(isolated_user_cards, old, "old_layout"))
    ids = _ids()
    with torch.no_grad():
        diff = (model(ids, BatchLayout.of(ids)) - _transformers(hf_dir)(ids).logits).abs().max()
    assert float(diff) < 1e-5


def test_greedy_tokens_equal_transformers_generate(isolated_user_cards: Path, hf_dir: Path) -> None:
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    spec, model = _lmtune(_card(isolated_user_cards, hf_dir))
    assert spec.tokenizer is not None
    tokenizer = load_tokenizer(spec.tokenizer)
    encode = tokenizer.create_encoder(mode="prompt")
    prompts = [encode(text).tolist() for text in ("The quick brown fox", "Natalia sold clips to", "How many")]
    generator = Generator(model, tokenizer, GeneratorOptions(max_gen_len=20))
    ours = [c.token_ids for c in generator(prompts)]
    reference = _transformers(hf_dir)
    eos = VOCAB - 1
    assert generator.stop_ids == [eos]
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([prompt])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=eos)
        want = out[0, len(prompt) :].tolist()
        assert got == want
    assert len({tuple(t) for t in ours}) == 3 and all(len(set(t)) > 3 for t in ours)  # the outputs vary


def test_tokenizer_ends_a_response_with_endoftext_and_adds_nothing_before(isolated_user_cards: Path, hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import load_tokenizer

    name = _card(isolated_user_cards, hf_dir)
    spec = resolve_model(CardStore(), name, None)
    assert spec.tokenizer is not None
    tokenizer = load_tokenizer(spec.tokenizer)
    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    text = "The dog sleeps; the fox runs away."
    plain = hf(text)["input_ids"]
    assert tokenizer.create_encoder(mode="prompt")(text).tolist() == plain
    assert tokenizer.create_encoder(mode="prompt_response")(text).tolist() == [*plain, VOCAB - 1]
    assert tokenizer.vocab_info.eos_idx == VOCAB - 1


@pytest.mark.parametrize("packed", [True, False])
def test_packed_and_unpacked_batches_give_each_examples_own_loss(isolated_user_cards: Path, hf_dir: Path, packed: bool) -> None:
    """Learned positions restart at 0 for each example of a pack: the packed loss and logits equal
    transformers' on each example alone (and so do the padded batch's)."""
    from fairseq2.datasets import SequenceBatch
    from fairseq2.models.transformer import TorchSDPA
    from fairseq2.models.transformer.sdpa.default import (
        get_default_sdpa_factory,
        set_default_sdpa_factory,
    )

    from lmtune.data.batching import collate_padded
    from lmtune.data.packing import collate_packed
    from lmtune.models.document_attention import DocumentSDPA
    from lmtune.training.nll_unit import target_nll

    name = _card(isolated_user_cards, hf_dir)
    before = get_default_sdpa_factory()
    set_default_sdpa_factory(DocumentSDPA if packed else TorchSDPA)
    try:
        _, model = _lmtune(name)
    finally:
        set_default_sdpa_factory(before)
    gen = torch.Generator().manual_seed(1)
    items = []
    for n, prompt in ((17, 5), (40, 11), (9, 3), (28, 20)):
        tokens = torch.randint(0, VOCAB, (n,), generator=gen)
        items.append({"tokens": tokens, "target_mask": torch.arange(n) >= prompt})
    batch = collate_packed(items) if packed else collate_padded(items, pad_idx=0)
    loss, targets = target_nll(model.train(), batch)

    reference = _transformers(hf_dir)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for x in items:
        ids, mask = x["tokens"].unsqueeze(0), x["target_mask"]
        with torch.no_grad():
            logits = reference(ids).logits[0, :-1]
        picked = mask[1:]
        nll = torch.nn.functional.cross_entropy(logits[picked], ids[0, 1:][picked], reduction="sum")
        total, count = total + nll.double(), count + int(picked.sum())
    assert targets.num_target_elements == count
    assert abs(float(loss.detach()) - float(total)) < 1e-4 * count
    if packed:  # and each example's logits in the pack are its own
        model.eval()
        with torch.no_grad():
            seqs, layout = SequenceBatch(batch.seqs, batch.seq_lens, packed=True).as_input()
            flat = model(seqs, layout)
            start = 0
            for x in items:
                n = len(x["tokens"])
                assert float((flat[start : start + n] - reference(x["tokens"].unsqueeze(0)).logits[0]).abs().max()) < 1e-5
                start += n


def _export_logits_diff(export: Path, reference_dir: Path) -> float:
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    ids = _ids(seed=3)
    with torch.no_grad():
        return float((exported(ids).logits - _transformers(reference_dir)(ids).logits).abs().max())


def test_export_is_a_gpt2lmheadmodel_directory_transformers_loads(isolated_user_cards: Path, hf_dir: Path, tmp_path: Path) -> None:
    """write_hf_config on a card: GPT2LMHeadModel with the same logits, the tokenizer encoding as lmtune's."""
    from transformers import AutoTokenizer

    from lmtune.export.hf_dir import export_hf, resolve_export

    spec, tok, _ = resolve_export(_card(isolated_user_cards, hf_dir))
    out = export_hf(spec, tok, tmp_path / "export", verify=True, log=lambda m: None)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_positions"], config["vocab_size"]) == (64, 2, 2, 64, VOCAB)
    assert config["eos_token_id"] == VOCAB - 1
    assert _export_logits_diff(out, hf_dir) < 1e-5
    text = "Weng earns $12 an hour for babysitting."
    assert AutoTokenizer.from_pretrained(str(out))(text)["input_ids"] == AutoTokenizer.from_pretrained(str(hf_dir))(text)["input_ids"]


def test_export_of_a_gpt2_card_names_what_is_wrong_when_the_tensors_are_not_gpt2s(isolated_user_cards: Path, hf_dir: Path, tmp_path: Path) -> None:
    from lmtune.errors import UserError
    from lmtune.models.gpt2_hf import hf_tensors

    named = [("decoder.layers.0.self_attn.q_proj.weight", torch.zeros(4, 4)), ("decoder.layers.0.self_attn.k_proj.weight", torch.zeros(4, 4))]
    with pytest.raises(UserError, match="lacks part of a fused q/k/v"):
        list(hf_tensors(named))
    with pytest.raises(UserError, match="no counterpart in GPT-2"):
        list(hf_tensors([("decoder.layers.0.ffn.gate_proj.weight", torch.zeros(4, 4))]))


# ---------------------------------------------------------------- training runs

RECORDS = [
    {"src": "Natalia sold clips to 48 of her friends in April.", "tgt": " She sold 48 + 24 = 72 clips."},
    {"src": "What is 7 times 8?", "tgt": " Answer: 56. #### 56"},
    {"src": "The quick brown fox", "tgt": " jumps over the lazy dog."},
    {"src": "User: Hello there!", "tgt": " Assistant: Hi, how can I help you today?"},
]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, hf_dir: Path) -> tuple[Path, dict[str, str]]:
    """A real ``lmtune instruction_finetune`` run of the tiny GPT-2, packed, all four records in step 1's batch."""
    root = tmp_path_factory.mktemp("gpt2_run")
    cards = root / "cards"
    cards.mkdir()
    _card(cards, hf_dir)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    env = {"LMTUNE_USER_ASSET_DIR": str(cards), "XDG_CONFIG_HOME": str(root / "config_home"), "LMTUNE_CACHE_DIR": str(root / "cache")}
    out = root / "out"
    r = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config", "model=tiny_gpt2_hf", f"dataset={data}", "max_seq_len=64", "max_num_tokens=256",
        "max_num_steps=4", "checkpoint_every_n_steps=4", "publish_metrics_every_n_steps=1", "learning_rate=1e-3", "dtype=float32",
        "tensorboard=false", "packing=true", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out, env


@pytest.mark.slow
def test_first_step_loss_equals_transformers_loss_on_the_same_batch(finetuned: tuple[Path, dict[str, str]], hf_dir: Path) -> None:
    """Step 1's NLL is transformers' mean NLL over the responses (each ending in <|endoftext|>), examples alone."""
    from transformers import AutoTokenizer

    out, _ = finetuned
    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    reference = _transformers(hf_dir)
    total, count = 0.0, 0
    for r in RECORDS:
        prompt, response = hf(r["src"])["input_ids"], hf(r["tgt"])["input_ids"] + [hf.eos_token_id]
        ids = torch.tensor([prompt + response])
        labels = torch.tensor([[-100] * len(prompt) + response])
        with torch.no_grad():
            mean = reference(ids, labels=labels).loss  # transformers' own loss: mean over the response tokens
        total += float(mean) * len(response)
        count += len(response)
    assert abs(losses(out)[1] - total / count) < 1e-5
    assert losses(out)[4] < losses(out)[1]


@pytest.mark.slow
def test_finetuned_checkpoint_exports_generates_and_verifies(finetuned: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    out, env = finetuned
    r = run_lmtune_in_process("write_hf_config", str(out), "--verify", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "max abs logit difference" in r.stderr
    assert json.loads((out / "checkpoints/step_4/hf/config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"src": rec["src"], "tgt": rec["tgt"]}) + "\n" for rec in RECORDS))
    gen = tmp_path / "gen"
    r = run_lmtune_in_process("generate", str(gen), "--config", f"checkpoint_dir={out / 'checkpoints'}", "model=last_checkpoint", f"dataset={prompts}", "generator_config.max_gen_len=12", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (gen / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["completion"] for row in rows)


@pytest.mark.slow
def test_pretrains_from_scratch_on_streamed_text(tmp_path: Path, hf_dir: Path) -> None:
    """``lmtune pretrain`` of tiny_gpt2 (random GPT-2 weights) with the GPT-2 tokenizer: the loss falls."""
    cards = tmp_path / "cards"
    cards.mkdir()
    _card(cards, hf_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((CORPUS + "\n") * 20)
    env = {"LMTUNE_USER_ASSET_DIR": str(cards), "XDG_CONFIG_HOME": str(tmp_path / "config_home"), "LMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "pretrain"
    r = run_lmtune_in_process(
        "pretrain", str(out), "--config", "model=tiny_gpt2", "init=random", "tokenizer=tiny_gpt2_hf", f"dataset={corpus}", "max_seq_len=32",
        "batch_size=4", "max_num_steps=30", "checkpoint_every_n_steps=30", "publish_metrics_every_n_steps=1", "learning_rate=3e-3",
        "lr_scheduler.num_warmup_steps=3", "dtype=float32", "tensorboard=false", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    curve = losses(out)
    # From about ln(512) (random weights, 512 outputs) to well below ln(300), a uniform guess over the tokenizer's tokens.
    assert curve[1] > 6.0 and curve[30] < 4.6


VLLM_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
hf_dir, texts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = LLM(model=hf_dir, dtype="float32", enforce_eager=True, distributed_executor_backend="uni", max_model_len=64, seed=0)
outputs = llm.generate(texts, SamplingParams(temperature=0, max_tokens=max_tokens))
print("RESULT " + json.dumps([{"prompt_token_ids": list(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids)} for o in outputs]))
"""


@pytest.mark.slow
def test_vllm_serves_the_export_with_lmtunes_greedy_tokens(isolated_user_cards: Path, hf_dir: Path, tmp_path: Path) -> None:
    """vLLM (its own environment) on lmtune's GPT2LMHeadModel export: the prompt ids and greedy ids of lmtune's own model."""
    import subprocess

    from test_vllm import VLLM_PYTHON, vllm_env

    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: build it with .ci/setup_vllm.sh")
    from lmtune.export.hf_dir import export_hf, resolve_export
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    name = _card(isolated_user_cards, hf_dir)
    spec, tok, _ = resolve_export(name)
    out = export_hf(spec, tok, tmp_path / "export", log=lambda m: None)
    _, model = _lmtune(name)
    tokenizer = load_tokenizer(tok)
    texts = ["The quick brown fox", "Natalia sold clips to", "How many"]
    prompts = [tokenizer.create_encoder(mode="prompt")(t).tolist() for t in texts]
    ours = [c.token_ids for c in Generator(model, tokenizer, GeneratorOptions(max_gen_len=20))(prompts)]
    r = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_SCRIPT, str(out), json.dumps(texts), "20"], env=vllm_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    assert [x["prompt_token_ids"] for x in results] == prompts
    assert [x["token_ids"] for x in results] == ours


def test_model_config_read_from_a_gpt2_config_json(hf_dir: Path) -> None:
    """What an HF directory's config.json says, as a gpt2 card's model_config; what lmtune does not build is refused."""
    from lmtune.catalog.hf_model_dir import GPT2_ACTIVATIONS
    from lmtune.catalog.hf_model_dir import _gpt2 as model_config_from_hf
    from lmtune.errors import UserError
    from lmtune.models.gpt2 import GELU_APPROXIMATIONS

    assert set(GPT2_ACTIVATIONS) == set(GELU_APPROXIMATIONS)  # the card reader and the model accept the same names

    hf = json.loads((hf_dir / "config.json").read_text())
    got = model_config_from_hf(hf, "config.json")
    assert got == {
        "model_dim": 64, "num_layers": 2, "num_attn_heads": 2, "ffn_inner_dim": 256, "vocab_size": VOCAB, "max_seq_len": 64, "dropout_p": 0.0,
        "activation": "gelu_new", "layer_norm_eps": 1e-5, "init_std": 0.02,
    }  # fmt: skip
    with pytest.raises(UserError, match="scale_attn_by_inverse_layer_idx is True"):
        model_config_from_hf({**hf, "scale_attn_by_inverse_layer_idx": True}, "config.json")
    with pytest.raises(UserError, match="activation_function 'relu'"):
        model_config_from_hf({**hf, "activation_function": "relu"}, "config.json")


def test_a_model_config_gpt2_cannot_build_is_one_sentence(isolated_user_cards: Path, hf_dir: Path) -> None:
    from helpers import assert_user_error, run_lmtune_in_process

    tokenizer = _card(isolated_user_cards, hf_dir)
    (isolated_user_cards / "bad.yaml").write_text(json.dumps({"name": "bad_gpt2", "base": "tiny_gpt2", "model_config": {"activation": "relu", "num_attn_heads": 3}}))
    data = isolated_user_cards / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = isolated_user_cards / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config", "model=bad_gpt2", f"tokenizer={tokenizer}", f"dataset={data}")
    assert_user_error(r, "bad_gpt2", "activation", "gelu_new", "num_attn_heads")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_lora_run_exports_a_peft_adapter_that_gives_lmtunes_logits(tmp_path: Path, hf_dir: Path, quantize: str) -> None:
    """LoRA (and QLoRA) on every GPT-2 projection; the PEFT adapter (q/k/v fused into c_attn at rank 3r) on the
    exported base (QLoRA's dequantized NF4 base), loaded with PEFT, gives the logits of lmtune's LoRA model."""
    from fairseq2.nn import BatchLayout
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.specs import model_from_checkpoint_dir

    cards = tmp_path / "cards"
    cards.mkdir()
    name = _card(cards, hf_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    env = {"LMTUNE_USER_ASSET_DIR": str(cards), "XDG_CONFIG_HOME": str(tmp_path / "config_home"), "LMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    r = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config", f"model={name}", f"dataset={data}", "max_seq_len=64", "max_num_tokens=256",
        "max_num_steps=4", "checkpoint_every_n_steps=4", "learning_rate=1e-2", "dtype=float32", "tensorboard=false",
        "lora.rank=4", "lora.alpha=8", f"lora.quantize={quantize}", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_lmtune_in_process("write_hf_config", str(out), "--adapter", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    step = out / "checkpoints/step_4"
    config = json.loads((step / "hf_adapter/adapter_config.json").read_text())
    assert config["target_modules"] == ["attn.c_proj", "c_attn", "mlp.c_fc", "mlp.c_proj"] and config["rank_pattern"] == {"c_attn": 12}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTUNE_USER_ASSET_DIR", str(cards))
        model = load_any_model(model_from_checkpoint_dir(out / "checkpoints", None, "test"))
    base = AutoModelForCausalLM.from_pretrained(str(step / "hf_adapter_base"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(step / "hf_adapter")).eval()
    ids = _ids(seed=5)
    with torch.no_grad():
        expected = model(ids, BatchLayout.of(ids))
        got = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            without = peft_model.get_base_model()(input_ids=ids).logits
    assert float((got - expected).abs().max()) < 1e-5
    assert float((without - expected).abs().max()) > 1e-2  # the adapters matter: B != 0
