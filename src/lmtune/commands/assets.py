"""``lmtune assets list | show NAME``: the asset cards lmtune knows, shipped and the user's."""

from __future__ import annotations

import argparse

from lmtune.errors import UserError

SUMMARY = "list and show asset cards (models, tokenizers, datasets)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="list card names (--kind model: with each family and what lmtune does with it)")
    a.add_argument("--kind", choices=["model", "tokenizer", "dataset"])
    a = actions.add_parser("show", help="print a card after base: inheritance and user overrides")
    a.add_argument("name")


def run(args: argparse.Namespace) -> None:
    from lmtune.catalog.cards import CardStore

    store = CardStore()
    if args.assets_command == "list":
        from lmtune.catalog.family_support import family_label, support_table

        for name in store.names():
            card = store.get(name)
            assert card is not None
            if args.kind == "model" and card.kind == "model":
                print(f"{name:32} {family_label(card.fields):10} {card.file}")
            elif args.kind is None or card.kind == args.kind or (args.kind == "tokenizer" and "tokenizer" in card.fields):
                print(f"{name:32} {card.kind:10} {card.file}")
        if args.kind == "model":
            print(f"\nwhat lmtune does with each family (yes: tested against a reference; untested: no test tries it):\n{support_table()}")
        return
    import yaml

    from lmtune.errors import did_you_mean

    card = store.get(args.name)
    if card is None:
        raise UserError(f"unknown card '{args.name}'; {did_you_mean(args.name, store.names())}")
    print(f"# from {card.where}")
    if "checkpoint" in card.fields and "model_family" not in card.fields and "model_arch" not in card.fields:
        from lmtune.catalog.hf_model_dir import why_not_detected

        print(f"# not a usable model card: {why_not_detected(card.fields, card.name, card.where)}")
    elif "hf_architecture" in card.fields:
        print(f"# model_family, model_config and tokenizer read from {card.get('checkpoint')}/config.json")
    print(yaml.safe_dump({"name": card.name, **card.fields}, sort_keys=False), end="")
