"""Placeholder for the `hf_export` command; replaced by its implementation."""

from __future__ import annotations

import argparse

from lmtune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*")


def run(args: argparse.Namespace) -> None:
    raise UserError("this command is not implemented yet.")
