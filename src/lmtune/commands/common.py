"""What the commands that take ``OUT --config-file F --config KEY=VALUE ...`` share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

from lmtune.errors import UserError

T = TypeVar("T")

OUT_USAGE = "%(prog)s OUT [--config-file F] [--config KEY=VALUE ...] [--dump-config]"


def add_out_argument(parser: argparse.ArgumentParser, default: Path | None = None) -> None:
    help = f"default: {default}" if default is not None else "the run's output directory"
    parser.add_argument("output_dir", metavar="OUT", type=Path, nargs="?", help=help)  # required unless default; see take_output_dir
    parser.set_defaults(output_dir_default=default)
    # fairseq2's recipes write into OUT/ws_1.<hash> unless given --no-sweep-dir; its tutorial passes it.
    parser.add_argument("--no-sweep-dir", action="store_true", help="accepted for fairseq2's command lines; lmtune always writes into OUT itself, so it changes nothing")


def add_config_arguments(parser: argparse.ArgumentParser, example_key: str, *, config_file: bool = True) -> None:
    if config_file:
        parser.usage = OUT_USAGE
        parser.add_argument("--config-file", metavar="F", help="a YAML config, or the name of a preset in lmtune's configs/ (e.g. tiny_gsm8k)")
    parser.add_argument("--config", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help=f"override config keys; dotted keys reach sections ({example_key})")
    if config_file:
        parser.add_argument("--dump-config", action="store_true", help="print the full effective config and exit")


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show fairseq2's full log on the console too (it always goes to OUT/logs)")


def take_output_dir(args: argparse.Namespace) -> None:
    """Puts an OUT written after `--config a=b` (or `--grid a=1,2`; argparse reads it as one more item) back in its place."""
    if not hasattr(args, "output_dir") or args.output_dir is not None:
        return
    trailing = [items for items in (getattr(args, name, None) for name in ("config", "grid", "sbatch")) if items and "=" not in items[-1]]
    if trailing:
        args.output_dir = Path(trailing[0].pop())
    elif getattr(args, "output_dir_default", None) is not None:
        args.output_dir = args.output_dir_default
    else:
        raise UserError("OUT is missing: " + OUT_USAGE % {"prog": f"lmtune {args.command}"})


def load_options(cls: type[T], args: argparse.Namespace) -> T | None:
    """The command's options from --config-file and --config; None after printing them for --dump-config."""
    from lmtune.options.load import dump_yaml, load_config
    from lmtune.options.presets import resolve_config_file

    options = load_config(cls, resolve_config_file(args.config_file), args.config)
    if args.dump_config:
        if hasattr(options, "with_defaults"):  # the defaults that depend on other keys, filled in as the run fills them
            options = options.with_defaults()
        print(dump_yaml(options), end="")
        return None
    return options
