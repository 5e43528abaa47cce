"""``lmtune instruction_finetune OUT``: fine-tune on prompt/response or chat JSONL; rerun on the same OUT to resume."""

from __future__ import annotations

import argparse

from lmtune.commands.common import (
    add_config_arguments,
    add_out_argument,
    add_verbose_argument,
    load_options,
)

SUMMARY = "fine-tune on prompt/response or chat JSONL; rerun on the same OUT to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmtune.options.finetune import FinetuneOptions
    from lmtune.options.keys import describe_keys

    parser.description = "Fine-tune a model on instruction data with fairseq2's trainer. Rerunning the same command on the same OUT resumes from its last checkpoint."
    parser.epilog = "config keys (defaults):\n" + describe_keys(FinetuneOptions)
    add_out_argument(parser)
    add_config_arguments(parser, "optimizer.weight_decay=0.1")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> None:
    from lmtune.options.finetune import FinetuneOptions

    options = load_options(FinetuneOptions, args)
    if options is None:
        return
    from lmtune.runs.finetune import run_instruction_finetune
    from lmtune.training.console import RunConsole

    run_instruction_finetune(args.output_dir, options, RunConsole(verbose=args.verbose))
