"""``lmtune demo OUT``: the built-in tiny default, end to end on CPU."""

from __future__ import annotations

import json
from pathlib import Path

from lmtune.cli import resolve_config_file
from lmtune.config import load_config
from lmtune.finetune import run_instruction_finetune
from lmtune.finetune_options import FinetuneOptions


def run_demo(out_dir: Path) -> None:
    options = load_config(FinetuneOptions, resolve_config_file("tiny_gsm8k"), [])
    train_dir = out_dir / "finetune"
    run_instruction_finetune(train_dir, options)
    losses = []
    with (train_dir / "metrics" / "train.jsonl").open() as fp:
        for line in fp:
            m = json.loads(line)
            losses.append((m["Step"], m["NLL Loss"]))
    print("\nlmtune demo: training loss (NLL per response token)")
    for step, loss in losses:
        print(f"  step {step:4d}  {loss:7.3f}  " + "#" * max(1, int(loss * 15)))
    print(f"\ncheckpoints: {train_dir / 'checkpoints'}")
