"""Greedy generation tokens/s: lmtune (fairseq2's generator) against transformers' generate.

    .venv/bin/python bench/generate_bench.py [--max-gen-len 128] [--threads 1] [--device cpu|cuda] [--width 128|512] [--record]

The same weights on both sides: the tiny default's architecture (tiny_llama, 128 wide) or a 512-wide,
8-layer one (--width 512, ~25M weights: where dtype=auto picks bf16 on a CPU with a bf16 unit) with
seeded random weights, handed to transformers through fairseq2's Hugging Face converter. Each tool at
its default and at the other precision: lmtune under dtype=auto (bf16 weights where lmtune.precision
says so, as `lmtune generate` loads them) and in float32; transformers at its default (float32) and with
bf16 weights. Only the two float32 sides must agree token for token (bf16 rounds differently in each). Prompts are the first tiny_gsm8k test questions, at batch 1 (each prompt
alone, in turn) and batch 16 (all at once; transformers pads on the left). Both stop
at the same EOS or at max_gen_len, and the outputs are checked to be token-identical
before any time is reported, so both sides did the same work.
Prints a markdown table: best of --repeats timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
STOP = 5  # <|eot_id|>, the tiny tokenizer's EOS


WIDE = {"model_dim": 512, "num_layers": 8, "num_attn_heads": 8, "num_key_value_heads": 4, "ffn_inner_dim": 1536}  # packing_bench's full scale


def tiny_model(device: torch.device, width: int, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    import dataclasses

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import model_config

    spec = resolve_model(CardStore(), "tiny_llama", None)
    if width != 128:
        spec = dataclasses.replace(spec, config={**spec.config, **WIDE, "model_dim": width})
    model = load_any_model(spec, device=device, dtype=dtype, seed=0)  # as `lmtune generate` loads it
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
    # fairseq2 scales ffn_inner_dim (2/3, rounded up to 256); the converter's config may not: the weights say.
    data = {**hg_config.data, "intermediate_size": state["model.layers.0.mlp.gate_proj.weight"].shape[0]}
    hf_config = getattr(transformers, hg_config.kls_name)(**data)
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
    parser.add_argument("--width", type=int, default=128, help="model_dim: 128 (tiny_llama) or wider (8 layers, as packing_bench's full scale)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from bench_machine import machine

    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_tokenizer
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions
    from lmtune.precision import choose_precision

    model, config = tiny_model(device, args.width)
    auto = choose_precision("auto", device.type, args.width, warn=False, generation=True)
    hf = to_transformers(model, config, device)
    hf_bf16 = to_transformers(model, config, device).to(torch.bfloat16)
    tokenizer = load_tokenizer(resolve_tokenizer(CardStore(), "tiny_tokenizer"))
    options = GeneratorOptions(max_gen_len=args.max_gen_len)
    generators = {"float32": Generator(model, tokenizer, options, stop_ids=[STOP])}
    if auto.dtype != "float32":
        half = tiny_model(device, args.width, getattr(torch, auto.dtype))[0]  # the same weights, rounded
        generators[auto.dtype] = Generator(half, tokenizer, options, stop_ids=[STOP])
    all_prompts = prompts(tokenizer, args.num_prompts)

    rows = [  # name, precision, how to run a batch
        ("lmtune, dtype=auto (its default)", auto.dtype, lambda b: run_lmtune(generators[auto.dtype], b, device)),
        ("lmtune, float32", "float32", lambda b: run_lmtune(generators["float32"], b, device)),
        ("transformers (its default)", "float32", lambda b: run_transformers(hf, b, args.max_gen_len, device)),
        ("transformers, bf16 weights", "bfloat16", lambda b: run_transformers(hf_bf16, b, args.max_gen_len, device)),
    ]
    lines = [f"### generate_bench, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", "",
             f"- command: `bench/generate_bench.py {' '.join(sys.argv[1:])}`",
             f"- greedy, {args.max_gen_len} new tokens at most, {args.num_prompts} tiny_gsm8k test prompts, model_dim {args.width} "
             f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M weights, random) on {device}; best of {args.repeats}",
             f"- machine: {machine(args.threads)} (at the start)", f"- lmtune dtype=auto here: {auto.dtype} weights ({auto.reason})", "",
             "| batch | contender | precision | tokens generated | tokens/s | / transformers' default |", "|---|---|---|---|---|---|"]
    for batch_size in (1, args.num_prompts):
        batches = [all_prompts[i : i + batch_size] for i in range(0, len(all_prompts), batch_size)]
        timings = [(name, precision, *timed(fn, batches, args.repeats, device)) for name, precision, fn in rows]
        if timings[1][3] != timings[2][3]:
            raise SystemExit(f"batch {batch_size}: lmtune and transformers generated different tokens in float32; timings would not compare the same work.")
        base = sum(len(ids) for ids in timings[2][3]) / timings[2][2]
        for name, precision, took, out in timings:
            tokens = sum(len(ids) for ids in out)
            lines.append(f"| {batch_size} | {name} | {precision} | {tokens:,} | {tokens / took:,.0f} | {tokens / took / base:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.record:
        with (REPO / "bench/RESULTS.md").open("a") as fp:
            fp.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
