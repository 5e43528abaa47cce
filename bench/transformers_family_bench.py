"""Training tokens/s of the transformers-backed family against the native one, on the same Llama shape.

The transformers-backed path (``lmtune.models.transformers_family``) is what a model lmtune has no
native family for runs on; Llama has both, so this measures what the generic path costs. Both train
the same packed batches (per-example attention in each: the native model with lmtune's
``DocumentSDPA``, as its recipe installs it; the wrapper with its block-diagonal 4D mask) through
``lmtune.training.nll_unit.target_nll`` with AdamW, float32, on CPU.

    OMP_NUM_THREADS=2 .venv/bin/python bench/transformers_family_bench.py [--record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import time
from pathlib import Path

import torch

DIM, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 256, 4, 4, 2, 768, 512


def packed_batches(count: int, *, tokens: int, example_len: int, seed: int):  # type: ignore[no-untyped-def]
    from fairseq2.datasets import SequenceBatch

    gen = torch.Generator().manual_seed(seed)
    lengths = [example_len] * (tokens // example_len)
    return [SequenceBatch(torch.randint(0, VOCAB, (tokens,), generator=gen), lengths, packed=True) for _ in range(count)]


def native_llama() -> torch.nn.Module:
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.models.llama import LLaMAConfig
    from fairseq2.models.transformer.sdpa.default import set_default_sdpa_factory

    from lmtune.models.document_attention import DocumentSDPA
    from lmtune.models.loading import model_family

    set_default_sdpa_factory(DocumentSDPA)
    config = LLaMAConfig(model_dim=DIM, max_seq_len=4096, vocab_size=VOCAB, num_layers=LAYERS, num_attn_heads=HEADS, num_key_value_heads=KV_HEADS, ffn_inner_dim=FFN, ffn_inner_dim_multiplier=1.0, ffn_inner_dim_multiple_of=1, ffn_inner_dim_scale=1.0, tied_embeddings=False)
    return model_family("llama").create_new_model(config, create_fake_gangs(CPU), torch.float32, meta=False, init_rank0_only=False)


def transformers_llama() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lmtune.models.transformers_family import TransformersCausalLM

    config = LlamaConfig(hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=4096, tie_word_embeddings=False)
    return TransformersCausalLM(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"))


def tokens_per_second(model: torch.nn.Module, batches: list) -> tuple[float, int]:  # type: ignore[type-arg]
    from lmtune.training.nll_unit import target_nll

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    weights = sum(p.numel() for p in model.parameters())
    elapsed, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        loss, targets = target_nll(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i > 0:  # step 1 is warm-up
            elapsed += time.perf_counter() - start
            tokens += targets.num_target_elements
    return tokens / elapsed, weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--example-len", type=int, default=128)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    batches = packed_batches(args.steps, tokens=args.tokens, example_len=args.example_len, seed=0)
    rows = []
    for name, build in (("native llama (fairseq2 + DocumentSDPA)", native_llama), ("transformers-backed LlamaForCausalLM", transformers_llama)):
        torch.manual_seed(0)
        rate, weights = tokens_per_second(build(), batches)
        rows.append((name, weights, rate))
    native = rows[0][2]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    lines = [
        f"### transformers_family_bench, {when}",
        "",
        f"CPU, {threads} threads, commit {commit}; {args.steps - 1} timed steps of {args.tokens} packed tokens ({args.example_len}-token examples), float32, AdamW.",
        "",
        "| path | weights | train tokens/s | vs native |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {weights / 1e6:.2f}M | {rate:,.0f} | {rate / native:.2f}x |" for name, weights, rate in rows),
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if args.record:
        results = Path(__file__).with_name("RESULTS.md")
        text = results.read_text()
        heading = "## Transformers-backed family vs native"
        if heading not in text:
            text = text.rstrip("\n") + f"\n\n{heading}\n\n`bench/transformers_family_bench.py`: what a model lmtune has no native family for pays, measured on Llama (both paths exist).\n\n"
        results.write_text(text.rstrip("\n") + "\n\n" + table)


if __name__ == "__main__":
    main()
