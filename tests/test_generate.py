"""lmtune generate: greedy output is token-identical to transformers' generate on
the same weights; stop tokens, the length limit, sampling seeds, torchrun shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, free_port, run_lmtune_in_process

TOKENIZER_DIR = REPO / "assets" / "tiny" / "tokenizer"
MAX_GEN_LEN = 24

# fairseq2 Llama names -> Hugging Face Llama names, written here rather than taken
# from fairseq2's exporter, so the comparison checks two independent sides.
LAYER_KEYS = {
    "self_attn_layer_norm": "input_layernorm",
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.output_proj": "self_attn.o_proj",
    "ffn_layer_norm": "post_attention_layernorm",
    "ffn.gate_proj": "mlp.gate_proj",
    "ffn.inner_proj": "mlp.up_proj",
    "ffn.output_proj": "mlp.down_proj",
}
TOP_KEYS = {"decoder_frontend.embed": "model.embed_tokens", "decoder.layer_norm": "model.norm", "final_proj": "lm_head"}

PROMPTS = [
    {"src": "Gus has 17 cards. Gus gives away 4. How many cards are left?\n", "tgt": "17 - 4 = 13\n#### 13"},
    {"src": "Ava has 3 pens.\n"},
    {"messages": [{"role": "user", "content": "Dan has 20 coins. Dan gives away 9. How many coins are left?"}, {"role": "assistant", "content": "#### 11"}]},
    {"src": "Hana has 21 cards. Hana gets 31 more. How many cards does Hana have? Jin has 2 eggs.\n", "tgt": "#### 52"},
    {"src": "Eli"},
]


def random_tiny_llama(seed: int = 0):  # type: ignore[no-untyped-def]
    """The tiny_llama architecture with seeded weights at a scale where greedy
    output varies from token to token (fairseq2's init at this size repeats one
    token) while the top two logits stay > 1e-3 apart, far above float32 noise."""
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import model_config

    spec = resolve_model(CardStore(), "tiny_llama", None)
    model = load_any_model(spec, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "embed" in name:
                p.copy_(0.1 * noise)
            else:
                p.copy_(2.0 * noise * p.shape[1] ** -0.5)
    return model, model_config(spec)


def write_model_card(tmp_path: Path, user_cards: Path, name: str = "parity_llama") -> tuple[dict[str, torch.Tensor], object]:
    model, config = random_tiny_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / f"{name}.pt")
    (user_cards / f"{name}.yaml").write_text(f"name: {name}\nbase: tiny_llama\ncheckpoint: {tmp_path / f'{name}.pt'}\n")
    return state, config


def to_transformers(state: dict[str, torch.Tensor], config) -> "torch.nn.Module":  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    heads, kv_heads, head_dim = config.num_attn_heads, config.num_key_value_heads, config.model_dim // config.num_attn_heads
    # fairseq2 rotates adjacent pairs (0,1),(2,3)..; HF rotates i with i + head_dim/2.
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    hf = {}
    for key, w in state.items():
        stem = key.rsplit(".", 1)[0]
        if stem in TOP_KEYS:
            hf[TOP_KEYS[stem] + ".weight"] = w
            continue
        _, _, layer, rest = stem.split(".", 3)
        if rest == "self_attn.q_proj":
            w = w.reshape(heads, head_dim, -1)[:, order].reshape(w.shape)
        if rest == "self_attn.k_proj":
            w = w.reshape(kv_heads, head_dim, -1)[:, order].reshape(w.shape)
        hf[f"model.layers.{layer}.{LAYER_KEYS[rest]}.weight"] = w
    scale = config.rope_scale
    hf_config = LlamaConfig(
        hidden_size=config.model_dim, intermediate_size=state["decoder.layers.0.ffn.gate_proj.weight"].shape[0],
        num_hidden_layers=config.num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        vocab_size=config.vocab_size, max_position_embeddings=config.max_seq_len, rope_theta=config.rope_theta,
        rms_norm_eps=1e-5, tie_word_embeddings=config.tied_embeddings,
        rope_scaling={"rope_type": "llama3", "factor": scale.factor, "low_freq_factor": scale.frequency_factors[0],
                      "high_freq_factor": scale.frequency_factors[1], "original_max_position_embeddings": scale.original_context_length},
    )
    model = LlamaForCausalLM(hf_config).eval()
    result = model.load_state_dict(hf, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result
    return model


def hf_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def hf_prompt_ids(tok, record: dict) -> list[int]:  # type: ignore[no-untyped-def]
    """The prompt as the reference sees it: BOS + text, or the chat template's prompt."""
    if "messages" in record:
        return tok.apply_chat_template(record["messages"][:-1], add_generation_prompt=True, tokenize=True)
    return [tok.bos_token_id] + tok(record["src"], add_special_tokens=False)["input_ids"]


def hf_greedy(model, prompt: list[int], stops: list[int], max_new_tokens: int = MAX_GEN_LEN) -> list[int]:  # type: ignore[no-untyped-def]
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=stops[0])
    gen = out[0, len(prompt):].tolist()
    for i, t in enumerate(gen):
        if t in stops:
            return gen[: i + 1]
    return gen


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_greedy_generate_equals_transformers(tmp_path: Path, isolated_user_cards: Path) -> None:
    state, config = write_model_card(tmp_path, isolated_user_cards)
    data = _jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "out"
    r = run_lmtune_in_process("generate", str(out), "--config", "model=parity_llama", f"dataset={data}", f"generator_config.max_gen_len={MAX_GEN_LEN}", "score=none")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _read(out / "generations.jsonl")
    assert len(rows) == len(PROMPTS)

    tok = hf_tokenizer()
    stops = [tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")]
    model = to_transformers(state, config)
    for record, row in zip(PROMPTS, rows):
        expected = hf_greedy(model, hf_prompt_ids(tok, record), stops)
        assert row["token_ids"] == expected, (record, row)
        stopped = bool(expected) and expected[-1] in stops
        assert row["finish_reason"] == ("stop" if stopped else "length")
        assert row["completion"] == tok.decode(expected[:-1] if stopped else expected)
        assert row.get("reference") == (record.get("tgt") or (record["messages"][-1]["content"] if "messages" in record else None))
    assert rows[0]["prompt"] == PROMPTS[0]["src"]
    assert rows[2]["prompt"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    # Every prompt ran to the limit here: max_gen_len ids, no forced EOS appended.
    assert any(row["finish_reason"] == "length" and len(row["token_ids"]) == MAX_GEN_LEN for row in rows)


@pytest.mark.parametrize("as_eos", [False, True], ids=["extra_stop_id", "eos_id"])
def test_stop_token_ends_a_short_prompt_in_a_mixed_length_batch(as_eos: bool) -> None:
    """A stop id ends a sequence on the step it is produced, for a short prompt
    batched with longer ones: as an extra stop id (which fairseq2 alone ignores), and
    as fairseq2's EOS (which fairseq2 alone bans until the longest prompt is read)."""
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_tokenizer
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    model, config = random_tiny_llama()
    hf_model = to_transformers({k: v.clone() for k, v in model.state_dict().items()}, config)
    tok = hf_tokenizer()
    tokenizer = load_tokenizer(resolve_tokenizer(CardStore(), "tiny_tokenizer"))
    prompts = [hf_prompt_ids(tok, r) for r in PROMPTS]
    short = min(range(len(prompts)), key=lambda i: len(prompts[i]))
    free = hf_greedy(hf_model, prompts[short], [5])
    # Stop on the token the short prompt produces third (a token not seen before it).
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    stops = [free[k], 5] if as_eos else [5, free[k]]
    completions = Generator(model, tokenizer, GeneratorOptions(max_gen_len=MAX_GEN_LEN), stop_ids=stops)(prompts)
    for prompt, c in zip(prompts, completions):
        expected = hf_greedy(hf_model, prompt, stops)
        assert c.token_ids == expected
        assert c.stopped == (expected[-1] in stops)
    assert len(prompts[short]) + k + 1 < max(len(p) for p in prompts)  # it stops while others read their prompt
    assert completions[short].token_ids == free[: k + 1] and completions[short].stopped


def test_length_limit_drops_fairseq2s_forced_eos() -> None:
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_tokenizer
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    model, config = random_tiny_llama(seed=3)
    hf_model = to_transformers({k: v.clone() for k, v in model.state_dict().items()}, config)
    tokenizer = load_tokenizer(resolve_tokenizer(CardStore(), "tiny_tokenizer"))
    prompt = hf_prompt_ids(hf_tokenizer(), PROMPTS[0])
    for n in (1, 2, 7):
        (c,) = Generator(model, tokenizer, GeneratorOptions(max_gen_len=n), stop_ids=[5])([prompt])
        assert c.token_ids == hf_greedy(hf_model, prompt, [5], max_new_tokens=n)
        assert len(c.token_ids) == n and not c.stopped


@pytest.mark.slow
def test_sampling_is_reproducible_with_its_seed(tmp_path: Path, isolated_user_cards: Path) -> None:
    write_model_card(tmp_path, isolated_user_cards)
    data = _jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    args = ["--config", "model=parity_llama", f"dataset={data}", "generator_config.max_gen_len=16", "generator_config.temperature=1.0", "generator_config.top_p=0.95"]
    ids = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        r = run_lmtune_in_process("generate", str(tmp_path / name), *args, f"seed={seed}")
        assert r.returncode == 0, r.stderr[-3000:]
        ids.append([row["token_ids"] for row in _read(tmp_path / name / "generations.jsonl")])
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_dump_config_shows_generator_keys() -> None:
    r = run_lmtune_in_process("generate", "OUT", "--config", "model=tiny_llama", "generator_config.top_k=5", "--dump-config")
    assert r.returncode == 0, r.stderr
    import yaml

    dumped = yaml.safe_load(r.stdout)
    assert dumped["model"] == "tiny_llama"
    assert dumped["generator_config"] == {"temperature": 0.0, "top_p": 1.0, "top_k": 5, "max_gen_len": 256, "beam_size": 1}


@pytest.mark.slow
def test_two_processes_under_torchrun_merge_in_input_order(tmp_path: Path, isolated_user_cards: Path) -> None:
    """Each rank generates a strided shard; rank 0 writes them back in input order.
    batch_size=1 makes every prompt's computation independent of how prompts are
    sharded, so the result must equal a single process's byte for byte."""
    write_model_card(tmp_path, isolated_user_cards)
    data = _jsonl(tmp_path / "prompts.jsonl", PROMPTS * 2)
    args = ["generate", "--config", "model=parity_llama", f"dataset={data}", "generator_config.max_gen_len=12", "batch_size=1", "score=none"]
    single = tmp_path / "single"
    r = run_lmtune_in_process(args[0], str(single), *args[1:])
    assert r.returncode == 0, r.stderr[-3000:]

    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMTUNE_USER_ASSET_DIR": str(isolated_user_cards)}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lmtune", args[0], str(two), *args[1:]],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "generated 5 completions" in r.stderr  # rank 0 did its half only
    assert (two / "generations.jsonl").read_text() == (single / "generations.jsonl").read_text()
    assert sorted(p.name for p in two.iterdir()) == [".lmtune.lock", "generate.yaml", "generations.jsonl"]



@pytest.mark.slow
def test_two_srun_tasks_split_the_prompts_and_merge_like_one_process(tmp_path: Path, isolated_user_cards: Path) -> None:
    """Under srun each task sees only SLURM's variables (no RANK, no scontrol): generate must
    turn them into torch.distributed's, generate its half, and rank 0 write one merged file."""
    write_model_card(tmp_path, isolated_user_cards)
    data = _jsonl(tmp_path / "prompts.jsonl", PROMPTS * 2)
    args = ["--config", "model=parity_llama", f"dataset={data}", "generator_config.max_gen_len=12", "batch_size=1", "score=none"]
    single = tmp_path / "single"
    r = run_lmtune_in_process("generate", str(single), *args)
    assert r.returncode == 0, r.stderr[-3000:]

    two = tmp_path / "two"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    procs, port = [], str(free_port())
    for rank in range(2):
        env = {
            **base, "OMP_NUM_THREADS": "1", "LMTUNE_USER_ASSET_DIR": str(isolated_user_cards),
            "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_NNODES": "1",
            "SLURM_JOB_ID": "779", "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "2", "MASTER_PORT": port,
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "lmtune", "generate", str(two), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        errs.append(err)
    assert "generated 5 completions" in errs[0]  # rank 0 did its half only, not all 10 prompts
    assert (two / "generations.jsonl").read_text() == (single / "generations.jsonl").read_text()

def test_length_batches() -> None:
    from lmtune.generate.generator import length_batches

    lengths = [5, 9, 5, 7, 9, 3]
    # Longest first; each prompt counts as (longest in its batch + max_gen_len) tokens.
    assert length_batches(lengths, max_gen_len=11, batch_size=None, max_num_tokens=60) == [[1, 4, 3], [0, 2, 5]]
    assert length_batches(lengths, max_gen_len=11, batch_size=None, max_num_tokens=10) == [[1], [4], [3], [0], [2], [5]]
    assert length_batches(lengths, max_gen_len=11, batch_size=4, max_num_tokens=10) == [[1, 4, 3, 0], [2, 5]]
    # Beam search batches one prompt length at a time (and counts each beam).
    assert length_batches(lengths, max_gen_len=11, batch_size=None, max_num_tokens=1000, beam_size=2) == [[1, 4], [3], [0, 2], [5]]


def test_beam_search_stops_on_an_extra_stop_id() -> None:
    """Beam search folds the extra stop ids into fairseq2's EOS: a hypothesis that
    reaches one ends there (reported with the EOS id), so none runs past it."""
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_tokenizer
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    model, _ = random_tiny_llama()
    tokenizer = load_tokenizer(resolve_tokenizer(CardStore(), "tiny_tokenizer"))
    prompt = hf_prompt_ids(hf_tokenizer(), PROMPTS[1])
    options = GeneratorOptions(max_gen_len=MAX_GEN_LEN, beam_size=3)
    (free,) = Generator(model, tokenizer, options, stop_ids=[5])([prompt])
    assert len(free.token_ids) == MAX_GEN_LEN and not free.stopped
    stop = free.token_ids[3]
    (c,) = Generator(model, tokenizer, options, stop_ids=[5, stop])([prompt])
    assert c.stopped and c.token_ids[-1] == 5
    assert stop not in c.token_ids


def test_random_init_model_is_the_same_for_the_same_seed() -> None:
    """model=tiny_llama (init: random) scores the untrained model reproducibly."""
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model

    spec = resolve_model(CardStore(), "tiny_llama", None)
    a, b, c = (load_any_model(spec, seed=s).state_dict() for s in (2, 2, 3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.layers.0.self_attn.q_proj.weight"], c["decoder.layers.0.self_attn.q_proj.weight"])
