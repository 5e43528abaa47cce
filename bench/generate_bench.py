"""Greedy generation tokens/s: lmtune (fairseq2's generator) against transformers' generate.

    .venv/bin/python bench/generate_bench.py [--max-gen-len 128] [--threads 1] [--device cpu|cuda]

The same weights on both sides: the tiny default's architecture (tiny_llama) with
seeded random weights, handed to transformers through fairseq2's Hugging Face
converter. Prompts are the first tiny_gsm8k test questions, at batch 1 (each prompt
alone, in turn) and batch 16 (all at once; transformers pads on the left). Both stop
at the same EOS or at max_gen_len, and the outputs are checked to be token-identical
before any time is reported, so both sides did the same work.
Prints a markdown table: best of --repeats timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
STOP = 5  # <|eot_id|>, the tiny tokenizer's EOS


def tiny_model(device: torch.device):  # type: ignore[no-untyped-def]
    from lmtune.catalog.cards import CardStore
    from lmtune.adapters.build import load_any_model
    from lmtune.models.loading import model_config
    from lmtune.catalog.specs import resolve_model

    spec = resolve_model(CardStore(), "tiny_llama", None)
    model = load_any_model(spec, device=device, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # the varied-output scale of tests/test_generate.py
            noise = torch.randn(p.shape, generator=gen)
            scaled = 1.0 + 0.2 * noise if name.endswith("norm.weight") else (0.1 * noise if "embed" in name else 2.0 * noise * p.shape[1] ** -0.5)
            p.copy_(scaled.to(device))
    return model, model_config(spec)


def to_transformers(model, config, device: torch.device):  # type: ignore[no-untyped-def]
    import transformers
    from fairseq2.models.hg import get_hugging_face_converter

    converter = get_hugging_face_converter("llama")
    hg_config = converter.to_hg_config(config)
    state = converter.to_hg_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, config)
    hf_config = getattr(transformers, hg_config.kls_name)(**hg_config.data)
    hf = getattr(transformers, hg_config.arch)(hf_config).eval()
    hf.load_state_dict(state, strict=False)
    if hf_config.tie_word_embeddings:
        hf.tie_weights()
    return hf.to(device)


def prompts(tokenizer, n: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    encode = tokenizer.create_encoder(mode="prompt")
    lines = (REPO / "assets/tiny/gsm8k/test/test.jsonl").read_text().splitlines()[:n]
    return [encode(json.loads(line)["src"]).tolist() for line in lines]


def run_lmtune(generator, batch: list[list[int]], device: torch.device) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [c.token_ids for c in generator(batch, device=device)]


def run_transformers(hf, batch: list[list[int]], max_gen_len: int, device: torch.device) -> list[list[int]]:  # type: ignore[no-untyped-def]
    width = max(len(p) for p in batch)
    ids = torch.tensor([[STOP] * (width - len(p)) + p for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_gen_len, eos_token_id=STOP, pad_token_id=STOP)
    rows = []
    for ids in out[:, width:].tolist():  # cut the padding after a row's EOS
        rows.append(ids[: ids.index(STOP) + 1] if STOP in ids else ids)
    return rows


def timed(fn, batches, repeats: int, device: torch.device) -> tuple[float, list[list[int]]]:  # type: ignore[no-untyped-def]
    fn(batches[0])  # warm-up
    best, outputs = float("inf"), []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = [ids for batch in batches for ids in fn(batch)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-gen-len", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on small CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from lmtune.catalog.cards import CardStore
    from lmtune.options.generate import GeneratorOptions
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.catalog.specs import resolve_tokenizer

    model, config = tiny_model(device)
    hf = to_transformers(model, config, device)
    tokenizer = load_tokenizer(resolve_tokenizer(CardStore(), "tiny_tokenizer"))
    generator = Generator(model, tokenizer, GeneratorOptions(max_gen_len=args.max_gen_len), stop_ids=[STOP])
    all_prompts = prompts(tokenizer, args.num_prompts)

    print(f"greedy generation, {args.max_gen_len} new tokens per prompt, {args.num_prompts} prompts, tiny_llama on {device}"
          f" ({platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__})\n")
    print("| batch | tokens generated | lmtune tokens/s | transformers tokens/s | lmtune / transformers |")
    print("|---|---|---|---|---|")
    for batch_size in (1, args.num_prompts):
        batches = [all_prompts[i : i + batch_size] for i in range(0, len(all_prompts), batch_size)]
        t_lm, out_lm = timed(lambda b: run_lmtune(generator, b, device), batches, args.repeats, device)
        t_hf, out_hf = timed(lambda b: run_transformers(hf, b, args.max_gen_len, device), batches, args.repeats, device)
        if out_lm != out_hf:
            raise SystemExit(f"batch {batch_size}: lmtune and transformers generated different tokens; timings would not compare the same work.")
        tokens = sum(len(ids) for ids in out_lm)
        print(f"| {batch_size} | {tokens:,} | {tokens / t_lm:,.0f} | {tokens / t_hf:,.0f} | {t_hf / t_lm:.2f} |")


if __name__ == "__main__":
    main()
