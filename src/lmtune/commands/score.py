"""``lmtune score PREDICTIONS.jsonl --task ...``: score an existing generations file.

Each line needs ``completion`` and ``reference`` (as ``lmtune generate`` writes); for
``--task qa`` a line's ``answers`` (a list, or SQuAD's ``{"text": [...]}``) are its references.
Scores go to ``scores.json`` beside the predictions (or ``--output``), each with a 95%
bootstrap interval, with the confusion matrix also drawn as a PNG for classification.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmtune.errors import UserError
from lmtune.score.bootstrap import RESAMPLES, SEED
from lmtune.score.tasks import TASKS

SUMMARY = "score an existing predictions JSONL (gsm8k, classification, exact_match, qa)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", metavar="PREDICTIONS.jsonl", type=Path, help="lines with 'completion' and 'reference', e.g. OUT/generations.jsonl")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--labels", metavar="A,B,C", help="class labels for --task classification; default: those the references name")
    parser.add_argument("--output", metavar="SCORES.json", type=Path, help="default: scores.json beside the predictions")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, metavar="N", help=f"bootstrap resamples for the 95%% intervals (default {RESAMPLES}; 0: none)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the bootstrap resamples (default {SEED})")


def run(args: argparse.Namespace) -> None:
    from lmtune.score.scores_file import read_predictions, save_scores
    from lmtune.score.tasks import check_references, score

    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    if args.resamples < 0:
        raise UserError(f"--resamples must be 0 (no intervals) or more, got {args.resamples}.")
    rows = read_predictions(args.predictions)
    references = [row.reference_for(args.task) for row in rows]
    labels = check_references(args.task, [(row.where, ref) for row, ref in zip(rows, references)], labels)
    scores = score(args.task, [(row.completion, ref) for row, ref in zip(rows, references)], labels, resamples=args.resamples, seed=args.seed)  # type: ignore[misc]
    save_scores(args.output or args.predictions.parent / "scores.json", scores)
