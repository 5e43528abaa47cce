"""``lmtune generate OUT``: completions for a dataset's prompts, then their score.

The path of data: config -> model / tokenizer / dataset resolved and every prompt
encoded and checked (before any model is loaded) -> this rank's shard of prompts
-> batches of similar length -> ``lmtune.generation.Generator`` -> rank 0 gathers
every shard, writes ``OUT/generations.jsonl`` in input order, and scores it.

Several processes (torchrun): rank r generates prompts r, r+W, r+2W, ... and the
shards reach rank 0 through fairseq2's gang (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import UserError
from lmtune.generate_options import GenerateOptions, check_options, describe_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Generate completions for the prompts of a dataset (its test split) and score them. Writes OUT/generations.jsonl and OUT/scores.json."
    parser.epilog = "example:\n  lmtune generate OUT --config checkpoint_dir=RUN/checkpoints model=last_checkpoint dataset=tiny_gsm8k\n\nconfig keys (defaults):\n" + describe_keys()
    from lmtune.cli import OUT_USAGE

    parser.usage = OUT_USAGE
    parser.add_argument("output_dir", metavar="OUT", type=Path, nargs="?")  # required; see cli.take_output_dir
    parser.add_argument("--config-file", metavar="F", help="a YAML config, or the name of a preset in lmtune's configs/")
    parser.add_argument("--config", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override config keys; dotted keys reach sections (generator_config.temperature=0.6)")
    parser.add_argument("--dump-config", action="store_true", help="print the full effective config and exit")


def run(args: argparse.Namespace) -> None:
    from lmtune.cli import resolve_config_file
    from lmtune.config import dump_yaml, load_config

    options = load_config(GenerateOptions, resolve_config_file(args.config_file), args.config)
    if args.dump_config:
        print(dump_yaml(options), end="")
        return
    run_generate(args.output_dir, options)


@dataclass
class Inputs:
    """Everything resolved and checked, before a model is loaded."""

    model: object  # ModelSpec
    tokenizer: object  # the fairseq2 tokenizer
    prompts: list[list[int]]
    prompt_texts: list[str]
    references: list[str | None]
    task: str | None
    labels: list[str] | None


def resolve_inputs(o: GenerateOptions) -> Inputs:
    from lmtune.cards import CardStore
    from lmtune.encoding import ExampleEncoder
    from lmtune.loading import load_tokenizer, model_config
    from lmtune.records import read_records
    from lmtune.scoring import check_references
    from lmtune.specs import resolve_dataset, resolve_model, resolve_tokenizer

    store = CardStore()
    model = resolve_model(store, o.model, o.checkpoint_dir, key="checkpoint_dir")  # type: ignore[arg-type]
    tok_spec = resolve_tokenizer(store, o.tokenizer) if o.tokenizer else model.tokenizer
    if tok_spec is None:
        raise UserError(f"model '{o.model}' names no tokenizer; set tokenizer=NAME (a card with a 'tokenizer:' path).")
    data = resolve_dataset(store, o.dataset)  # type: ignore[arg-type]
    if data.test is None:
        raise UserError(f"dataset={o.dataset} has no test split (test.jsonl or test/test.jsonl); give the .jsonl file of prompts itself.")
    records = read_records(data.test, need_target=False)

    tokenizer = load_tokenizer(tok_spec)
    config = model_config(model)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and tokenizer.vocab_info.size > vocab_size:
        raise UserError(f"tokenizer '{tok_spec.name}' has {tokenizer.vocab_info.size} tokens but model '{model.name}' has vocab_size={vocab_size}; use the model's own tokenizer.")
    encoder = ExampleEncoder(tokenizer, tok_spec.hf_dir)
    references = [encoder.reference(r) for r in records]

    task = data.task if o.score == "auto" else (None if o.score == "none" else o.score)
    if o.score == "auto" and task is not None and any(ref is None for ref in references):
        print(f"lmtune: not scoring: {data.test} has prompts without reference answers.", file=sys.stderr)
        task = None
    labels = o.labels or data.labels
    if task is not None:
        labels = check_references(task, [(r.where, ref) for r, ref in zip(records, references)], labels)

    max_seq_len = int(getattr(config, "max_seq_len"))
    prompts = []
    for r in records:
        tokens = encoder.encode_prompt(r)
        if len(tokens) >= max_seq_len:
            raise UserError(f"{r.where}: the prompt has {len(tokens)} tokens, but model '{model.name}' takes at most {max_seq_len} tokens in all, so nothing could be generated; shorten the prompt.")
        prompts.append(tokens)
    decode = tokenizer.create_decoder()
    import torch

    texts = [r.src if r.src is not None else decode(torch.tensor(p)) for r, p in zip(records, prompts)]
    return Inputs(model, tokenizer, prompts, texts, references, task, labels)


def _device_and_dtype(o: GenerateOptions):  # type: ignore[no-untyped-def]
    import torch
    from fairseq2.device import detect_default_device

    from lmtune.loading import resolver

    resolver()  # fairseq2 initialised
    device = detect_default_device()
    if o.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and o.dtype != "float32":
        print(f"lmtune: warning: dtype={o.dtype} runs as float32 on CPU ({o.dtype} matrix products are hundreds of times slower there).", file=sys.stderr)
        return device, torch.float32
    return device, getattr(torch, o.dtype)


def _root_gang(device):  # type: ignore[no-untyped-def]
    """fairseq2's process-group gang under torchrun; None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from fairseq2.gang import ProcessGroupGang

    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    return ProcessGroupGang.create_default_process_group(device)


def generate_shard(o: GenerateOptions, inputs: Inputs, indices: list[int], device, dtype, main: bool) -> dict[int, dict[str, object]]:  # type: ignore[no-untyped-def]
    import torch

    from lmtune.generation import Generator, length_batches
    from lmtune.loading import load_model

    g = o.generator_config
    model = load_model(inputs.model, device=device, dtype=dtype, seed=o.seed)  # type: ignore[arg-type]
    generator = Generator(model, inputs.tokenizer, g)
    decode = inputs.tokenizer.create_decoder()  # type: ignore[attr-defined]
    torch.manual_seed(o.seed + int(os.environ.get("RANK", "0")))
    batches = length_batches([len(inputs.prompts[i]) for i in indices], max_gen_len=g.max_gen_len, batch_size=o.batch_size, max_num_tokens=o.max_num_tokens, beam_size=g.beam_size)
    rows: dict[int, dict[str, object]] = {}
    start = last_report = time.monotonic()
    num_tokens = 0
    for batch in batches:
        chosen = [indices[k] for k in batch]
        for i, c in zip(chosen, generator([inputs.prompts[i] for i in chosen], device=device)):
            text_ids = c.token_ids[:-1] if c.stopped else c.token_ids
            row: dict[str, object] = {
                "prompt": inputs.prompt_texts[i],
                "completion": decode(torch.tensor(text_ids, dtype=torch.int64)),
                "token_ids": c.token_ids,
                "finish_reason": "stop" if c.stopped else "length",
            }
            if inputs.references[i] is not None:
                row["reference"] = inputs.references[i]
            rows[i] = row
            num_tokens += len(c.token_ids)
        if main and time.monotonic() - last_report > 30:
            print(f"lmtune: generated {len(rows)}/{len(indices)} completions", file=sys.stderr)
            last_report = time.monotonic()
    if main:
        seconds = time.monotonic() - start
        print(f"lmtune: generated {len(rows)} completions, {num_tokens} tokens in {seconds:.1f} s ({num_tokens / max(seconds, 1e-9):.0f} tokens/s on this rank)", file=sys.stderr)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fp:
        for row in rows:
            fp.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run_generate(out_dir: Path, o: GenerateOptions) -> None:
    from lmtune.config import dump_yaml
    from lmtune.run_dir import is_main_process, lock_output_dir

    if o.model is None and o.checkpoint_dir is not None:
        o.model = "last_checkpoint"
    check_options(o)
    inputs = resolve_inputs(o)  # every rank checks the same inputs, so all fail alike
    main = is_main_process()
    if main:
        lock_output_dir(out_dir)
        (out_dir / "generate.yaml").write_text(dump_yaml(o))
    device, dtype = _device_and_dtype(o)
    gang = _root_gang(device)
    rank, size = (gang.rank, gang.size) if gang is not None else (0, 1)
    rows = generate_shard(o, inputs, list(range(rank, len(inputs.prompts), size)), device, dtype, main)
    if gang is not None:
        # Each rank in turn sends its shard; only rank 0 keeps them.
        for source in range(size):
            box: list[object] = [rows if source == rank else None]
            gang.broadcast_objects(box, source_rank=source)
            if rank == 0 and source != 0:
                rows.update(box[0])  # type: ignore[arg-type]
    if rank == 0:
        ordered = [rows[i] for i in range(len(inputs.prompts))]
        write_jsonl(out_dir / "generations.jsonl", ordered)
        print(f"lmtune: wrote {out_dir / 'generations.jsonl'}", file=sys.stderr)
        if inputs.task is not None:
            from lmtune.score_cmd import save_scores
            from lmtune.scoring import score

            pairs = [(str(r["completion"]), str(r["reference"])) for r in ordered]
            save_scores(out_dir / "scores.json", score(inputs.task, pairs, inputs.labels))
    if gang is not None:
        gang.barrier()
        gang.close()
