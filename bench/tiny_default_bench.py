"""Time to first step and steps/s of the built-in tiny default, as a user runs it.

    .venv/bin/python bench/tiny_default_bench.py [--steps 600]

Runs `lmtune instruction_finetune` in a fresh process on the tiny_gsm8k preset and reads the
step timestamps fairseq2 writes to OUT/metrics/train.jsonl. Prints one markdown row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = dt.datetime.now(dt.timezone.utc)
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "lmtune", "instruction_finetune", str(out), "--config-file", "tiny_gsm8k",
             "--config", f"max_num_steps={args.steps}", "publish_metrics_every_n_steps=1", f"checkpoint_every_n_steps={args.steps}"],
            check=True, capture_output=True, env={**os.environ},
        )
        total = time.monotonic() - t0
        rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
    times = [dt.datetime.fromisoformat(r["Time"]) for r in rows]
    first_step = (times[0] - start).total_seconds()
    steady = (len(times) - 11) / (times[-1] - times[10]).total_seconds()
    tokens = sum(r["Number of Elements"] for r in rows[10:]) / (times[-1] - times[10]).total_seconds()
    print("| machine | steps | time to first step (s) | steps/s (after step 10) | tokens/s | wall time (s) | final loss |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {platform.machine()} {os.cpu_count()} cores | {args.steps} | {first_step:.1f} | {steady:.1f} | {tokens:,.0f} | {total:.1f} | {rows[-1]['NLL Loss']:.3f} |")


if __name__ == "__main__":
    main()
