"""``lmtune generate OUT``: completions for a dataset's prompts, then their score (lmtune.generate.run)."""

from __future__ import annotations

import argparse

from lmtune.commands.common import add_config_arguments, add_out_argument, load_options

SUMMARY = "generate completions for a dataset's prompts and score them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmtune.options.generate import GenerateOptions
    from lmtune.options.keys import describe_keys

    parser.description = "Generate completions for the prompts of a dataset (its test split) and score them. Writes OUT/generations.jsonl and OUT/scores.json."
    parser.epilog = "example:\n  lmtune generate OUT --config checkpoint_dir=RUN/checkpoints model=last_checkpoint dataset=tiny_gsm8k\n\nconfig keys (defaults):\n" + describe_keys(GenerateOptions)
    add_out_argument(parser)
    add_config_arguments(parser, "generator_config.temperature=0.6")


def run(args: argparse.Namespace) -> None:
    from lmtune.options.generate import GenerateOptions

    options = load_options(GenerateOptions, args)
    if options is None:
        return
    from lmtune.generate.run import run_generate

    run_generate(args.output_dir, options)
