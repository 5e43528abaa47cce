"""``lmtune audit DATASET --model NAME``: token-length percentiles of a fine-tuning
dataset and the padding each batching strategy would waste on it.

The path of data is instruction_finetune's: dataset (file, directory, GSM8K layout
or card) -> its training split's records -> the tokenizer's encoding (chat
template, BOS/EOS) -> lengths -> ``lmtune.data.audit``. No model weights are loaded:
the model card gives only the tokenizer and the longest sequence it takes.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lmtune.errors import UserError
from lmtune.options.finetune import FinetuneOptions

if TYPE_CHECKING:
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import ModelSpec

FINETUNE_DEFAULTS = FinetuneOptions()
BATCH_SIZE = 8  # a typical per-device batch for the padded fixed-size comparison

SUMMARY = "token-length percentiles of a dataset and the padding each batching strategy would waste"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Token-length percentiles of a dataset's examples as instruction_finetune encodes them\n"
        "(same tokenizer, chat template, BOS/EOS), the padding that fixed-size batches, length\n"
        "batching and packing would waste on them, and a suggested max_seq_len."
    )
    parser.epilog = "example:\n  lmtune audit tiny_gsm8k --model tiny_llama"
    parser.add_argument("dataset", metavar="DATASET", help="a .jsonl file, a directory (train.jsonl or sft/train.jsonl) or a dataset card")
    parser.add_argument("--model", metavar="NAME", help="model card (required): its tokenizer and longest sequence; no weights are loaded")
    parser.add_argument("--tokenizer", metavar="NAME", help="tokenizer card (default: the model card's)")
    parser.add_argument("--max-seq-len", type=int, metavar="N", help=f"longest example kept (default: the model's, at most {FINETUNE_DEFAULTS.max_seq_len})")
    parser.add_argument("--max-num-tokens", type=int, metavar="N", default=FINETUNE_DEFAULTS.max_num_tokens, help="tokens per batch for length batching (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, metavar="N", default=BATCH_SIZE, help="examples per padded fixed-size batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, metavar="N", default=FINETUNE_DEFAULTS.seed, help="the run's seed, which orders the batches (default: %(default)s, instruction_finetune's)")


def run(args: argparse.Namespace) -> None:
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_dataset, resolve_tokenizer
    from lmtune.data.audit import audit, format_report
    from lmtune.data.records import read_records

    if args.model is None:
        raise UserError("--model is not set; name a model card (e.g. --model tiny_llama; see `lmtune assets list --kind model`).")
    for flag, value in (("--max-seq-len", args.max_seq_len), ("--max-num-tokens", args.max_num_tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}.")

    store = CardStore()
    model = model_card(store, args.model)
    # Without --tokenizer, a model card lacking a tokenizer path gets a sentence saying how to add one.
    tok_spec = resolve_tokenizer(store, args.tokenizer or model.name)
    data = resolve_dataset(store, args.dataset)
    if data.train is None:
        raise UserError(f"dataset {args.dataset} has no training split (train.jsonl or sft/train.jsonl); give the .jsonl file itself.")
    records = read_records(data.train)  # malformed records fail here, with file:line

    from lmtune.data.encoding import ExampleEncoder
    from lmtune.models.loading import load_tokenizer, model_config

    model_max = getattr(model_config(model), "max_seq_len", None)
    max_seq_len = args.max_seq_len or min(model_max or FINETUNE_DEFAULTS.max_seq_len, FINETUNE_DEFAULTS.max_seq_len)
    if model_max is not None and max_seq_len > model_max:
        print(f"lmtune: warning: --max-seq-len {max_seq_len} is above the {model_max} tokens model '{model.name}' takes at most.", file=sys.stderr)
    encoder = ExampleEncoder(load_tokenizer(tok_spec), tok_spec.hf_dir)
    examples = [encoder.encode(r) for r in records]

    result = audit(
        [len(e.tokens) for e in examples],
        [sum(e.target_mask) for e in examples],
        max_seq_len=max_seq_len,
        max_num_tokens=args.max_num_tokens,
        batch_size=args.batch_size,
        model_max=model_max,
        shuffle_seed=args.seed + 1,  # instruction_finetune shuffles its training data with seed + 1
    )
    title = (
        f"{data.train}: {len(examples)} examples, tokenizer {tok_spec.name}, model {model.name}\n"
        f"max_seq_len {max_seq_len}, max_num_tokens {args.max_num_tokens}, batch_size {args.batch_size}, seed {args.seed}"
    )
    print(format_report(result, title), end="")


def model_card(store: CardStore, name: str) -> ModelSpec:
    """A ModelSpec without checking for weights, which counting tokens does not need."""
    from lmtune.catalog.specs import model_from_card

    return model_from_card(store, store.require(name, "model"), need_weights=False)
