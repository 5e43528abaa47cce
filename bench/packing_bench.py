"""SFT throughput: lmtune against transformers' Trainer and TRL, at each tool's defaults and at matched precision.

    .venv/bin/python bench/packing_bench.py [--scale full|smoke] [--examples 2000] [--threads 2]
        [--max-seq-len 512] [--max-num-tokens 4096] [--only lmtune_packed,trl_packed,...]
        [--hf-venv DIR] [--record] [--keep DIR]

One epoch over the same synthetic instruction data (bench/sft_workload.py: deterministic src/tgt JSONL with
skewed, lognormal lengths, encoded once with lmtune's own encoder, so every contender trains on the same
token ids and loss masks, and their target token counts are checked to be equal), the same randomly
initialised Llama-style model, AdamW with the same settings at a constant learning rate. The contenders
(bench/sft_contenders.py, each in its own process with the same OMP_NUM_THREADS):

  lmtune_packed        lmtune's defaults: dtype=auto (bf16 autocast where the CPU has AMX-BF16 or
                       AVX512-BF16 and the model is >= 128 wide, float32 otherwise), packing=true
  lmtune_packed_fp32   the same in float32
  lmtune_length        dtype=auto, packing=false (length batching at the default precision)
  lmtune_length_fp32   float32, packing=false (fairseq2-style length batching)
  hf_padded            transformers' Trainer at its defaults (bf16=False: float32), padded random batches
                       of a fixed size whose mean real tokens are about max_num_tokens
  hf_padded_bf16       the same with bf16=True (CPU autocast)
  trl_packed           TRL's SFTTrainer, packing=True, at SFTConfig's defaults: bf16=True and
                       gradient_checkpointing=True (TRL 1.16; on CPU too)
  trl_packed_bf16      bf16 without checkpointing
  trl_packed_fp32      float32 without checkpointing

transformers' Trainer needs accelerate and TRL needs trl, which cannot go into lmtune's venv; they run in
a side venv layered over it (bench/side_venv.py). Reported per contender: target tokens/s over the
training loop and after step 1, time to first step, wall times, padding, peak RSS (the kernel's, per
process), and MFU: useful model FLOPs per second, 6 * N * tokens + 6 * layers * model_dim * sum(len^2)
(N = weights in matrix products; padding and attention across examples count as waste), divided by this
machine's torch.mm rate (2048x2048, best of 5, before and after the contenders) in the precision the row
computes in: bfloat16 for bf16 rows, float32 for the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_machine import best_rates, machine, matmul_rates, record
from side_venv import hf_venv
from sft_contenders import CONTENDERS, Result, lmtune_config, run_lmtune, run_transformers
from sft_workload import CARD_NAME, VOCAB_SIZE, encode, make_records, matmul_params, model_flops, percentiles, resolve_card, transformers_config, write_card

REPO = Path(__file__).resolve().parent.parent
RESULTS_MARKER = "<!-- packing_bench --record inserts results below this line -->"
SCALES = {
    "full": {"model_dim": 512, "num_layers": 8, "num_attn_heads": 8, "num_key_value_heads": 4, "ffn_inner_dim": 1536},
    "smoke": {"model_dim": 128, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 512},
}
PEERS = [n for n, c in CONTENDERS.items() if c.tool != "lmtune"]
TARGETS = ("lmtune defaults >= 1.5x lmtune float32 and >= 2.5x the fastest peer at its best setting (on a CPU with AMX-BF16); "
           "packing at least as fast as length batching at the default precision; packed float32 >= 1.3x length-batched float32 and >= 2x transformers padded float32; packed padding <= 3%")


def table(results: list[Result], flops: float, rates: dict[str, float]) -> str:
    lines = [
        "| contender | precision | steps | target tok/s (training) | target tok/s (steady) | time to 1st step (s) "
        "| training wall (s) | total wall (s) | padding | peak RSS (GiB) | model GFLOP/s | MFU (of that precision's matmul) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.ok:
            lines.append(f"| {r.name} | {r.note} |" + " |" * 10)
            continue
        achieved = flops / r.train_s / 1e9
        what = ("bf16 autocast" if r.precision == "bfloat16" else "float32") + (", checkpointing" if r.checkpointing else "")
        lines.append(
            f"| {r.name} | {what} | {r.steps} | {r.tps:,.0f} | {r.steady_tps:,.0f} | {r.first_step_s:.1f} | {r.train_s:.1f} | {r.total_s:.1f} "
            f"| {100 * r.padding:.1f}% | {r.peak_rss / 2**30:.2f} | {achieved:.1f} | {100 * achieved / rates[r.precision]:.1f}% |"
        )
    return "\n".join(lines)


def ratio_lines(results: dict[str, Result]) -> list[str]:
    def ok(name: str) -> Result | None:
        r = results.get(name)
        return r if r and r.ok else None

    out = []
    pairs = [("lmtune_packed", "lmtune_packed_fp32", 1.5), ("lmtune_packed", "lmtune_length", 1.0), ("lmtune_packed_fp32", "lmtune_length_fp32", 1.3), ("lmtune_packed_fp32", "hf_padded", 2.0)]
    peers = [r for r in (ok(p) for p in PEERS) if r]
    fastest = max(peers, key=lambda r: r.tps) if peers else None
    if fastest:
        pairs.insert(1, ("lmtune_packed", fastest.name, 2.5))
    for a, b, factor in pairs:
        ra, rb = ok(a), ok(b)
        if ra and rb:
            x = ra.tps / rb.tps
            out.append(f"- {a} / {b}{' (the fastest peer)' if fastest and b == fastest.name else ''}: {x:.2f}x (target >= {factor}x): {'met' if x >= factor else 'missed'}")
        else:
            out.append(f"- {a} / {b} (target >= {factor}x): n/a (not run)")
    packed = ok("lmtune_packed")
    if packed:
        out.append(f"- lmtune_packed padding: {100 * packed.padding:.1f}% (target <= 3%): {'met' if packed.padding <= 0.03 else 'missed'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help="model size: full (512 dim, 8 layers, ~25M weights) or smoke (128 dim, 2 layers)")
    parser.add_argument("--model-dim", type=int, help="override the scale's model_dim")
    parser.add_argument("--layers", type=int, help="override the scale's num_layers")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--max-num-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS / torch threads of every contender")
    parser.add_argument("--only", default=",".join(CONTENDERS), help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--hf-venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmtune/packing-bench-venv",
                        help="side venv for accelerate and trl, layered over this venv (which is never changed)")
    parser.add_argument("--record", action="store_true", help="also write the results into bench/RESULTS.md")
    parser.add_argument("--keep", type=Path, help="keep data, runs and logs in this (new) directory")
    args = parser.parse_args()

    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CONTENDERS]
    if unknown:
        parser.error(f"--only: unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    scale = dict(SCALES[args.scale])
    if args.model_dim:
        scale["model_dim"] = args.model_dim
    if args.layers:
        scale["num_layers"] = args.layers
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    if args.max_seq_len < 64:
        parser.error("--max-seq-len must be at least 64 (the generated examples are at least a few sentences long)")
    if args.max_num_tokens < args.max_seq_len:
        parser.error("--max-num-tokens must be at least --max-seq-len")

    if args.keep:
        args.keep.mkdir(parents=True)
        work = args.keep.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="packing-bench-"))

    # Model card, data and the one encoding every contender trains on.
    write_card(work / "assets", scale, args.max_seq_len)
    os.environ["LMTUNE_USER_ASSET_DIR"] = str(work / "assets")
    config, tokenizer = resolve_card()
    hf = transformers_config(config, tokenizer)
    (work / "data").mkdir()
    data_file = work / "data/train.jsonl"
    records = make_records(args.examples, args.seed, args.max_seq_len)
    encoded = encode(records, data_file, tokenizer)
    kept = [i for i, (tokens, _) in enumerate(encoded) if len(tokens) <= args.max_seq_len]
    if len(kept) < len(encoded):
        print(f"dropped {len(encoded) - len(kept)} generated examples longer than {args.max_seq_len} tokens", file=sys.stderr)
    records, encoded = [records[i] for i in kept], [encoded[i] for i in kept]
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "data/encoded.json").write_text(json.dumps([{"input_ids": t, "labels": [x if m else -100 for x, m in zip(t, mask)]} for t, mask in encoded]))
    lmtune_config(work, args.max_seq_len, args.max_num_tokens)

    lengths = [len(t) for t, _ in encoded]
    expected_targets = sum(sum(mask) for _, mask in encoded)
    flops = model_flops(hf, lengths)
    batch_padded = max(1, round(args.max_num_tokens * len(lengths) / sum(lengths)))
    rows_trl = max(1, args.max_num_tokens // args.max_seq_len)
    n_weights = matmul_params(hf)
    host = machine(args.threads)
    print(f"machine: {host}")
    print(f"model: {CARD_NAME} (llama3_2_1b family) {scale}, vocab {VOCAB_SIZE}: {n_weights / 1e6:.1f}M weights in matrix products")
    print(f"data: {len(lengths)} examples, {sum(lengths):,} tokens, {expected_targets:,} target tokens; "
          f"max_seq_len {args.max_seq_len}, max_num_tokens {args.max_num_tokens}")
    print(f"  prompt tokens:   {percentiles([len(t) - sum(m) for t, m in encoded])}")
    print(f"  response tokens: {percentiles([sum(m) for _, m in encoded])}")
    print(f"batches: lmtune max_num_tokens={args.max_num_tokens}; hf_padded batch_size={batch_padded}; trl_packed {rows_trl} rows of <= {args.max_seq_len} tokens")
    before = matmul_rates(args.threads)
    print(f"matmul rates (2048x2048 torch.mm, best of 5): float32 {before['float32']:.1f}, bfloat16 {before['bfloat16']:.1f} GFLOP/s", flush=True)

    hf_python, deps_line, trl_reason = None, "", ""
    if any(CONTENDERS[n].tool != "lmtune" for n in only):
        hf_python, deps_line, trl_reason = hf_venv(args.hf_venv, any(CONTENDERS[n].tool == "trl" for n in only))
        print(f"accelerate/trl: {deps_line}" + (f"; trl: {trl_reason}" if trl_reason else ""), flush=True)

    results: dict[str, Result] = {}
    for name in only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        tool = CONTENDERS[name].tool
        if tool == "lmtune":
            results[name] = run_lmtune(name, args.threads, work)
        elif hf_python is None:
            results[name] = Result(name, note=f"skipped: {deps_line}")
        elif tool == "trl" and trl_reason:
            results[name] = Result(name, note=f"skipped: {trl_reason}")
        else:
            batch = batch_padded if tool == "hf" else rows_trl
            results[name] = run_transformers(name, args.threads, work, hf_python, hf, batch, args.max_seq_len)
        r = results[name]
        print(f"  {name}: {r.note or f'{r.steps} steps, {r.tps:,.0f} target tokens/s'}", file=sys.stderr, flush=True)
    after = matmul_rates(args.threads)
    rates = best_rates(before, after)

    mismatched = [f"{r.name} {r.target_tokens:,}" for r in results.values() if r.ok and r.target_tokens != expected_targets]
    text = "\n".join([
        f"### packing_bench, {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        "",
        f"- command: `{' '.join(['bench/packing_bench.py', *sys.argv[1:]])}`",
        f"- machine: {host} (load at the start); at the end: {machine(args.threads).rsplit('; ', 1)[1]}",
        f"- matmul (2048x2048 torch.mm, before / after): float32 {before['float32']:.1f} / {after['float32']:.1f}, "
        f"bfloat16 {before['bfloat16']:.1f} / {after['bfloat16']:.1f} GFLOP/s",
        f"- model {scale}, {n_weights / 1e6:.1f}M matmul weights; {len(lengths)} examples, {sum(lengths):,} tokens "
        f"(p50 {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}), {expected_targets:,} target tokens, one epoch; "
        f"max_seq_len {args.max_seq_len}, max_num_tokens {args.max_num_tokens}, hf_padded batch_size {batch_padded}, trl_packed {rows_trl} rows",
        *([f"- accelerate/trl: {deps_line}" + (f"; trl: {trl_reason}" if trl_reason else "")] if deps_line else []),
        "",
        table(list(results.values()), flops, rates),
        "",
        f"Ratios of target tokens/s (targets: {TARGETS}):",
        *ratio_lines(results),
        *([f"- target token counts differ (expected {expected_targets:,}): {', '.join(mismatched)}"] if mismatched else
          [f"- every contender that ran trained on the same {expected_targets:,} target tokens"] if any(r.ok for r in results.values()) else []),
    ])
    print()
    print(text)
    if args.record:
        record(text, RESULTS_MARKER, "No full-size run recorded yet.")
        print("\nrecorded in bench/RESULTS.md")
    failed = mismatched or any(not r.ok and not r.note.startswith("skipped") for r in results.values())
    if args.keep or failed:
        print(f"\ndata, runs and logs: {work}")
    else:
        shutil.rmtree(work)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
