"""``lmtune compare GEN_A GEN_B``: two generation runs on the same prompts, score by score (lmtune.score.run_comparison).

Prints B - A for every score of the task with a paired bootstrap 95% interval and a p-value
(McNemar's exact test for accuracy), and the prompts the runs answer differently; writes
everything to ``compare.json`` in GEN_B (or ``--output DIR``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmtune.errors import UserError
from lmtune.score.bootstrap import RESAMPLES, SEED
from lmtune.score.tasks import TASKS

SUMMARY = "compare two generation runs on the same prompts: score differences with paired intervals and p-values"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "example:\n  lmtune compare GEN_BASE GEN_TUNED          # -> GEN_TUNED/compare.json"
    parser.add_argument("run_a", metavar="GEN_A", type=Path, help="a directory written by `lmtune generate` (generations.jsonl, scores.json): the baseline")
    parser.add_argument("run_b", metavar="GEN_B", type=Path, help="the same for the run compared with it; differences are B - A")
    parser.add_argument("--task", choices=TASKS, help="default: the task in the runs' scores.json")
    parser.add_argument("--labels", metavar="A,B,C", help="class labels for classification; default: those in scores.json, else those the references name")
    parser.add_argument("--output", dest="compare_dir", metavar="DIR", type=Path, help="where compare.json goes (default: GEN_B)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, metavar="N", help=f"paired bootstrap resamples (default {RESAMPLES})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the resamples (default {SEED})")


def run(args: argparse.Namespace) -> None:
    import json

    from lmtune.files import atomic_write_text
    from lmtune.score.run_comparison import (
        COMPARE,
        choose_task,
        compare_runs,
        format_comparison,
        read_generation_run,
    )

    if args.resamples < 1:
        raise UserError(f"--resamples must be at least 1, got {args.resamples}.")
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    a, b = read_generation_run(args.run_a), read_generation_run(args.run_b)
    task, labels = choose_task(a, b, args.task, labels)
    result = compare_runs(a, b, task, labels, resamples=args.resamples, seed=args.seed)
    out_dir = args.compare_dir or args.run_b
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file; give a directory for compare.json.")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / COMPARE, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(format_comparison(result))
    print(f"wrote {out_dir / COMPARE}")
