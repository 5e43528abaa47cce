"""``lmtune pretrain OUT``: train on plain text, from a card's weights or from scratch; rerun on the same OUT to resume."""

from __future__ import annotations

import argparse

from lmtune.commands.common import (
    add_config_arguments,
    add_out_argument,
    add_verbose_argument,
    load_options,
)

SUMMARY = "pretrain on plain text (.txt, .jsonl), from a card's weights or from scratch; rerun on the same OUT to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmtune.options.keys import describe_keys
    from lmtune.options.pretrain import PretrainOptions

    parser.description = (
        "Train a model on plain text with fairseq2's trainer: documents are tokenized on the fly, joined with EOS and "
        "cut into rows of max_seq_len tokens, each document attending only to itself. Rerunning the same command on "
        "the same OUT resumes from its last checkpoint, mid-stream."
    )
    parser.epilog = "config keys (defaults):\n" + describe_keys(PretrainOptions)
    add_out_argument(parser)
    add_config_arguments(parser, "lr_scheduler.num_warmup_steps=100")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> None:
    from lmtune.options.pretrain import PretrainOptions

    options = load_options(PretrainOptions, args)
    if options is None:
        return
    from lmtune.runs.pretrain import PretrainConsole, run_pretrain

    run_pretrain(args.output_dir, options, PretrainConsole(verbose=args.verbose))
