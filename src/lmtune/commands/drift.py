"""``lmtune drift OUT``: how far a run's representations moved from the model before training.

OUT holds the hidden states a run saved with ``representations.every_n_steps=N``
(OUT/representations/). For each saved layer and step this prints linear CKA and mean cosine
similarity against step 0 (``lmtune.report.drift``), and writes OUT/drift.json and OUT/plots/drift.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmtune.errors import UserError

SUMMARY = "representation drift of a run: linear CKA and cosine similarity of each layer against the model before training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Representation drift of a run trained with representations.every_n_steps=N: for each saved layer\n"
        "(0: the embedding output, i: decoder layer i's output) and saved step, linear CKA and the mean cosine\n"
        "similarity of the pooled hidden states against step 0 (the model before training), over the same\n"
        "validation examples. Printed, and written to OUT/drift.json and OUT/plots/drift.png."
    )
    parser.epilog = "example:\n  lmtune instruction_finetune OUT --config ... representations.every_n_steps=100\n  lmtune drift OUT"
    parser.add_argument("run_dir", metavar="OUT", type=Path, help="a run directory with OUT/representations/")


def run(args: argparse.Namespace) -> None:
    from lmtune.report.drift import compute_drift, format_drift, write_drift

    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir} is not a directory; give the OUT of an instruction_finetune run.")
    drift, index = compute_drift(args.run_dir)
    print(format_drift(drift), end="")
    json_path, plot = write_drift(args.run_dir, drift, index)
    print(f"\nwrote {json_path} and {plot}")
