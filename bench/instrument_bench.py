"""What the instruments cost: tokens/s of the tiny default before this feature (a checkout of an
earlier commit) and after, with everything off, and with grad_stats=true; interleaved repeats.

    git worktree add /tmp/before a18dcbf
    OMP_NUM_THREADS=1 .venv/bin/python bench/instrument_bench.py --before /tmp/before [--repeats 3] [--steps 60]

Each run is `lmtune instruction_finetune` in a fresh process on the tiny_gsm8k preset; "before"
runs the other checkout's code with this venv (its editable finder pointed at that tree). The
figure per run is fairseq2's mean Elements per Second over the published windows after the first.
On a shared machine the spread is the load, so the runs alternate and the spread is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
import subprocess

HERE = Path(__file__).resolve().parent.parent
LAUNCH = """
import runpy, sys
import __editable___lmtune_0_1_0_finder as finder
here, root = sys.argv.pop(1), sys.argv.pop(1)
for key, path in list(finder.MAPPING.items()):
    finder.MAPPING[key] = path.replace(here, root)
sys.argv[0] = "lmtune"
runpy.run_module("lmtune", run_name="__main__")
"""


def tokens_per_second(root: Path, out: Path, steps: int, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    args = ["instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", f"max_num_steps={steps}",
            "publish_metrics_every_n_steps=10", f"checkpoint_every_n_steps={steps}", "tensorboard=false", *extra]  # fmt: skip
    r = subprocess.run([sys.executable, "-c", LAUNCH, str(HERE), str(root), *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
    return statistics.fmean(row["Elements per Second"] for row in rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    variants = {"before": (args.before.resolve(), []), "after, off": (HERE, []), "after, grad_stats=true": (HERE, ["grad_stats=true"])}
    results: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (root, extra) in variants.items():
                results[name].append(tokens_per_second(root, Path(tmp) / "out", args.steps, extra))
            print({name: [round(v) for v in values] for name, values in results.items()}, flush=True)
    for name, values in results.items():
        print(f"| {name} | {statistics.fmean(values):,.0f} | {min(values):,.0f} - {max(values):,.0f} | {len(values)} |")


if __name__ == "__main__":
    main()
