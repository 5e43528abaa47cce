"""``lmtune preference_finetune OUT``: DPO, SimPO, ORPO or CPO on preference pairs; rerun on the same OUT to resume."""

from __future__ import annotations

import argparse

from lmtune.commands.common import (
    add_config_arguments,
    add_out_argument,
    add_verbose_argument,
    load_options,
)

SUMMARY = "preference-tune (dpo, simpo, orpo, cpo) on chosen/rejected pairs; rerun on the same OUT to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmtune.options.keys import describe_keys
    from lmtune.options.preference import PreferenceOptions

    parser.description = (
        "Preference-tune a model (often an SFT run's checkpoint) on JSONL pairs {src, tgt_chosen, tgt_rejected} or {prompt, chosen, rejected} "
        "with fairseq2's trainer. dpo's reference log-probs are computed once before training and cached. Rerunning the same command on the same OUT resumes."
    )
    parser.epilog = "config keys (defaults):\n" + describe_keys(PreferenceOptions)
    add_out_argument(parser)
    add_config_arguments(parser, "criterion.beta=0.1")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> None:
    from lmtune.options.preference import PreferenceOptions

    options = load_options(PreferenceOptions, args)
    if options is None:
        return
    from lmtune.runs.preference import run_preference_finetune
    from lmtune.training.console import RunConsole

    run_preference_finetune(args.output_dir, options, RunConsole(verbose=args.verbose))
