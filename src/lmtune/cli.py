"""The ``lmtune`` command: one parser, one registry of verbs.

Each verb is a module in ``lmtune.commands`` with ``SUMMARY``, ``add_arguments(parser)``
and ``run(args)``. Those modules import torch and fairseq2 only inside functions,
so ``lmtune --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from lmtune.errors import (
    RunFailed,
    Stopped,
    UserError,
    explain_checkpoint_error,
    explain_checkpoint_mismatch,
)

DESCRIPTION = """Fine-tune language models with one command, on fairseq2.

  lmtune demo OUT                                 tiny default: fine-tune, generate, export (CPU, minutes)
  lmtune instruction_finetune OUT --config model=NAME dataset=PATH ...
  lmtune preference_finetune OUT --config model=NAME dataset=PAIRS criterion.name=dpo ...
  lmtune assets list | lmtune assets show NAME
  lmtune cache list | lmtune cache clear          the encoded data runs share
"""

# verb -> module in lmtune.commands, in the order --help lists them
COMMANDS = {
    "instruction_finetune": "instruction_finetune",
    "preference_finetune": "preference_finetune",
    "pretrain": "pretrain",
    "sweep": "sweep",
    "demo": "demo",
    "generate": "generate",
    "score": "score",
    "compare": "compare",
    "write_hf_config": "write_hf_config",
    "audit": "audit",
    "report": "report",
    "drift": "drift",
    "assets": "assets",
    "cache": "cache",
}


def _command_module(verb: str) -> ModuleType:
    return importlib.import_module(f"lmtune.commands.{COMMANDS[verb]}")


def version_line() -> str:
    """``lmtune X (fairseq2 Y, torch Z)``, read from the installed packages' metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"lmtune {installed('lmtune')} (fairseq2 {installed('fairseq2')}, torch {installed('torch')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmtune", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line(), help="show lmtune's version and those of fairseq2 and torch, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in COMMANDS:
        module = _command_module(verb)
        p = sub.add_parser(verb, help=module.SUMMARY, description=module.SUMMARY, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from lmtune.commands.common import take_output_dir

    # transformers imports torchao when it is installed (QLoRA uses it), and torchao 0.17 warns on
    # every import that its optional C++ kernels need a newer torch; its NF4 code is pure PyTorch.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        take_output_dir(args)
        _command_module(args.command).run(args)
    except UserError as ex:
        print(f"lmtune: error: {ex}", file=sys.stderr)
        return 2
    except RunFailed as ex:
        print(f"lmtune: error: {ex}", file=sys.stderr)
        return 1
    except Stopped as ex:
        print(f"lmtune: {ex}", file=sys.stderr)
        return ex.exit_code
    except KeyboardInterrupt:
        print("lmtune: interrupted", file=sys.stderr)
        return 130
    except Exception as ex:
        message = explain_checkpoint_mismatch(ex) or explain_checkpoint_error(ex)
        if message is None:
            raise
        print(f"lmtune: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
