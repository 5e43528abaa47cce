"""Peak memory and time of training with and without task evaluation during validation.

The same `lmtune instruction_finetune` run twice, each in its own process: validation on
loss only (`eval_task=none`), and with greedy generation scored as classification
(`eval_task=classification`) on `--eval-examples` validation prompts. Generation uses the
model being trained, so its peak RSS should differ from the loss-only run by the KV cache
and the batch of completions, not by a second copy of the weights. Each child's peak RSS
comes from the kernel (wait4's rusage of that child).

    .venv/bin/python bench/eval_memory_bench.py            # a 25M-weight Llama-3.2-style model, ~2 minutes on 2 cores
    .venv/bin/python bench/eval_memory_bench.py --record   # also inserts the table into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- eval_memory_bench rows -->"

MODEL_CARD = {
    "name": "bench_llama_25m",
    "model_family": "llama",
    "model_arch": "llama3_2_1b",
    "init": "random",
    "tokenizer_ref": "tiny_tokenizer",
    "model_config": {
        "model_dim": 512, "num_layers": 8, "num_attn_heads": 8, "num_key_value_heads": 4, "ffn_inner_dim": 1536,
        "vocab_size": 512, "pad_idx": 2, "tied_embeddings": True, "max_seq_len": 512,
    },
}  # fmt: skip


def write_data(root: Path, n_train: int, n_valid: int) -> None:
    rng = random.Random(0)

    def record() -> dict[str, str]:
        n = rng.randint(10, 9999)
        return {"src": f"Is {n} even? Answer yes or no.", "tgt": "yes" if n % 2 == 0 else "no"}

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(record()) + "\n" for _ in range(n_train)))
    (root / "valid.jsonl").write_text("".join(json.dumps(record()) + "\n" for _ in range(n_valid)))


def run(out: Path, data: Path, cards: Path, eval_task: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "lmtune", "instruction_finetune", str(out), "--config", "model=bench_llama_25m", f"dataset={data}",
        f"eval_task={eval_task}", f"max_num_steps={args.steps}", f"validate_every_n_steps={args.validate_every}",
        f"checkpoint_every_n_steps={args.steps}", f"max_eval_examples={args.eval_examples}", "eval_max_gen_len=8",
        "max_num_tokens=4096", "max_seq_len=512", "learning_rate=3e-4", "tensorboard=false",
    ]  # fmt: skip
    env = {**os.environ, "LMTUNE_USER_ASSET_DIR": str(cards), "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{eval_task}.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if status != 0:
        raise SystemExit(f"{eval_task}: lmtune failed (status {status}); see {out.parent / f'{eval_task}.log'}")
    rows = [json.loads(line) for line in (out / "metrics/valid.jsonl").read_text().splitlines()]
    return {
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,  # Linux reports KiB
        "wall_s": wall,
        "valid_s": sum(r["Lapse Time"] for r in rows),  # each validation's own duration
        "validations": len(rows),
        "accuracy": rows[-1].get("Accuracy", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmtune-eval-memory-bench"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--validate-every", type=int, default=10)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    cards, data = args.work / "cards", args.work / "data"
    cards.mkdir(parents=True)
    (cards / "bench.yaml").write_text(yaml.safe_dump(MODEL_CARD, sort_keys=False))
    write_data(data, 2000, args.eval_examples)
    results = {task: run(args.work / task / "out", data, cards, task, args) for task in ("none", "classification")}

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={args.threads}"
    lines = [
        "| date | commit | machine | validation | peak RSS (GiB) | validation time, all (s) | wall time (s) | last accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, r in results.items():
        what = "loss only (eval_task=none)" if task == "none" else f"loss + greedy classification on {args.eval_examples} prompts"
        acc = "-" if task == "none" else f"{r['accuracy']:.3f}"
        lines.append(f"| {datetime.now():%Y-%m-%d} | {commit} | {machine} | {what} | {r['peak_rss_gib']:.3f} | {r['valid_s']:.1f} | {r['wall_s']:.1f} | {acc} |")
    ratio = results["classification"]["peak_rss_gib"] / results["none"]["peak_rss_gib"]
    lines.append("")
    lines.append(f"Peak RSS with task evaluation / without: {ratio:.3f} ({args.steps} steps, {results['none']['validations']} validations).")
    table = "\n".join(lines)
    print(table)
    if args.record:
        path = ROOT / "bench/RESULTS.md"
        text = path.read_text()
        if MARKER not in text:
            raise SystemExit(f"{path} has no '{MARKER}' line to insert the rows after.")
        path.write_text(text.replace(MARKER, f"{MARKER}\n\n{table}\n", 1))


if __name__ == "__main__":
    main()
