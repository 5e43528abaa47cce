"""DPO's peak memory against SFT's on the same model and the same tokens.

    .venv/bin/python bench/preference_memory_bench.py [--steps 4] [--pairs 64] [--threads 2] [--record]

DPO never holds its reference model while training: the reference log-probs are computed once
and cached (``lmtune.preference.reference``), so a DPO step is one forward and backward over the
chosen and rejected sequences, as an SFT step over the same sequences is. This bench checks that
claim by measurement. One model (a randomly initialised Llama of the shape below, stored as a
training run's checkpoint with bench/lora_bench.py's ``build_run``) and one set of pairs:

- SFT: ``lmtune instruction_finetune`` on every pair's chosen and rejected sequence as two
  examples (``{"src": prompt, "tgt": response}``), packed into batches of ``max_num_tokens``;
- DPO: ``lmtune preference_finetune`` on the pairs, batches of whole pairs of ``max_num_tokens``,
  its reference log-probs already in the cache (a one-step DPO run computed them first; the
  measured run reads that file and writes none, which the bench checks).

Each run is its own process; its peak RSS is the kernel's (getrusage of a fresh wrapper,
bench/lora_bench.py's ``measured``). Both train float32 with AdamW on the same checkpoint and
the same tokens per step (the table shows the tokens each step held). What bounds the figures:
the weights, gradients and AdamW's two moments (16 bytes per parameter, the same in both), the
process itself (torch and fairseq2 imported), and the activations of one batch, which is where
the two could differ: SFT projects only its response positions to the vocabulary
(``lmtune.models.target_loss``), and so does DPO since ``lmtune.models.row_logps`` (before it,
DPO projected the whole batch and then picked the response rows).
The reference model is loaded once before the policy (its fingerprint), and freed before it.
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

# A small Llama with a real vocabulary size, so the LM head's activations weigh as in a real model.
MODEL = {"model_dim": 512, "num_layers": 4, "num_attn_heads": 8, "num_key_value_heads": 2, "ffn_inner_dim": 1536,
         "vocab_size": 32768, "tied_embeddings": True, "pad_idx": 2, "max_seq_len": 1024}  # fmt: skip
MAX_SEQ_LEN, MAX_NUM_TOKENS = 512, 2048
WORDS = "the quick brown fox jumps over a lazy dog she sold clips to friends in april and may how many".split()


def write_pairs(root: Path, count: int) -> tuple[Path, Path]:
    """``count`` pairs (prompt 40 words, responses 40-60: about 300 tokens a sequence) as preference records, and the
    same chosen and rejected sequences as SFT records."""
    rnd = random.Random(0)
    pairs, sft = [], []
    for _ in range(count):
        prompt = " ".join(rnd.choice(WORDS) for _ in range(40))
        chosen, rejected = (" " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(40, 60))) for _ in range(2))
        pairs.append({"src": prompt, "tgt_chosen": chosen, "tgt_rejected": rejected})
        sft += [{"src": prompt, "tgt": chosen}, {"src": prompt, "tgt": rejected}]
    (root / "pairs").mkdir()
    (root / "pairs/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    return root / "pairs/train.jsonl", root / "sft.jsonl"


def command(verb: str, out: Path, base: Path, data: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "lmtune", verb, str(out), "--config", f"resume_checkpoint_dir={base}", "model=last_checkpoint",
            f"dataset={data}", f"max_seq_len={MAX_SEQ_LEN}", f"max_num_tokens={MAX_NUM_TOKENS}", f"max_num_steps={steps}",
            "dtype=float32", "learning_rate=1e-5", "checkpoint_every_n_steps=100000", "publish_metrics_every_n_steps=1",
            "tensorboard=false", "max_grad_norm=null", "seed=2"]  # fmt: skip


def main() -> None:
    from lora_bench import build_run, measured

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="preference_memory_bench_") as tmp:
        root = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "LMTUNE_CACHE_DIR": str(root / "cache")}
        build_run(root / "base", "smoke", MODEL)
        base = root / "base/checkpoints"
        pairs, sft = write_pairs(root, args.pairs)
        warm = subprocess.run(command("preference_finetune", root / "warm", base, pairs, 1), env=env, capture_output=True, text=True)
        if warm.returncode != 0 or "lmtune: computing the reference log-probs" not in warm.stderr or "skipped" in warm.stderr:
            raise SystemExit(f"the DPO run that computes the reference log-probs failed or skipped pairs:\n{warm.stderr[-3000:]}")
        cached = {f: f.stat().st_mtime_ns for f in (root / "cache").rglob("reference_logps.npy")}
        results = []
        for name, verb, data in (("SFT (instruction_finetune)", "instruction_finetune", sft), ("DPO (preference_finetune, cached reference)", "preference_finetune", pairs)):
            out = root / verb
            _, rss = measured(command(verb, out, base, data, args.steps), env, name)
            metrics = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
            # Response tokens per step (the loss tokens): SFT's and DPO's metrics both count them.
            tokens = [int(m["Number of Target Elements"]) for m in metrics]
            results.append((name, tokens, rss))
        # The measured DPO run read the warm run's file and wrote none.
        reused = bool(cached) and {f: f.stat().st_mtime_ns for f in (root / "cache").rglob("reference_logps.npy")} == cached
        table = format_table(results, args, reused)
        print(table)
        if args.record:
            with (REPO / "bench/RESULTS.md").open("a") as fp:
                fp.write("\n" + table + "\n")


def parameters() -> int:
    d, layers, ffn, vocab = MODEL["model_dim"], MODEL["num_layers"], MODEL["ffn_inner_dim"], MODEL["vocab_size"]
    kv = d // MODEL["num_attn_heads"] * MODEL["num_key_value_heads"]  # type: ignore[operator]
    return layers * (2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d) + vocab * d + d  # type: ignore[operator]


def format_table(results, args, reused: bool) -> str:  # type: ignore[no-untyped-def]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    n = parameters()
    lines = [
        f"### preference_memory_bench, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `bench/preference_memory_bench.py --steps {args.steps} --pairs {args.pairs} --threads {args.threads}`",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} thread(s), git {commit}; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        f"- model: Llama {MODEL['num_layers']} layers x {MODEL['model_dim']}, vocabulary {MODEL['vocab_size']:,} (tied), {n / 1e6:.1f} M parameters: "
        f"weights, gradients and AdamW's moments {16 * n / 2**30:.2f} GiB in float32; max_seq_len {MAX_SEQ_LEN}, max_num_tokens {MAX_NUM_TOKENS}",
        f"- DPO's reference log-probs read from the cache: {'yes' if reused else 'NOT confirmed'}",
        "",
        "| run | steps | response tokens per step | peak RSS (GiB) |",
        "|---|---|---|---|",
    ]
    for name, tokens, rss in results:
        lines.append(f"| {name} | {len(tokens)} | {', '.join(map(str, tokens))} | {rss:.2f} |")
    (_, _, sft), (_, _, dpo) = results
    lines += ["", f"DPO / SFT peak RSS: {dpo / sft:.2f}x ({(dpo - sft) * 1024:+.0f} MiB)."]
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
