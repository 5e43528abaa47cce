"""Full DPO, lmtune against TRL's DPOTrainer: tokens/s and peak RSS, side by side in one run.

    .venv/bin/python bench/dpo_bench.py [--steps 5] [--pairs-per-step 4] [--threads 2] [--record]

One model, one set of pairs. The model is a randomly initialised Llama (bench/preference_memory_bench.py's
shape: 4 layers x 512, a 32,768-entry tied vocabulary) stored as a training run's checkpoint and
exported to a Hugging Face directory (bench/lora_bench.py's ``build_run``): lmtune trains the
checkpoint, TRL the export, the same weights. The pairs are preference records
(``{"src","tgt_chosen","tgt_rejected"}`` for lmtune, ``{"prompt","chosen","rejected"}`` for TRL,
the same strings), each sequence about 250 tokens. Every contender trains float32 on CPU with AdamW,
beta 0.1, the sigmoid loss, about ``--pairs-per-step`` pairs a step:

- lmtune: ``lmtune preference_finetune`` at its defaults but ``dtype=float32``; its default is the
  precomputed reference (every rank its share of the reference log-probs before step 1, cached; no
  reference model while training). Batches are whole pairs packed into ``max_num_tokens`` (set to
  hold the pairs a step). ``dtype=float32`` because lmtune's default, ``auto``, computes in bf16
  autocast on a CPU with AVX512-BF16 or AMX for a model this wide (lmtune.precision), which the runs
  recorded before 2026-12-06 did unawares; ``--lmtune-auto`` adds that row too.
- TRL, its defaults: ``DPOConfig()`` with ``precompute_ref_log_probs=False`` (a second, frozen copy
  of the model scores every batch) and ``gradient_checkpointing=True``, but ``bf16=False``, so that
  both train float32 (matched precision).
- TRL, precomputed: the same with ``precompute_ref_log_probs=True`` (the reference log-probs of the
  whole data set computed before training, the policy alone in memory) and
  ``gradient_checkpointing=False``, as lmtune: the like-for-like row, which the targets compare with.
- ``--bf16``: each tool at its own precision default as well: lmtune ``dtype=auto`` (bf16 autocast
  on a CPU with AVX512-BF16 or AMX) and TRL ``bf16=True`` (DPOConfig's default), both TRL rows again.

Tokens/s: every token of the chosen and rejected sequences (prompt included, padding not) over the
steps after the first, each step timed (fairseq2's Lapse Time; a Trainer callback for TRL); lmtune's
tokens per step are its pairs per step times the pairs' mean length, TRL's its attention mask's sum.
Peak RSS is the kernel's for each contender's own process (bench/lora_bench.py's ``measured``). TRL
runs in a side venv layered over lmtune's (bench/side_venv.py, as bench/lora_bench.py does), since a
plain ``pip install trl`` upgrades transformers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

WORDS = "the quick brown fox jumps over a lazy dog she sold clips to friends in april and may how many".split()
MAX_SEQ_LEN = 512

TRL_CHILD = r"""
import json, sys, time, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
hf_dir, data_file, steps, batch, out, precompute, bf16 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1", sys.argv[7] == "1"
times, tokens, begin = [], [], [0.0]
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        begin[0] = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        times.append(time.perf_counter() - begin[0])
class Counted(DPOTrainer):
    def training_step(self, model, inputs, *args, **kwargs):
        tokens.append(int(inputs["attention_mask"].sum()))
        return super().training_step(model, inputs, *args, **kwargs)
records = [json.loads(line) for line in open(data_file)]
data = Dataset.from_list([{"prompt": r["src"], "chosen": r["tgt_chosen"], "rejected": r["tgt_rejected"]} for r in records])
tokenizer = AutoTokenizer.from_pretrained(hf_dir)
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
config = DPOConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-6,
                   beta=0.1, lr_scheduler_type="constant", use_cpu=True, save_strategy="no", report_to="none", logging_strategy="no",
                   disable_tqdm=True, dataloader_pin_memory=False, bf16=bf16, precompute_ref_log_probs=precompute,
                   **({"gradient_checkpointing": False} if precompute else {}))
trainer = Counted(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
t0 = time.perf_counter()
trainer.train()
print("RESULT " + json.dumps({"times": times, "tokens": tokens, "wall": time.perf_counter() - t0, "ref_model": trainer.ref_model is not None}))
"""


def write_pairs(path: Path, count: int) -> list[int]:
    """``count`` pairs, prompt 30 words and responses 40-50 (about 250 tokens a sequence); returns each pair's length in lmtune's tokens."""
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_tokenizer
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import Record
    from lmtune.models.loading import load_tokenizer

    spec = resolve_tokenizer(CardStore(), "tiny_tokenizer")
    encoder = ExampleEncoder(load_tokenizer(spec), spec.hf_dir)
    rnd = random.Random(0)
    records, lengths = [], []
    for _ in range(count):
        prompt = " ".join(rnd.choice(WORDS) for _ in range(30))
        chosen, rejected = (" " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(40, 50))) for _ in range(2))
        records.append({"src": prompt, "tgt_chosen": chosen, "tgt_rejected": rejected})
        lengths.append(sum(len(encoder.encode(Record(file=path, line=0, src=prompt, tgt=t)).tokens) for t in (chosen, rejected)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return lengths


def steady(times: list[float], tokens: list[float]) -> float:
    return sum(tokens[1:]) / sum(times[1:])


def main() -> None:
    from lora_bench import build_run, measured
    from preference_memory_bench import MODEL
    from side_venv import hf_venv

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pairs-per-step", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--lmtune-auto", action="store_true", help="also time lmtune at dtype=auto (bf16 autocast where the CPU has AVX512-BF16 or AMX)")
    parser.add_argument("--bf16", action="store_true", help="every tool at its own precision default too: lmtune dtype=auto, TRL bf16=True (DPOConfig's default)")
    parser.add_argument("--trl-venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmtune/dpo-bench-venv",
                        help="side venv for TRL, layered over this one (built on first use)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
        root = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "LMTUNE_CACHE_DIR": str(root / "cache")}
        build_run(root / "base", "smoke", MODEL)
        lengths = write_pairs(root / "pairs/train.jsonl", args.steps * args.pairs_per_step)
        mean_pair = sum(lengths) / len(lengths)
        max_num_tokens = sum(sorted(lengths)[-args.pairs_per_step:])  # the longest pairs still fit: at least pairs_per_step a batch
        trl_python, trl_line, trl_reason = hf_venv(args.trl_venv, want_trl=True)
        print(f"dpo_bench: {trl_line}", file=sys.stderr)
        results = []
        for dtype in ("float32", "auto") if args.lmtune_auto or args.bf16 else ("float32",):
            lm_out = root / f"lmtune_{dtype}"
            cmd = [sys.executable, "-m", "lmtune", "preference_finetune", str(lm_out), "--config", f"resume_checkpoint_dir={root / 'base/checkpoints'}",
                   "model=last_checkpoint", f"dataset={root / 'pairs'}", f"max_seq_len={MAX_SEQ_LEN}", f"max_num_tokens={max_num_tokens}",
                   f"max_num_steps={args.steps}", "learning_rate=1e-6", "checkpoint_every_n_steps=100000", "publish_metrics_every_n_steps=1",
                   "tensorboard=false", "lr_scheduler.num_warmup_steps=0", f"dtype={dtype}"]  # fmt: skip
            out, rss = measured(cmd, env, "lmtune")
            metrics = [json.loads(line) for line in (lm_out / "metrics/train.jsonl").read_text().splitlines()]
            times, tokens = [m["Lapse Time"] for m in metrics], [m["Number of Examples"] * mean_pair for m in metrics]
            what = "float32" if dtype == "float32" else "dtype=auto: bf16 autocast where the CPU has AVX512-BF16 or AMX, lmtune.precision"
            results.append((f"lmtune preference_finetune (defaults: cached reference; {what})", steady(times, tokens), tokens, times, rss, ""))
        trl_rows = [("TRL DPOTrainer, defaults (reference model in memory, gradient checkpointing), bf16=False", False, False),
                    ("TRL DPOTrainer, precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=False", True, False)]
        if args.bf16:  # DPOConfig's own default is bf16=True (autocast), on CPU too
            trl_rows += [("TRL DPOTrainer, defaults (reference model in memory, gradient checkpointing), bf16=True", False, True),
                         ("TRL DPOTrainer, precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=True", True, True)]
        for name, precompute, bf16 in trl_rows:
            if trl_python is None or trl_reason:
                results.append((name, None, [], [], None, trl_reason or trl_line))
                continue
            cmd = [str(trl_python), "-c", TRL_CHILD, str(root / "base/checkpoints/step_1/hf"), str(root / "pairs/train.jsonl"), str(args.steps),
                   str(args.pairs_per_step), str(root / f"trl{int(precompute)}{int(bf16)}"), str(int(precompute)), str(int(bf16))]  # fmt: skip
            out, rss = measured(cmd, env, name)
            data = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            assert data["ref_model"] != precompute, data  # TRL kept a reference model exactly when it should
            results.append((name, steady(data["times"], data["tokens"]), data["tokens"], data["times"], rss, ""))
        table = format_table(results, args, trl_line, max_num_tokens, mean_pair)
        print(table)
        if args.record:
            with (REPO / "bench/RESULTS.md").open("a") as fp:
                fp.write("\n" + table + "\n")


def format_table(results, args, trl_line: str, max_num_tokens: int, mean_pair: float) -> str:  # type: ignore[no-untyped-def]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"### dpo_bench, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `bench/dpo_bench.py --steps {args.steps} --pairs-per-step {args.pairs_per_step} --threads {args.threads}{' --lmtune-auto' if args.lmtune_auto else ''}{' --bf16' if args.bf16 else ''}`",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} thread(s) per contender, git {commit}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        f"- pairs: {args.steps * args.pairs_per_step}, {mean_pair:.0f} tokens a pair on average (lmtune's encoding); lmtune max_num_tokens {max_num_tokens}; TRL batch {args.pairs_per_step} pairs",
        f"- {trl_line}",
        "",
        "| contender | steps timed | tokens/step | tokens/s (steady) | s/step | peak RSS (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rate, tokens, times, rss, note in results:
        if rate is None:
            lines.append(f"| {name} | not run: {note} | | | | |")
            continue
        lines.append(f"| {name} | {len(tokens) - 1} | {sum(tokens[1:]) / (len(tokens) - 1):.0f} | {rate:.1f} | {sum(times[1:]) / (len(times) - 1):.2f} | {rss:.2f} |")
    lmtune_rows = [r for r in results if r[0].startswith("lmtune")]  # float32 first, then dtype=auto if timed
    for name, rate, _, _, rss, _ in results:
        if rate is None or name.startswith("lmtune"):
            continue
        bf16 = name.endswith("bf16=True")
        lm = lmtune_rows[-1] if bf16 else lmtune_rows[0]  # like precision: TRL bf16 against lmtune's auto, float32 against float32
        what = "precompute_ref_log_probs=True" if "precompute" in name else "defaults"
        lines.append(f"\nlmtune ({'dtype=auto' if bf16 else 'float32'}) against TRL DPOTrainer, {what}, bf16={bf16}: "
                     f"{lm[1] / rate:.2f}x the tokens/s, {lm[4] / rss:.2f}x the peak RSS.")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name as the run header names it (lmtune.precision reads /proc/cpuinfo)."""
    from lmtune.precision import cpu_info

    try:
        name = cpu_info(Path("/proc/cpuinfo").read_text())[0]
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
