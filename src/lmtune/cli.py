"""The ``lmtune`` command. Heavy modules (torch, fairseq2) load only when a command runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from lmtune.errors import RunFailed, Stopped, UserError, explain_checkpoint_mismatch

DESCRIPTION = """Fine-tune language models with one command, on fairseq2.

  lmtune demo OUT                                 tiny default: fine-tune, generate, export (CPU, minutes)
  lmtune instruction_finetune OUT --config model=NAME dataset=PATH ...
  lmtune assets list | lmtune assets show NAME
"""


# Commands that live in their own module: `add_arguments(parser)` and `run(args)`.
# Such a module imports torch/fairseq2 only inside functions, so --help stays fast.
PLUGIN_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("lmtune.generate_cmd", "generate completions for a dataset's prompts and score them"),
    "score": ("lmtune.score_cmd", "score an existing predictions JSONL (gsm8k, classification, exact_match)"),
    "write_hf_config": ("lmtune.hf_export_cmd", "export a checkpoint as a complete Hugging Face directory"),
    "audit": ("lmtune.audit_cmd", "token-length percentiles of a dataset and the padding each batching strategy would waste"),
}


OUT_USAGE = "%(prog)s OUT [--config-file F] [--config KEY=VALUE ...] [--dump-config]"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", metavar="F", help="a YAML config, or the name of a preset in lmtune's configs/ (e.g. tiny_gsm8k)")
    p.add_argument("--config", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override config keys; dotted keys reach sections (optimizer.weight_decay=0.1)")
    p.add_argument("--dump-config", action="store_true", help="print the full effective config and exit")


def build_parser() -> argparse.ArgumentParser:
    from lmtune.finetune_options import describe_keys

    parser = argparse.ArgumentParser(prog="lmtune", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "instruction_finetune",
        help="fine-tune on prompt/response or chat JSONL; rerun on the same OUT to resume",
        description="Fine-tune a model on instruction data with fairseq2's trainer. Rerunning the same command on the same OUT resumes from its last checkpoint.",
        epilog="config keys (defaults):\n" + describe_keys(),
        usage=OUT_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output_dir", metavar="OUT", type=Path, nargs="?")  # required; see take_output_dir
    _config_args(p)

    p = sub.add_parser(
        "demo",
        help="the built-in tiny default end to end on CPU: fine-tune, generate and score, export to Hugging Face",
        description="Fine-tune the tiny default (configs/tiny_gsm8k.yaml) from scratch, score it on its test split before and after, "
        "export it as a Hugging Face directory and check that transformers completes prompts as lmtune does. A few minutes on 2 CPU cores; "
        "rerunning on the same OUT resumes training.",
    )
    p.add_argument("output_dir", metavar="OUT", type=Path, nargs="?", help="default: lmtune-demo")
    p.set_defaults(output_dir_default=Path("lmtune-demo"))
    p.add_argument("--config", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override keys of the fine-tuning step (e.g. max_num_steps=100)")

    for name, (module, summary) in PLUGIN_COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter)
        importlib.import_module(module).add_arguments(p)

    p = sub.add_parser("assets", help="list and show asset cards (models, tokenizers, datasets)")
    asub = p.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    a = asub.add_parser("list", help="list card names")
    a.add_argument("--kind", choices=["model", "tokenizer", "dataset"])
    a = asub.add_parser("show", help="print a card after base: inheritance and user overrides")
    a.add_argument("name")
    return parser


def take_output_dir(args: argparse.Namespace) -> None:
    """Puts an OUT written after `--config a=b` (which argparse reads as one more config item) back in its place."""
    if not hasattr(args, "output_dir") or args.output_dir is not None:
        return
    if args.config and "=" not in args.config[-1]:
        args.output_dir = Path(args.config.pop())
    elif getattr(args, "output_dir_default", None) is not None:
        args.output_dir = args.output_dir_default
    else:
        raise UserError("OUT is missing: " + OUT_USAGE % {"prog": f"lmtune {args.command}"})


def resolve_config_file(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return path
    from lmtune.resources import configs_dir

    for candidate in (configs_dir() / value, configs_dir() / f"{value}.yaml"):
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in configs_dir().glob("*.yaml"))
    from lmtune.errors import did_you_mean

    raise UserError(f"--config-file {value} is neither a file nor a preset; {did_you_mean(value, presets)}")


def cmd_instruction_finetune(args: argparse.Namespace) -> None:
    from lmtune.config import dump_yaml, load_config
    from lmtune.finetune_options import FinetuneOptions

    options = load_config(FinetuneOptions, resolve_config_file(args.config_file), args.config)
    if args.dump_config:
        print(dump_yaml(options), end="")
        return
    from lmtune.finetune import run_instruction_finetune

    run_instruction_finetune(args.output_dir, options)


def cmd_demo(args: argparse.Namespace) -> None:
    from lmtune.demo import run_demo

    run_demo(args.output_dir, args.config)


def cmd_assets(args: argparse.Namespace) -> None:
    from lmtune.cards import CardStore

    store = CardStore()
    if args.assets_command == "list":
        for name in store.names():
            card = store.get(name)
            assert card is not None
            if args.kind is None or card.kind == args.kind or (args.kind == "tokenizer" and "tokenizer" in card.fields):
                print(f"{name:32} {card.kind:10} {card.file}")
        return
    import yaml

    card = store.get(args.name)
    if card is None:
        from lmtune.errors import did_you_mean

        raise UserError(f"unknown card '{args.name}'; {did_you_mean(args.name, store.names())}")
    print(f"# from {card.where}")
    print(yaml.safe_dump({"name": card.name, **card.fields}, sort_keys=False), end="")


COMMANDS = {"instruction_finetune": cmd_instruction_finetune, "demo": cmd_demo, "assets": cmd_assets}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        take_output_dir(args)
        if args.command in PLUGIN_COMMANDS:
            importlib.import_module(PLUGIN_COMMANDS[args.command][0]).run(args)
        else:
            COMMANDS[args.command](args)
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
        message = explain_checkpoint_mismatch(ex)
        if message is None:
            raise
        print(f"lmtune: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
