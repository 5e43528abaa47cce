"""`lmtune pretrain` on a corpus and on one 10x larger: the same peak RSS and tokens/s?

    .venv/bin/python bench/pretrain_scale_bench.py [--mb 20] [--factor 10] [--steps 60]

The reader streams: it tokenizes documents as it reaches them and never holds the corpus,
so peak memory and speed should not depend on the corpus size. Two synthetic plain-text
corpora (`--mb` and `--factor` x `--mb` megabytes of JSONL documents, generated
deterministically into a temp dir) are each pretrained for `--steps` steps from random
weights (tiny_llama's architecture, rows of 256 tokens, batches of 8 rows), each run in a
fresh process. Peak RSS is the kernel's for that process (ru_maxrss of the child);
tokens/s is the mean of fairseq2's Elements per Second after the first published window.
Prints a markdown table and the two ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a one two red blue green cat dog bird house tree river stone light night day sun moon star "
         "runs sees takes gives finds makes over under near far quick slow old new big small").split()  # fmt: skip


def write_corpus(path: Path, megabytes: float, seed: int) -> int:
    """JSONL documents of 20-400 words until the file holds ``megabytes``; returns the document count."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    written = docs = 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400)))
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            written += len(line)
            docs += 1
    return docs


def run_child(out: Path, corpus: Path, valid: Path, steps: int) -> tuple[float, float]:
    """One pretraining run in a fresh process; (its peak RSS in GiB, its wall time in s)."""
    cmd = [
        sys.executable, "-m", "lmtune", "pretrain", str(out), "--config", "model=tiny_llama", "init=random",
        f"dataset={corpus}", f"valid_dataset={valid}", "max_seq_len=256", "batch_size=8", f"max_num_steps={steps}",
        "publish_metrics_every_n_steps=5", f"checkpoint_every_n_steps={steps}", "lr_scheduler.num_warmup_steps=5",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    wall = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"pretrain failed on {corpus}:\n{r.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest of any child so far: run the smaller corpus first.
    if peak <= before:
        print(f"note: the peak of this run did not exceed an earlier run's ({before / 2**20:.2f} GiB)", file=sys.stderr)
    return peak / 2**20, wall


def tokens_per_second(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["Elements per Second"] for r in rows[1:]]
    return sum(rates) / len(rates)


def measure_one(out: Path, corpus: Path, valid: Path, steps: int) -> None:
    """Child mode: runs one pretraining and prints its figures as JSON (so each corpus gets its own ru_maxrss)."""
    peak, wall = run_child(out, corpus, valid, steps)
    print(json.dumps({"peak_gib": peak, "wall_s": wall, "tokens_per_s": tokens_per_second(out)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--one", nargs=3, metavar=("OUT", "CORPUS", "VALID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure_one(Path(args.one[0]), Path(args.one[1]), Path(args.one[2]), args.steps)
        return
    start = dt.datetime.now(dt.timezone.utc)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        valid = root / "valid.jsonl"
        write_corpus(valid, 0.05, seed=99)
        for size in (args.mb, args.mb * args.factor):
            corpus = root / f"corpus_{size:g}mb.jsonl"
            docs = write_corpus(corpus, size, seed=1)
            r = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--one", str(root / f"out_{size:g}"), str(corpus), str(valid)],
                capture_output=True, text=True, check=True,
            )
            figures = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((size, docs, figures))
            corpus.unlink()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"### pretrain_scale_bench, {start:%Y-%m-%d %H:%M} UTC")
    print(f"\n- command: `bench/pretrain_scale_bench.py --mb {args.mb:g} --factor {args.factor} --steps {args.steps}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, git {commit}\n")
    print("| corpus | documents | peak RSS (GiB) | tokens/s | wall (s) |")
    print("|---|---|---|---|---|")
    for size, docs, f in rows:
        print(f"| {size:g} MB | {docs:,} | {f['peak_gib']:.3f} | {f['tokens_per_s']:,.0f} | {f['wall_s']:.1f} |")
    (_, _, small), (_, _, large) = rows
    print(f"\nlarge / small: peak RSS {large['peak_gib'] / small['peak_gib']:.3f}x (target within 10%), "
          f"tokens/s {large['tokens_per_s'] / small['tokens_per_s']:.3f}x (target within 10%)")  # fmt: skip


if __name__ == "__main__":
    main()
