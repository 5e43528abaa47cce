"""``lmtune score PREDICTIONS.jsonl --task ...``: score an existing generations file.

Each line needs ``completion`` and ``reference`` (as ``lmtune generate`` writes).
Scores go to ``scores.json`` beside the predictions (or ``--output``), with the
confusion matrix also drawn as a PNG for classification.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmtune.score.tasks import TASKS

SUMMARY = "score an existing predictions JSONL (gsm8k, classification, exact_match)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", metavar="PREDICTIONS.jsonl", type=Path, help="lines with 'completion' and 'reference', e.g. OUT/generations.jsonl")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--labels", metavar="A,B,C", help="class labels for --task classification; default: those the references name")
    parser.add_argument("--output", metavar="SCORES.json", type=Path, help="default: scores.json beside the predictions")


def run(args: argparse.Namespace) -> None:
    from lmtune.score.scores_file import read_predictions, save_scores
    from lmtune.score.tasks import check_references, score

    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    rows = read_predictions(args.predictions)
    labels = check_references(args.task, [(where, ref) for where, _, ref in rows], labels)
    scores = score(args.task, [(c, ref) for _, c, ref in rows], labels)  # type: ignore[misc]
    save_scores(args.output or args.predictions.parent / "scores.json", scores)
