"""The SFT benchmark's workload: synthetic skewed-length instruction data, encoded once with lmtune's own
encoder, and the Llama-style model card every contender trains (bench/packing_bench.py)."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO / "assets/tiny/tokenizer"
WORDS_FROM = REPO / "assets/tiny/gsm8k/sft/train.jsonl"
CARD_NAME = "packing_bench_llama"
VOCAB_SIZE = 512  # the tiny tokenizer's 476 tokens, rounded up
PAD_IDX = 2


# ---------------------------------------------------------------- data


def word_pool() -> list[str]:
    """Words the tiny tokenizer was trained on (its GSM8K-style data), so tokens per word stay realistic."""
    words = set()
    for line in WORDS_FROM.read_text().splitlines():
        record = json.loads(line)
        words.update(w for w in re.findall(r"[A-Za-z]+", record["src"] + " " + record["tgt"]))
    return sorted(words)


def skewed_lengths(rng: random.Random, max_seq_len: int) -> tuple[int, int]:
    """Prompt and response lengths: log-normal, medians ~45 and ~75 tokens, scaled down to fit a row with BOS and EOS."""
    prompt = max(8, round(rng.lognormvariate(math.log(45), 0.7)))
    response = max(8, round(rng.lognormvariate(math.log(75), 0.9)))
    room = max_seq_len - 2
    if prompt + response > room:
        prompt, response = max(8, room * prompt // (prompt + response)), max(8, room * response // (prompt + response))
    return prompt, response


def make_records(n: int, seed: int, max_seq_len: int) -> list[dict[str, str]]:
    """src/tgt records whose prompt and response lengths in tokens are lognormal (medians ~45 and ~75,
    a long tail), the two together capped so that prompt + response + BOS/EOS fit max_seq_len."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    rng = random.Random(seed)
    words = word_pool()

    def sentence() -> str:
        parts = [str(rng.randint(0, 999)) if rng.random() < 0.25 else rng.choice(words) for _ in range(rng.randint(4, 12))]
        return " ".join(parts).capitalize() + "."

    def text(start: str, budget: int) -> str:
        # Byte-level BPE splits at spaces, so token counts of " sentence" pieces add up.
        out, used = start, len(tokenizer.encode(start, add_special_tokens=False).ids)
        while True:
            piece = " " + sentence()
            cost = len(tokenizer.encode(piece, add_special_tokens=False).ids)
            if used + cost > budget and out != start:
                return out
            out, used = out + piece, used + cost

    def length(record: dict[str, str]) -> int:
        return sum(len(tokenizer.encode(record[k], add_special_tokens=False).ids) for k in ("src", "tgt")) + 2  # BOS, EOS

    records = []
    for _ in range(n):
        prompt, response = skewed_lengths(rng, max_seq_len)
        record = {"src": text("Question:", prompt), "tgt": text("Answer:", response)}
        while length(record) > max_seq_len:  # a first sentence longer than its budget: draw again, shorter
            prompt, response = max(8, prompt * 9 // 10), max(8, response * 9 // 10)
            record = {"src": text("Question:", prompt), "tgt": text("Answer:", response)}
        records.append(record)
    return records


def encode(records: list[dict[str, str]], data_file: Path, tokenizer) -> list[tuple[list[int], list[bool]]]:  # type: ignore[no-untyped-def]
    """Token ids and loss masks exactly as lmtune's recipe encodes them."""
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import Record

    encoder = ExampleEncoder(tokenizer, None)
    out = []
    for i, r in enumerate(records, start=1):
        example = encoder.encode(Record(file=data_file, line=i, src=r["src"], tgt=r["tgt"]))
        out.append((example.tokens, example.target_mask))
    return out


def percentiles(values: list[int]) -> str:
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return f"mean {sum(s) / len(s):.0f}, p10 {pick(0.1)}, p50 {pick(0.5)}, p90 {pick(0.9)}, p99 {pick(0.99)}, max {s[-1]}"


# ---------------------------------------------------------------- model


def write_card(asset_dir: Path, scale: dict[str, int], max_seq_len: int) -> None:
    """A user model card like assets/tiny.yaml's tiny_llama, at the benchmark's size."""
    asset_dir.mkdir(parents=True)
    config = "\n".join(f"  {k}: {v}" for k, v in scale.items())
    (asset_dir / "packing_bench.yaml").write_text(
        f"name: {CARD_NAME}\nmodel_family: llama\nmodel_arch: llama3_2_1b\ninit: random\ntokenizer_ref: tiny_tokenizer\n"
        f"model_config:\n{config}\n  vocab_size: {VOCAB_SIZE}\n  pad_idx: {PAD_IDX}\n  tied_embeddings: true\n  max_seq_len: {max_seq_len}\n"
    )


def resolve_card():  # type: ignore[no-untyped-def]
    """The card's fairseq2 model config and its tokenizer, as lmtune resolves them (LMTUNE_USER_ASSET_DIR set)."""
    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import load_tokenizer, model_config
    from lmtune.catalog.specs import resolve_model

    spec = resolve_model(CardStore(), CARD_NAME, None)
    return model_config(spec), load_tokenizer(spec.tokenizer)


def transformers_config(config, tokenizer) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The same model as a transformers LlamaConfig (lmtune's exporter's key-by-key mapping)."""
    import transformers
    from lmtune.export.hf_config import SpecialIds, hf_config

    vocab = tokenizer.vocab_info
    ids = SpecialIds(bos=vocab.bos_idx, eos=vocab.eos_idx, pad=vocab.pad_idx, stops=[vocab.eos_idx])
    return hf_config("llama", config, ids, "float32", transformers.__version__)


def matmul_params(hf: dict[str, object]) -> int:
    """Weights in matrix products: attention and SwiGLU of every layer, plus the output projection."""
    d, heads, kv = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_key_value_heads"])  # type: ignore[call-overload]
    head_dim, ffn = int(hf["head_dim"]), int(hf["intermediate_size"])  # type: ignore[call-overload]
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * ffn
    return int(hf["num_hidden_layers"]) * per_layer + d * int(hf["vocab_size"])  # type: ignore[call-overload]


def model_flops(hf: dict[str, object], lengths: list[int]) -> float:
    """Training FLOPs of one epoch: 6 * N * tokens + 6 * layers * model_dim * sum(len^2) (causal attention)."""
    n, layers, d = matmul_params(hf), int(hf["num_hidden_layers"]), int(hf["hidden_size"])  # type: ignore[call-overload]
    return 6.0 * n * sum(lengths) + 6.0 * layers * d * sum(n_ * n_ for n_ in lengths)
