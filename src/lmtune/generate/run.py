"""Generation for a dataset's prompts, then their score: what ``lmtune generate OUT`` runs.

The path of data: config -> model / tokenizer / dataset resolved and every prompt
encoded and checked (before any model is loaded) -> this rank's shard of prompts
-> batches of similar length -> ``lmtune.generate.generator.Generator`` -> rank 0
gathers every shard, writes ``OUT/generations.jsonl`` in input order, and scores it.

Several processes (torchrun, or srun: ``lmtune.launch`` turns SLURM's variables into
torchrun's): rank r generates prompts r, r+W, r+2W, ... and the shards reach rank 0
through fairseq2's gang (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.errors import UserError
from lmtune.files import atomic_write
from lmtune.options.generate import GenerateOptions, check_options

if TYPE_CHECKING:
    import torch
    from fairseq2.data.tokenizers import Tokenizer
    from fairseq2.gang import Gang


@dataclass(kw_only=True)
class Inputs:
    """Everything resolved and checked, before a model is loaded."""

    model: object  # ModelSpec
    tokenizer: Tokenizer
    prompts: list[list[int]]
    prompt_texts: list[str]
    references: list[str | None]
    answers: list[list[str] | None]
    """Each record's ``answers`` (score=qa's references), written beside the completion."""
    task: str | None
    labels: list[str] | None


def resolve_inputs(o: GenerateOptions) -> Inputs:
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_dataset, resolve_model, resolve_tokenizer
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import read_records
    from lmtune.models.fit import check_vocabulary
    from lmtune.models.loading import load_tokenizer, model_config
    from lmtune.score.qa import task_reference
    from lmtune.score.tasks import check_references

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
    check_vocabulary(model.name, config, tok_spec, tokenizer)
    encoder = ExampleEncoder(tokenizer, tok_spec.hf_dir)
    references = [encoder.reference(r) for r in records]
    answers = [r.answers for r in records]

    task = data.task if o.score == "auto" else (None if o.score == "none" else o.score)
    scored = [task_reference(task, ref, a) for ref, a in zip(references, answers)]
    if o.score == "auto" and task is not None and any(ref is None for ref in scored):
        print(f"lmtune: not scoring: {data.test} has prompts without reference answers.", file=sys.stderr)
        task = None
    labels = o.labels or data.labels
    if task is not None:
        labels = check_references(task, [(r.where, ref) for r, ref in zip(records, scored)], labels)

    max_seq_len = int(config.max_seq_len)  # type: ignore[attr-defined]  # every fairseq2 decoder config has one
    prompts = []
    for r in records:
        tokens = encoder.encode_prompt(r)
        if len(tokens) >= max_seq_len:
            raise UserError(f"{r.where}: the prompt has {len(tokens)} tokens, but model '{model.name}' takes at most {max_seq_len} tokens in all, so nothing could be generated; shorten the prompt.")
        prompts.append(tokens)
    decode = tokenizer.create_decoder()
    import torch

    texts = [r.src if r.src is not None else decode(torch.tensor(p)) for r, p in zip(records, prompts)]
    return Inputs(model=model, tokenizer=tokenizer, prompts=prompts, prompt_texts=texts, references=references, answers=answers, task=task, labels=labels)


def _device_and_dtype(o: GenerateOptions, inputs: Inputs) -> tuple[torch.device, torch.dtype]:
    """The device, and the dtype the model's weights are loaded in (lmtune.precision; said on rank 0)."""
    from fairseq2.device import detect_default_device

    from lmtune.dtypes import torch_dtype
    from lmtune.models.loading import model_width, resolver
    from lmtune.precision import choose_precision
    from lmtune.run_dir import is_main_process

    resolver()  # fairseq2 initialised
    device = detect_default_device()
    main = is_main_process()
    precision = choose_precision(o.dtype, device.type, model_width(inputs.model), warn=main, generation=True)  # type: ignore[arg-type]
    if main:
        weights = "float32" if precision.dtype == "float32" else f"{precision.dtype} weights"
        print(f"lmtune: precision: {weights} ({precision.reason})", file=sys.stderr)
    return device, torch_dtype(precision.dtype)


def _root_gang(device: torch.device) -> Gang | None:
    """fairseq2's process-group gang under torchrun; None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from fairseq2.gang import ProcessGroupGang

    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    return ProcessGroupGang.create_default_process_group(device)


def generate_shard(o: GenerateOptions, inputs: Inputs, indices: list[int], device: torch.device, dtype: torch.dtype, main: bool) -> dict[int, dict[str, object]]:
    import torch

    from lmtune.adapters.build import load_any_model
    from lmtune.generate.generator import Generator, length_batches

    g = o.generator_config
    model = load_any_model(inputs.model, device=device, dtype=dtype, seed=o.seed)  # type: ignore[arg-type]
    generator = Generator(model, inputs.tokenizer, g)
    decode = inputs.tokenizer.create_decoder()
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
            if inputs.answers[i] is not None:
                row["answers"] = inputs.answers[i]
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

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fp:
            for row in rows:
                fp.write(json.dumps(row, ensure_ascii=False) + "\n")

    atomic_write(path, write)


def run_generate(out_dir: Path, o: GenerateOptions) -> None:
    from lmtune.launch import prepare_distributed_env
    from lmtune.options.load import dump_yaml
    from lmtune.run_dir import is_main_process, lock_output_dir

    if o.model is None and o.checkpoint_dir is not None:
        o.model = "last_checkpoint"
    check_options(o)
    prepare_distributed_env(os.environ)  # srun's variables -> torchrun's
    inputs = resolve_inputs(o)  # every rank checks the same inputs, so all fail alike
    main = is_main_process()
    if main:
        lock_output_dir(out_dir)
        (out_dir / "generate.yaml").write_text(dump_yaml(o))
    device, dtype = _device_and_dtype(o, inputs)
    gang = _root_gang(device)
    rank, size = (gang.rank, gang.size) if gang is not None else (0, 1)
    rows = generate_shard(o, inputs, list(range(rank, len(inputs.prompts), size)), device, dtype, main)
    if gang is not None:
        # Each rank in turn sends its shard; only rank 0 keeps them.
        for source in range(size):
            box: list[object] = [rows if source == rank else None]
            gang.broadcast_objects(box, source_rank=source)
            if rank == 0 and source != 0:
                received = box[0]
                assert isinstance(received, dict)  # the sender's shard
                rows.update(received)
    if rank == 0:
        ordered = [rows[i] for i in range(len(inputs.prompts))]
        write_jsonl(out_dir / "generations.jsonl", ordered)
        print(f"lmtune: wrote {out_dir / 'generations.jsonl'}", file=sys.stderr)
        if inputs.task is not None:
            from lmtune.score.qa import task_reference
            from lmtune.score.scores_file import save_scores
            from lmtune.score.tasks import Reference, score

            pairs: list[tuple[str, Reference]] = []
            for r, ref, a in zip(ordered, inputs.references, inputs.answers):
                scored = task_reference(inputs.task, ref, a)
                assert scored is not None  # read_inputs' check_references refused a record without one
                pairs.append((str(r["completion"]), scored))
            save_scores(out_dir / "scores.json", score(inputs.task, pairs, inputs.labels))
    if gang is not None:
        gang.barrier()
        gang.close()
