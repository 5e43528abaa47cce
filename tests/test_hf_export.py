"""`lmtune write_hf_config`: the export reproduces lmtune's model and tokenizer in transformers.

Every family and variant is a tiny model with seeded random weights (norms and biases
included), written as the checkpoint lmtune reads (a run's OUT/checkpoints, a Meta
reference file, a Hugging Face directory) with a tokenizer of the matching kind.
The reference is lmtune itself: transformers' float32 logits on the export must be
within 1e-4 of lmtune's model with identical argmax, and the exported tokenizer must
encode (and chat-render) test strings exactly as lmtune's tokenizer does. The
configs use a non-default FFN width and vocabularies other than Llama 3's, where
fairseq2's own exporter writes a wrong intermediate_size and BOS/EOS ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import assert_user_error, run_lmtune_in_process
from lmtune.adapters.build import load_any_model
from lmtune.catalog.specs import TokenizerSpec
from lmtune.errors import UserError
from lmtune.export.hf_dir import export_hf, resolve_export
from lmtune.models.loading import load_tokenizer, resolver
from tiny_builders import (
    QWEN2_SPLIT,
    TinyModel,
    bpe_ranks,
    build_tiny_model,
    train_sentencepiece_model,
    write_hf_dir,
    write_hf_gpt2_tokenizer,
    write_hf_llama3_tokenizer,
    write_hf_qwen_tokenizer,
    write_meta_reference,
    write_tiktoken_model,
)

TOLERANCE = 1e-4
TEXTS = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
    "  two leading spaces, a tab\there,\nand a newline; then 1234567 digits",
    "café naïve — 東京 🙂 don't we'll",
]
CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 7 times 8?"}, {"role": "assistant", "content": "56 #### 56"}, {"role": "user", "content": "And 9 times 9?"}]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TokenizerSpec]:
    root = tmp_path_factory.mktemp("tokenizers")
    llama3_ranks, qwen_ranks = bpe_ranks(), bpe_ranks(QWEN2_SPLIT)
    return {
        "llama3_hf": TokenizerSpec(name="llama3_hf", family="llama", path=write_hf_llama3_tokenizer(root / "llama3_hf", llama3_ranks, instruct=True), config={"impl": "hg", "use_eot": True}),
        "tiktoken": TokenizerSpec(name="tiktoken", family="llama", path=write_tiktoken_model(root / "tt" / "tokenizer.model", llama3_ranks), config={"impl": "tiktoken", "use_eot": True}),
        "sentencepiece": TokenizerSpec(name="sp", family="llama", path=train_sentencepiece_model(root / "sp" / "tokenizer.model"), config={"impl": "sp"}),
        "sentencepiece_default": TokenizerSpec(name="sp_default", family="llama", path=train_sentencepiece_model(root / "sp_default" / "tokenizer.model", default_normalizer=True), config={"impl": "sp"}),
        "qwen_hf": TokenizerSpec(name="qwen_hf", family="qwen", path=write_hf_qwen_tokenizer(root / "qwen_hf", qwen_ranks), config={"use_im_end": True}),
        "gpt2_hf": TokenizerSpec(name="gpt2_hf", family="gpt2", path=write_hf_gpt2_tokenizer(root / "gpt2_hf")),
    }


LLAMA = {"model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "max_seq_len": 64, "pad_idx": None, "ffn_inner_dim": 128, "ffn_inner_dim_multiple_of": 16}
QWEN = {"model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 96, "max_seq_len": 64}

# name: (base card, model_config, tokenizer, how the checkpoint is stored)
VARIANTS: dict[str, tuple[str, dict[str, object], str, str]] = {
    # Llama 3.2: tied, GQA, Llama 3 rope scaling (16-token original context, so it matters here), HF tokenizer.
    "llama3_tied_gqa_rope_scaling": ("llama3_2_1b", {**LLAMA, "num_key_value_heads": 2, "tied_embeddings": True, "vocab_size": 704,
                                     "rope_scale": {"factor": 8.0, "frequency_factors": [1.0, 4.0], "original_context_length": 16}}, "llama3_hf", "run"),
    # Llama 3.1 from Meta's reference format with the tiktoken file: untied, multi-query.
    "llama3_1_untied_tiktoken": ("llama3_1_8b", {**LLAMA, "num_key_value_heads": 1, "tied_embeddings": False, "vocab_size": 704,
                                 "ffn_inner_dim_multiplier": 1.3}, "tiktoken", "meta"),
    # Llama 2 from a Hugging Face directory with SentencePiece: full multi-head attention, no rope scaling.
    "llama2_untied_sentencepiece": ("llama2_7b", {**LLAMA, "num_key_value_heads": 4, "vocab_size": 400}, "sentencepiece", "hf"),
    # A user's own SentencePiece model with SentencePiece's defaults: unigram, nmt_nfkc, whitespace collapsing.
    "llama2_sentencepiece_default_normalizer": ("llama2_7b", {**LLAMA, "num_key_value_heads": 4, "vocab_size": 400}, "sentencepiece_default", "run"),
    "qwen25_tied_biases": ("qwen25_1.5b", {**QWEN, "vocab_size": 416, "tied_embeddings": True}, "qwen_hf", "run"),
    "qwen3_untied_qk_norm": ("qwen3_0.6b", {**QWEN, "vocab_size": 416, "tied_embeddings": False, "head_dim": 32}, "qwen_hf", "run"),
    # GPT-2 (lmtune's family): q/k/v fused into Conv1D c_attn, learned positions, LayerNorm biases, a tied head.
    "gpt2_byte_level_bpe": ("gpt2_small", {"model_dim": 64, "num_layers": 2, "num_attn_heads": 4, "ffn_inner_dim": 192, "max_seq_len": 64, "vocab_size": 320}, "gpt2_hf", "run"),
}


def write_run(tiny: TinyModel, tokenizer: TokenizerSpec, out: Path, step: int = 3) -> Path:
    """The layout a training run leaves: OUT/checkpoints/{model.yaml, tokenizer.yaml, step_N/model/...}."""
    from fairseq2.utils.structured import ValueConverter

    checkpoints = out / "checkpoints"
    shard = checkpoints / f"step_{step}" / "model" / "pp_00" / "tp_00"
    shard.mkdir(parents=True)
    torch.save(tiny.state_dict, shard / "sdp_00.pt")
    config = resolver().resolve(ValueConverter).unstructure(tiny.config)
    (checkpoints / "model.yaml").write_text(yaml.safe_dump({"name": "checkpoint", "model_family": tiny.family, "model_config": config}))
    (checkpoints / "tokenizer.yaml").write_text(yaml.safe_dump(tokenizer.as_card()))
    return checkpoints


def write_checkpoint(name: str, tiny: TinyModel, tokenizer: TokenizerSpec, storage: str, root: Path, user_cards: Path) -> str:
    """Stores the model the variant's way; returns the CHECKPOINT argument that exports it."""
    if storage == "run":
        return str(write_run(tiny, tokenizer, root / "run"))
    checkpoint = write_meta_reference(tiny, root / "meta") if storage == "meta" else write_hf_dir(tiny, root / "hf_in")
    card = {**tiny.card(name, checkpoint), "tokenizer": str(tokenizer.path), "tokenizer_family": tokenizer.family, "tokenizer_config": tokenizer.config}
    (user_cards / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return name


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request: pytest.FixtureRequest, tokenizers: dict[str, TokenizerSpec], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    name = request.param
    base, overrides, tok_name, storage = VARIANTS[name]
    family = "qwen" if base.startswith("qwen") else "gpt2" if base.startswith("gpt2") else "llama"
    root = tmp_path_factory.mktemp(name)
    user_cards = root / "cards"
    user_cards.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTUNE_USER_ASSET_DIR", str(user_cards))
        tiny = build_tiny_model(family, base, overrides, seed=len(name))
        checkpoint = write_checkpoint(name, tiny, tokenizers[tok_name], storage, root, user_cards)
        spec, tok, default_output = resolve_export(checkpoint)
        out = export_hf(spec, tok, default_output or root / "export", log=lambda m: None)
        yield name, tiny, spec, tok, out


# ------------------------------------------------------------- the numbers


def test_transformers_logits_match_lmtune(exported) -> None:  # type: ignore[no-untyped-def]
    from fairseq2.nn import BatchLayout
    from transformers import AutoModelForCausalLM

    name, tiny, spec, tok, out = exported
    prompt = load_tokenizer(tok).create_encoder(mode="prompt")
    text_ids = [prompt(t).tolist()[:20] for t in TEXTS[:2]]
    width = min(len(x) for x in text_ids)
    ids = torch.cat([torch.tensor([x[:width] for x in text_ids]), torch.randint(0, tiny.config.vocab_size, (2, 40 - width), generator=torch.Generator().manual_seed(1))], dim=1)  # type: ignore[attr-defined]

    ours = load_any_model(spec)
    with torch.no_grad():
        expected = ours(ids, BatchLayout.of(ids))
    hf, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    # transformers would silently random-initialise a weight the export lacks.
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == [], info
    with torch.no_grad():
        got = hf(input_ids=ids).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOLERANCE, name
    assert torch.equal(got.argmax(-1), expected.argmax(-1)), name


def test_config_has_the_true_sizes_and_the_tokenizers_ids(exported) -> None:  # type: ignore[no-untyped-def]
    from fairseq2.models.hg import get_hugging_face_converter

    name, tiny, spec, tok, out = exported
    config = json.loads((out / "config.json").read_text())
    c = tiny.config
    vocab = load_tokenizer(tok).vocab_info
    if tiny.family == "gpt2":
        assert config["architectures"] == ["GPT2LMHeadModel"]
        assert (config["n_inner"], config["n_positions"], config["tie_word_embeddings"]) == (tiny.state_dict["decoder.layers.0.ffn.inner_proj.weight"].shape[0], c.max_seq_len, True)  # type: ignore[attr-defined]
        assert (config["bos_token_id"], config["eos_token_id"]) == (vocab.bos_idx, vocab.eos_idx)
        return
    assert config["intermediate_size"] == tiny.state_dict["decoder.layers.0.ffn.gate_proj.weight"].shape[0]
    assert config["tie_word_embeddings"] is c.tied_embeddings  # type: ignore[attr-defined]
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (vocab.bos_idx, vocab.eos_idx, vocab.pad_idx)
    assert config["torch_dtype"] == "float32"
    expected_arch = {"llama": "LlamaForCausalLM"}.get(tiny.family) or ("Qwen2ForCausalLM" if c.qkv_proj_bias else "Qwen3ForCausalLM")  # type: ignore[attr-defined]
    assert config["architectures"] == [expected_arch]
    if tiny.family == "llama":
        assert (config["rope_scaling"] is not None) is c.use_scaled_rope  # type: ignore[attr-defined]
        # The cases fairseq2's converter gets wrong, so these tests do cover them.
        theirs = get_hugging_face_converter("llama").to_hg_config(c).data
        assert theirs["intermediate_size"] != config["intermediate_size"]
        assert (theirs["bos_token_id"], theirs["eos_token_id"]) != (config["bos_token_id"], config["eos_token_id"])
    else:
        assert config["head_dim"] == (c.head_dim or c.model_dim // c.num_attn_heads)  # type: ignore[attr-defined]
    weights = json.loads((out / "model.safetensors").read_bytes()[8:8 + int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")])
    assert ("lm_head.weight" in weights) is not c.tied_embeddings  # type: ignore[attr-defined]


STOPS = {
    "llama3_hf": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
    "tiktoken": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
    "sentencepiece": ["</s>"],
    "sentencepiece_default": ["</s>"],
    "qwen_hf": ["<|im_end|>", "<|endoftext|>"],
    "gpt2_hf": ["<|endoftext|>"],
}


def test_generation_config_lists_every_stop_token(exported) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    name, tiny, spec, tok, out = exported
    hf_tok = AutoTokenizer.from_pretrained(out)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert eos == hf_tok.convert_tokens_to_ids(STOPS[VARIANTS[name][2]])


def test_exported_tokenizer_encodes_as_lmtune(exported) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    name, tiny, spec, tok, out = exported
    ours = load_tokenizer(tok)
    raw, prompt, decode = ours.create_raw_encoder(), ours.create_encoder(mode="prompt"), ours.create_decoder()
    hf = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf(text, add_special_tokens=False)["input_ids"] == raw(text).tolist(), text
        assert hf(text)["input_ids"] == prompt(text).tolist(), text  # what vLLM's completions endpoint feeds the model
        assert hf.decode(raw(text).tolist()) == decode(raw(text)), text


def test_model_generate_takes_the_tokenizers_output_as_is(exported) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exported[-1]
    hf = AutoTokenizer.from_pretrained(out)
    inputs = hf(TEXTS[0], return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}  # no token_type_ids, which generate() refuses
    model = AutoModelForCausalLM.from_pretrained(out)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] >= inputs["input_ids"].shape[1] + 1


def test_exported_chat_template_renders_as_lmtune(exported) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import Record

    name, tiny, spec, tok, out = exported
    hf = AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(tok)
    if tok.config.get("impl") == "sp" or tok.family == "gpt2":
        assert hf.chat_template is None  # lmtune has no chat layout for a SentencePiece (Llama 2) tokenizer, GPT-2 none of its own
        return
    got = hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    got = got["input_ids"] if isinstance(got, dict) else list(got)
    if tok.hf_dir is not None:  # lmtune's chat encoding: the tokenizer directory's own template
        want = ExampleEncoder(ours, tok.hf_dir).encode_prompt(Record(file=Path("chat.jsonl"), line=1, messages=CHAT))
        assert got == want
    elif tok.config.get("impl") == "tiktoken":  # an Instruct tiktoken model gets Llama 3's layout
        text = "<|begin_of_text|>" + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in CHAT)
        want = ours.create_raw_encoder()(text + "<|start_header_id|>assistant<|end_header_id|>\n\n").tolist()
        assert got == want
    else:
        raise AssertionError(f"no chat reference for tokenizer {tok.name}")


# Texts on which SentencePiece's default normalizer differs from an identity one.
NORMALIZER_TEXTS = [
    "  a  b\t\tc\n\n  d   ",
    " \n x \n ",
    "   ",
    "",
    "ＦＵＬＬ width ① ﬁne ｶﾀｶﾅ",
    "\u3000ideographic\u3000space and a\u00a0no-break space",
    "cafe\u0301 decomposed",
]


def test_sentencepiece_default_normalizer_exports_its_own_encodings(tmp_path: Path, tokenizers: dict[str, TokenizerSpec]) -> None:
    """The exported tokenizer.json collapses whitespace and applies NFKC as the model does: transformers'
    ids equal SentencePiece's and lmtune's, and so does the decoded text."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from lmtune.export.tokenizer import write_hf_tokenizer

    spec = tokenizers["sentencepiece_default"]
    write_hf_tokenizer(spec, tmp_path, model_max_length=64)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ref = spm.SentencePieceProcessor(model_file=str(spec.path))
    ours = load_tokenizer(spec)
    raw, prompt = ours.create_raw_encoder(), ours.create_encoder(mode="prompt")
    for text in NORMALIZER_TEXTS + TEXTS:
        ids = ref.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids == raw(text).tolist(), text
        assert hf(text)["input_ids"] == [ref.bos_id()] + ids == prompt(text).tolist(), text
        assert hf.decode(ids) == ref.decode(ids), text
    # The texts do exercise the normalizer: an identity one would keep the extra spaces and full-width letters.
    assert ref.decode(ref.encode(NORMALIZER_TEXTS[0])) == "a b c d"
    assert ref.decode(ref.encode(NORMALIZER_TEXTS[4])).startswith("FULL width 1 fine")


# ------------------------------------------------------------- the options


def test_sharded_bfloat16_export_verifies(tmp_path: Path, tokenizers: dict[str, TokenizerSpec]) -> None:
    from safetensors import safe_open

    tiny = build_tiny_model("llama", "llama3_2_1b", {**LLAMA, "num_key_value_heads": 2, "vocab_size": 704}, seed=5)
    spec, tok, output = resolve_export(str(write_run(tiny, tokenizers["llama3_hf"], tmp_path)))
    messages: list[str] = []
    export_hf(spec, tok, output, dtype="bfloat16", max_shard_size="60KB", verify=True, log=messages.append)  # type: ignore[arg-type]
    index = json.loads((output / "model.safetensors.index.json").read_text())  # type: ignore[operator]
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (output / "model.safetensors").exists()  # type: ignore[operator]
    for file in files:
        with safe_open(str(output / file), "pt") as f:  # type: ignore[operator]
            # A shard stays under the limit unless it holds one tensor bigger than the limit.
            assert (output / file).stat().st_size <= 60_000 + 4096 or len(f.keys()) == 1  # type: ignore[operator]
            for key in f.keys():
                assert f.get_tensor(key).dtype == torch.bfloat16 and index["weight_map"][key] == file
    embed = tiny.state_dict["decoder_frontend.embed.weight"]
    with safe_open(str(output / index["weight_map"]["model.embed_tokens.weight"]), "pt") as f:  # type: ignore[operator]
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), embed.to(torch.bfloat16))
    assert json.loads((output / "config.json").read_text())["torch_dtype"] == "bfloat16"  # type: ignore[operator]
    report = next(m for m in messages if "max abs logit difference" in m)
    assert float(report.split("difference ")[1].split()[0]) <= TOLERANCE


def test_verify_fails_on_a_broken_export(tmp_path: Path, tokenizers: dict[str, TokenizerSpec], monkeypatch: pytest.MonkeyPatch) -> None:
    """--verify is a real check: without the q/k rotary reordering it fails, and writes nothing."""
    import lmtune.models.hf_keys

    tiny = build_tiny_model("llama", "llama3_2_1b", {**LLAMA, "num_key_value_heads": 2, "vocab_size": 704}, seed=6)
    spec, tok, output = resolve_export(str(write_run(tiny, tokenizers["llama3_hf"], tmp_path)))
    monkeypatch.setattr(lmtune.models.hf_keys, "rotary_to_hf", lambda w, heads, dim: w)
    with pytest.raises(UserError, match="does not reproduce lmtune's model"):
        export_hf(spec, tok, output, verify=True, log=lambda m: None)  # type: ignore[arg-type]
    assert not output.exists() and list(output.parent.iterdir()) == [output.parent / "model"]  # type: ignore[union-attr]


@pytest.mark.slow
def test_tutorial_form_through_the_cli(tmp_path: Path, tokenizers: dict[str, TokenizerSpec], isolated_user_cards: Path) -> None:
    """`lmtune write_hf_config --model <card> <checkpoint_dir>`: Meta weights, HF tokenizer files beside them."""
    import shutil

    tiny = build_tiny_model("llama", "llama3_2_1b", {**LLAMA, "num_key_value_heads": 2, "vocab_size": 704}, seed=7)
    meta = write_meta_reference(tiny, tmp_path / "ckpt").parent
    shutil.copytree(tokenizers["llama3_hf"].path, meta, dirs_exist_ok=True)
    (isolated_user_cards / "tiny.yaml").write_text(yaml.safe_dump(tiny.card("tiny_meta", meta / "consolidated.00.pth")))
    result = run_lmtune_in_process("write_hf_config", "--model", "tiny_meta", str(meta), "--verify")
    assert result.returncode == 0, result.stderr[-3000:]
    difference = float(result.stderr.split("max abs logit difference ")[1].split()[0])
    assert difference <= TOLERANCE
    assert json.loads((meta / "hf" / "config.json").read_text())["tie_word_embeddings"] is True  # llama3_2_1b ties
    assert sorted(p.name for p in meta.iterdir()) == ["consolidated.00.pth", "hf", "params.json", "tokenizer.json", "tokenizer_config.json"]


# ---------------------------------------------------------------- bad input


def _no_partial_output(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if ".partial-" in p.name or p.name == "hf"]
    assert leftovers == [], leftovers


@pytest.fixture()
def small_run(tmp_path: Path, tokenizers: dict[str, TokenizerSpec]) -> Path:
    tiny = build_tiny_model("llama", "llama3_2_1b", {**LLAMA, "num_key_value_heads": 2, "vocab_size": 704}, seed=8)
    return write_run(tiny, tokenizers["llama3_hf"], tmp_path / "run")


def test_missing_and_partial_checkpoints(tmp_path: Path, small_run: Path) -> None:
    assert_user_error(run_lmtune_in_process("write_hf_config", str(tmp_path / "nowhere")), "no such file or directory")
    (small_run / "step_3").rename(small_run / "step_3.tmp")  # as a run killed while saving leaves it
    assert_user_error(run_lmtune_in_process("write_hf_config", str(small_run)), "holds no complete checkpoint")
    assert_user_error(run_lmtune_in_process("write_hf_config", str(small_run / "step_3.tmp")), "unfinished checkpoint")
    _no_partial_output(tmp_path)


def test_unknown_architecture_and_family_without_exporter(tmp_path: Path, small_run: Path) -> None:
    weights = small_run / "step_3" / "model" / "pp_00" / "tp_00" / "sdp_00.pt"
    assert_user_error(run_lmtune_in_process("write_hf_config", "--model", "llama3_3_1b", str(weights)), "neither an architecture nor a model card", "llama3_2_1b")
    assert_user_error(run_lmtune_in_process("write_hf_config", "--model", "llama4_scout_17b_16e", str(weights)), "family 'llama4'", "no Hugging Face exporter")
    assert_user_error(run_lmtune_in_process("write_hf_config", "--model", "qwen3_0.6b", str(small_run)), "qwen model", "llama model")
    _no_partial_output(tmp_path)


def test_existing_output_is_kept_unless_forced(small_run: Path) -> None:
    old = small_run / "step_3" / "hf"
    old.mkdir()
    (old / "mine.txt").write_text("keep me")
    assert_user_error(run_lmtune_in_process("write_hf_config", str(small_run)), "already exists", "--force")
    assert [p.name for p in old.iterdir()] == ["mine.txt"]
    result = run_lmtune_in_process("write_hf_config", str(small_run), "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (old / "mine.txt").exists() and (old / "model.safetensors").is_file()


def test_weights_that_float16_cannot_hold(tmp_path: Path, small_run: Path) -> None:
    shard = small_run / "step_3" / "model" / "pp_00" / "tp_00" / "sdp_00.pt"
    state = torch.load(shard)
    state["decoder.layers.1.ffn.output_proj.weight"][0, 0] = 1e6
    torch.save(state, shard)
    assert_user_error(run_lmtune_in_process("write_hf_config", str(small_run), "--dtype", "float16"), "cannot be cast to float16", "model.layers.1.mlp.down_proj.weight")
    assert_user_error(run_lmtune_in_process("write_hf_config", str(small_run), "--dtype", "int8"), "--dtype int8", "float32, bfloat16, float16")
    _no_partial_output(tmp_path)


def test_leftovers_of_a_killed_export_are_cleared(small_run: Path) -> None:
    """A SIGKILLed export leaves only a hidden staging directory; the next export removes it."""
    stale = small_run / "step_3" / ".hf.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    spec, tok, output = resolve_export(str(small_run))
    export_hf(spec, tok, output, log=lambda m: None)  # type: ignore[arg-type]
    assert sorted(p.name for p in (small_run / "step_3").iterdir()) == ["hf", "model"]
