"""LoRA training throughput and peak memory: lmtune against transformers + PEFT and TRL.

    .venv/bin/python bench/lora_bench.py [--steps 4] [--scale 1b|smoke] [--response-share 0.5] [--only 'NAME;NAME'] [--record]

The base is a randomly initialised model of Llama-3.2-1B's shape (1.24 B parameters, stored in
bfloat16 as a training run's checkpoint, like bench/export_bench.py) and trains in float32 on
CPU (or bf16 autocast: see below). Every contender trains rank-16 adapters (alpha 32, no dropout) on all seven projections
with AdamW (lr 1e-4) on the same rows of 500-512 token ids, one row per step, with the loss on
the same response tokens (``--response-share`` of each record's words; 0 gives a one-number
answer, as in classification):

- lmtune: `lmtune instruction_finetune` as a user runs it, a new stage on the checkpoint with
  `lora.rank=16`; each record encodes to at most 512 tokens and fills a packed row alone, so
  its attention is the same causal attention over 512 tokens as transformers'.
- lmtune with `release_freed_memory=true` (freed activations given back to the system at once:
  a lower peak, slower steps), and QLoRA with it: `lora.quantize=nf4` (the frozen base in 4-bit
  NF4), once more with `activation_checkpointing=true`, as QLoRA is usually run.
- transformers + PEFT: `AutoModelForCausalLM` on lmtune's HF export of the same checkpoint,
  `get_peft_model(LoraConfig(...))`, a plain loop (forward, loss, backward, AdamW step), the
  labels -100 outside the response.
- TRL: `SFTTrainer(peft_config=LoraConfig(...))` on the same export and rows (pre-tokenized with
  a "labels" column, no packing, batch 1), at SFTConfig's defaults (TRL 1.16: bf16=True and
  gradient_checkpointing=True, on CPU too), in bf16 without checkpointing, and in float32. TRL
  cannot go into lmtune's venv (a plain install upgrades transformers to 5.x), so it runs in a
  side venv layered over it, built by bench/side_venv.py's `hf_venv` (--trl-venv); when TRL does
  not resolve beside lmtune's pins, the rows say why.

Each tool runs at its defaults and at the other precision: lmtune under dtype=auto (bf16 autocast
on a CPU with AMX-BF16/AVX512-BF16 for models >= 128 wide: both scales here) and in float32, the
PEFT loop in float32 (a plain loop's default) and under CPU bf16 autocast.

Tokens/s is over the steps after the first (its warmup), each contender timed per step
(fairseq2's Lapse Time for lmtune). Peak RSS is the kernel's (getrusage) for each
contender's own process.

What bounds the speed: every contender runs the frozen projections' forward and input-gradient
matrix products (about 4 FLOPs per frozen weight per token, plus attention); transformers runs
the LM head on every position, lmtune on the response tokens only. The bench measures this
machine's float32 and bfloat16 matrix-product rates at the same thread count and prints each
contender's share of its own bound at the rate of the precision it computes in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_machine import best_rates, machine, matmul_rates

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN = 512
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# lmtune's rows: name -> extra config keys. The QLoRA rows give freed memory back at once, as
# a run short of memory would; so does one LoRA row, for the ratio at the same settings.
RELEASE = "release_freed_memory=true"
FP32 = "dtype=float32"
LMTUNE_RUNS: dict[str, list[str]] = {
    "lmtune defaults (dtype=auto)": [],
    "lmtune float32": [FP32],
    "lmtune float32, release_freed_memory": [FP32, RELEASE],
    "lmtune qlora float32, release_freed_memory": [FP32, "lora.quantize=nf4", RELEASE],
    "lmtune qlora float32, release_freed_memory, activation_checkpointing": [FP32, "lora.quantize=nf4", RELEASE, "activation_checkpointing=true"],
}
# The peers: transformers + PEFT in a plain loop (float32, PEFT's own default, and under CPU bf16 autocast),
# and TRL at SFTConfig's defaults (bf16=True, gradient_checkpointing=True in TRL 1.16, on CPU too) and set.
PEFT_RUNS = {"transformers+peft float32": False, "transformers+peft bf16 autocast": True}
TRL_RUNS: dict[str, dict[str, bool]] = {
    "trl+peft defaults (bf16, checkpointing)": {},
    "trl+peft bf16": {"gradient_checkpointing": False},
    "trl+peft float32": {"bf16": False, "gradient_checkpointing": False},
}
SMOKE = {"model_dim": 256, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 1024, "vocab_size": 512, "tied_embeddings": True, "pad_idx": 2}

HF_CHILD = r"""
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
hf_dir, rows, masks, steps, bf16 = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "bf16"
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=%s, task_type="CAUSAL_LM"))
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
times = []
for step in range(steps):
    ids = torch.tensor([rows[step %% len(rows)]])
    labels = ids.masked_fill(~torch.tensor([masks[step %% len(rows)]]), -100)  # the loss on response tokens, as lmtune's
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print("RESULT " + json.dumps({"times": times, "tokens": [len(rows[s %% len(rows)]) for s in range(steps)]}))
""" % TARGETS


TRL_CHILD = r"""
import json, sys, time, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
hf_dir, rows, masks, steps, out, settings = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
times, begin = [], [0.0]
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        begin[0] = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        times.append(time.perf_counter() - begin[0])
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
config = SFTConfig(output_dir=out, max_length=512, packing=False, per_device_train_batch_size=1, max_steps=steps, learning_rate=1e-4,
                   adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, lr_scheduler_type="constant", max_grad_norm=None, use_cpu=True,
                   save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
                   **settings)  # {}: TRL's own precision defaults (bf16 autocast, checkpointing)
# a "labels" column is used as it is: the loss on response tokens, as lmtune's
data = Dataset.from_list([{"input_ids": rows[s %% len(rows)], "labels": [t if m else -100 for t, m in zip(rows[s %% len(rows)], masks[s %% len(rows)])]} for s in range(steps)])
trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(hf_dir),
                     peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=%s, task_type="CAUSAL_LM"), callbacks=[Clock()])
trainer.train()
print("RESULT " + json.dumps({"times": times, "tokens": [len(rows[s %% len(rows)]) for s in range(steps)], "bf16": bool(config.bf16)}))
""" % TARGETS


def build_run(out: Path, scale: str, config_overrides: dict[str, object] | None = None) -> None:
    """A training run's checkpoint (bfloat16, random weights) of the base, and its HF export;
    ``config_overrides`` (another bench's model shape) replace the scale's."""
    import torch
    import yaml
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.utils.structured import ValueConverter

    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import model_config, model_family, resolver
    from lmtune.catalog.specs import ModelSpec, resolve_tokenizer

    spec = ModelSpec(name="llama3_2_1b", family="llama", arch="llama3_2_1b", config=config_overrides if config_overrides is not None else (SMOKE if scale == "smoke" else {}), checkpoint=None, source="bench")
    config = model_config(spec)
    model = model_family("llama").create_new_model(config, create_fake_gangs(CPU), torch.bfloat16, True, False).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    state = {}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name == "final_proj.weight":
                continue  # tied
            std = 1.0 if name.endswith("norm.weight") else 0.02
            t.copy_(torch.randn(t.shape, generator=gen).mul_(std) + (1.0 - std if name.endswith("norm.weight") else 0.0))
            state[name] = t.detach()
    checkpoints = out / "checkpoints"
    shard = checkpoints / "step_1/model/pp_00/tp_00"
    shard.mkdir(parents=True)
    torch.save(state, shard / "sdp_00.pt")
    del model, state
    (checkpoints / "model.yaml").write_text(yaml.safe_dump({"name": "checkpoint", "model_family": "llama", "model_config": resolver().resolve(ValueConverter).unstructure(config)}))
    (checkpoints / "tokenizer.yaml").write_text(yaml.safe_dump(resolve_tokenizer(CardStore(), "tiny_tokenizer").as_card()))
    result = subprocess.run([sys.executable, "-m", "lmtune", "write_hf_config", str(checkpoints)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def write_data(path: Path, count: int, response_share: float) -> tuple[list[list[int]], list[list[bool]]]:
    """Records that each encode to 500-512 tokens, ``response_share`` of their words in the
    response (0: a one-number answer, " #### 42"); returns their token ids and loss masks."""
    import random

    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import load_tokenizer
    from lmtune.catalog.specs import resolve_tokenizer
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import Record

    spec = resolve_tokenizer(CardStore(), "tiny_tokenizer")
    encoder = ExampleEncoder(load_tokenizer(spec), spec.hf_dir)
    words = "the quick brown fox jumps over a lazy dog she sold clips to friends in april and may how many".split()
    rnd = random.Random(0)

    def record(drawn: list[str]) -> Record:
        split = len(drawn) - round(len(drawn) * response_share)
        return Record(file=Path("bench"), line=0, src=" ".join(drawn[:split]), tgt=" " + " ".join(drawn[split:]) if response_share > 0 else " #### 42")

    records, rows, masks = [], [], []
    while len(records) < count:
        drawn = [rnd.choice(words) for _ in range(40)]
        while True:
            more = drawn + [rnd.choice(words) for _ in range(8)]
            if len(encoder.encode(record(more)).tokens) > SEQ_LEN:
                break
            drawn = more
        example = encoder.encode(record(drawn))
        records.append({"src": record(drawn).src, "tgt": record(drawn).tgt})
        rows.append([int(i) for i in example.tokens])
        masks.append([bool(m) for m in example.target_mask])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return rows, masks


# Runs a command and reports the peak RSS of its whole process tree's largest process: a fresh
# wrapper per contender, so RUSAGE_CHILDREN holds that contender alone.
MEASURE = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print(f'MAXRSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); sys.exit(r.returncode)"


def measured(cmd: list[str], env: dict[str, str], name: str) -> tuple[str, float]:
    """Runs ``cmd``; returns its stdout and its peak RSS in GiB."""
    result = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    kb = int(next(line for line in result.stderr.splitlines() if line.startswith("MAXRSS_KB "))[10:])
    return result.stdout, kb / 2**20


def steady(times: list[float], tokens: list[int]) -> float:
    return sum(tokens[1:]) / sum(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scale", choices=["1b", "smoke"], default="1b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--response-share", type=float, default=0.5, help="share of each record's words in the response (0: a one-number answer)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--trl-venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmtune/lora-bench-venv",
                        help="side venv for TRL, layered over this one (built on first use)")
    every = [*LMTUNE_RUNS, *PEFT_RUNS, *TRL_RUNS]
    parser.add_argument("--only", default="", help="';'-separated contender names (default: all): " + "; ".join(every))
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(";") if n.strip()] or every
    unknown = [n for n in chosen if n not in every]
    if unknown:
        parser.error(f"--only: unknown contender(s) {'; '.join(unknown)}; the contenders: {'; '.join(every)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="lora_bench_") as tmp:
        root = Path(tmp)
        build_run(root / "base", args.scale)
        rows, masks = write_data(root / "data.jsonl", args.steps, args.response_share)
        response = sum(map(sum, masks)) / sum(map(len, masks))
        results = []
        sys.path.insert(0, str(REPO / "bench"))
        from side_venv import hf_venv

        trl_python, trl_line, trl_reason = hf_venv(args.trl_venv, want_trl=True)
        print(f"lora_bench: {trl_line}", file=sys.stderr)
        before = matmul_rates(args.threads)
        from lmtune.precision import choose_precision

        auto = choose_precision("auto", "cpu", SMOKE["model_dim"] if args.scale == "smoke" else 2048, warn=False).dtype
        for name in chosen:
            if name in TRL_RUNS and (trl_python is None or trl_reason):
                results.append((name, None, None, [], None, trl_reason or trl_line, ""))
                continue
            hf_dir = str(root / "base/checkpoints/step_1/hf")
            if name in LMTUNE_RUNS:
                cmd = [sys.executable, "-m", "lmtune", "instruction_finetune", str(root / f"lmtune{len(results)}"), "--config",
                       f"resume_checkpoint_dir={root / 'base/checkpoints'}", "model=last_checkpoint", f"dataset={root / 'data.jsonl'}",
                       "lora.rank=16", "lora.alpha=32", "lora.targets=all_linear", f"max_seq_len={SEQ_LEN}", f"max_num_tokens={SEQ_LEN}",
                       f"max_num_steps={args.steps}", "learning_rate=1e-4", "checkpoint_every_n_steps=100000",
                       "publish_metrics_every_n_steps=1", "tensorboard=false", "max_grad_norm=null", *LMTUNE_RUNS[name]]
                precision = "float32" if FP32 in LMTUNE_RUNS[name] else auto  # what lmtune.precision picks for this width here
            elif name in PEFT_RUNS:
                cmd = [sys.executable, "-c", HF_CHILD, hf_dir, json.dumps(rows), json.dumps(masks), str(args.steps), "bf16" if PEFT_RUNS[name] else "fp32"]
                precision = "bfloat16" if PEFT_RUNS[name] else "float32"
            else:
                cmd = [str(trl_python), "-c", TRL_CHILD, hf_dir, json.dumps(rows), json.dumps(masks), str(args.steps), str(root / "trl"), json.dumps(TRL_RUNS[name])]
                precision = ""
            out, rss = measured(cmd, env, name)
            if name in LMTUNE_RUNS:
                metrics = [json.loads(line) for line in (root / f"lmtune{len(results)}" / "metrics/train.jsonl").read_text().splitlines()]
                times, tokens = [m["Lapse Time"] for m in metrics], [int(m["Number of Elements"]) for m in metrics]
            else:
                data = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                times, tokens = data["times"], data["tokens"]
                precision = precision or ("bfloat16" if data["bf16"] else "float32")
            results.append((name, steady(times, tokens), sum(times[1:]) / len(times[1:]), tokens, rss, "", precision))
        rates = best_rates(before, matmul_rates(args.threads))
        table = format_table(results, args, response) + "\n" + bound_lines(results, rates, args.scale, response)
        print(table)
        if args.record:
            with (REPO / "bench/RESULTS.md").open("a") as fp:
                fp.write("\n" + table + "\n")


def flops_per_token(scale: str, head_share: float = 1.0) -> float:
    """Forward + input-gradient FLOPs per token of the frozen matrix products (2 + 2 per weight),
    plus attention's score and value products (3 x 2 x 2 x layers x seq x dim / 2, causal); the
    tied LM head counts for the ``head_share`` of positions it runs on (1 for transformers, which
    projects every position; the response share for lmtune). The adapters' own products are
    under 1% at rank 16."""
    d, layers, ffn, vocab, kv = (256, 2, 1024, 512, 128) if scale == "smoke" else (2048, 16, 8192, 128256, 512)
    weights = layers * (2 * d * d + 2 * d * kv + 3 * d * ffn)
    attention = 3 * 2 * 2 * layers * SEQ_LEN * d / 2
    return 4 * (weights + head_share * vocab * d) + attention


def bound_lines(results, rates: dict[str, float], scale: str, response: float) -> str:  # type: ignore[no-untyped-def]
    full, lmtune = flops_per_token(scale), flops_per_token(scale, response)
    lines = ["", f"Matrix products here (2048x2048 torch.mm): float32 {rates['float32']:.0f}, bfloat16 {rates['bfloat16']:.0f} GFLOP/s. "
             f"The frozen products cost {full / 1e9:.2f} GFLOP per token with the LM head on every position (transformers), so such a trainer "
             f"can pass no more than {rates['float32'] * 1e9 / full:.1f} tokens/s in float32 ({rates['bfloat16'] * 1e9 / full:.1f} in bf16); lmtune runs the head "
             f"on the response tokens only ({response:.0%} of these rows): {lmtune / 1e9:.2f} GFLOP per token. "
             "Each contender's share of its own bound (MFU against the matmul rate of the precision it computes in):"]
    for name, tok_s, *_, precision in results:
        if tok_s is not None:
            lines.append(f"- {name} ({precision}): {tok_s * (lmtune if name in LMTUNE_RUNS else full) / (rates[precision] * 1e9):.0%}")
    done = {name: tok_s for name, tok_s, *_ in results if tok_s is not None}
    peers = {n: t for n, t in done.items() if n not in LMTUNE_RUNS}
    ours, fp32 = done.get("lmtune defaults (dtype=auto)"), done.get("lmtune float32")
    if ours and fp32:
        lines.append(f"- lmtune defaults / lmtune float32: {ours / fp32:.2f}x")
    if ours and peers:
        best = max(peers, key=peers.__getitem__)
        lines.append(f"- lmtune defaults / the fastest peer ({best}): {ours / peers[best]:.2f}x (target >= 1.5x on a CPU with AMX-BF16)")
    return "\n".join(lines)


def format_table(results, args, response: float) -> str:  # type: ignore[no-untyped-def]
    lines = [
        f"### lora_bench, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `bench/lora_bench.py --steps {args.steps} --scale {args.scale} --threads {args.threads} --response-share {args.response_share}`"
        f" (response tokens: {response:.0%} of each row)",
        f"- machine: {machine(args.threads)} (at the start)",
        "",
        "| contender | precision | steps timed | tokens/step | tokens/s (steady) | s/step | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rate, per_step, tokens, rss, note, precision in results:
        if rate is None:
            lines.append(f"| {name} | not run: {note} | | | | | |")
            continue
        lines.append(f"| {name} | {precision} | {len(tokens) - 1} | {sum(tokens[1:]) / (len(tokens) - 1):.0f} | {rate:.1f} | {per_step:.2f} | {rss:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
