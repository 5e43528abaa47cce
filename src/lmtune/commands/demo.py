"""``lmtune demo [OUT]``: the whole product on the built-in tiny default, on CPU, in minutes.

    1. fine-tune tiny_llama from random weights on tiny_gsm8k   -> OUT/finetune
    2. generate greedy answers to the test split and score them -> OUT/generate
       (and, for contrast, the same before training)            -> OUT/generate_untrained
    3. export the last checkpoint as a Hugging Face directory   -> OUT/hf
       and check that transformers completes prompts as lmtune does
    4. where everything is, and the commands that do each step by hand

Each step calls the same code as its own command. Rerunning on the same OUT
resumes an unfinished training run (a finished one ends at once) and redoes
steps 2-3, which take seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtune.commands.common import (
    add_config_arguments,
    add_out_argument,
    add_verbose_argument,
)
from lmtune.errors import RunFailed

SUMMARY = "the built-in tiny default end to end on CPU: fine-tune, generate and score, export to Hugging Face"

PRESET = "tiny_gsm8k"
# Answers are at most 20 characters ("21 + 31 = 52\n#### 52"); the untrained model never stops, so this
# bounds its cost (its 200 completions are most of the generation step's time).
MAX_GEN_LEN = 32
NUM_SAMPLES = 3  # prompt/completion pairs shown
NUM_COMPARED = 2  # prompts completed by transformers on the export
CURVE_ROWS = 8  # about this many rows of the loss curve
PROGRESS_LINES = 6  # about this many compact progress lines while training (off a terminal)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune the tiny default (configs/tiny_gsm8k.yaml) from scratch, score it on its test split before and after, "
        "export it as a Hugging Face directory and check that transformers completes prompts as lmtune does. A few minutes on 2 CPU cores; "
        "rerunning on the same OUT resumes training."
    )
    add_out_argument(parser, default=Path("lmtune-demo"))
    add_config_arguments(parser, "max_num_steps=100", config_file=False)
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> None:
    run_demo(args.output_dir, args.config, verbose=args.verbose)


def run_demo(out_dir: Path, overrides: list[str] | None = None, *, verbose: bool = False) -> None:
    from lmtune.generate.run import run_generate
    from lmtune.options.finetune import FinetuneOptions
    from lmtune.options.generate import GenerateOptions, GeneratorOptions
    from lmtune.options.load import load_config
    from lmtune.options.presets import resolve_config_file
    from lmtune.run_dir import checkpoint_steps
    from lmtune.runs.finetune import run_instruction_finetune
    from lmtune.training.console import RunConsole

    start = time.monotonic()
    overrides = list(overrides or [])
    options = load_config(FinetuneOptions, resolve_config_file(PRESET), overrides)
    train_dir, gen_dir, untrained_dir, hf_dir = out_dir / "finetune", out_dir / "generate", out_dir / "generate_untrained", out_dir / "hf"
    checkpoint_dir = train_dir / "checkpoints"

    # ------------------------------------------------------------ 1. fine-tune
    _heading(f"1/4 Fine-tune: {options.model} on {options.dataset}, {options.max_num_steps} steps")
    done = checkpoint_steps(checkpoint_dir) if checkpoint_dir.is_dir() else []
    if done:
        print(f"{train_dir} already has a checkpoint at step {done[-1]}: resuming from it (a finished run ends at once).")
    sys.stdout.flush()  # before the training's lines on stderr
    t = time.monotonic()
    run_instruction_finetune(train_dir, options, RunConsole(verbose=verbose, max_step_lines=PROGRESS_LINES))
    train_seconds = time.monotonic() - t
    losses = _losses(train_dir / "metrics" / "train.jsonl")
    print("\ntraining loss (NLL per response token):")
    top = max((loss for _, loss in losses), default=1.0)
    every = -(-len(losses) // CURVE_ROWS)
    for step, loss in [p for i, p in enumerate(losses) if i % every == 0 or i == len(losses) - 1]:
        print(f"  step {step:4d}  {loss:7.3f}  " + "#" * max(1, round(50 * loss / top)))
    if losses:
        print(f"loss {losses[0][1]:.3f} at step {losses[0][0]} -> {losses[-1][1]:.3f} at step {losses[-1][0]}; this run took {train_seconds:.0f} s")
    else:
        print(f"no loss logged: publish_metrics_every_n_steps={options.publish_metrics_every_n_steps} is above max_num_steps={options.max_num_steps}")
    last_step = checkpoint_steps(checkpoint_dir)[-1]

    # ------------------------------------------------------ 2. generate, score
    _heading(f"2/4 Generate and score: greedy answers to the {options.dataset} test split")
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model

    random_init = resolve_model(CardStore(), options.model, None).checkpoint is None  # type: ignore[arg-type]
    what = "random weights" if random_init else "its card's weights"
    print(f"before fine-tuning ({options.model}, {what}) and after ({checkpoint_dir}, step {last_step})", flush=True)
    generator = GeneratorOptions(max_gen_len=MAX_GEN_LEN)
    quiet = not verbose  # the commands' own reports (score tables, files written): the lines below sum them up
    _run(quiet, run_generate, untrained_dir, GenerateOptions(model=options.model, tokenizer=options.tokenizer, dataset=options.dataset, seed=options.seed, dtype="float32", generator_config=generator))
    _run(quiet, run_generate, gen_dir, GenerateOptions(checkpoint_dir=checkpoint_dir, model="last_checkpoint", dataset=options.dataset, seed=options.seed, dtype="float32", generator_config=generator))
    before, after = _accuracy(untrained_dir), _accuracy(gen_dir)
    rows = [json.loads(line) for line in (gen_dir / "generations.jsonl").read_text().splitlines()]
    untrained_rows = [json.loads(line) for line in (untrained_dir / "generations.jsonl").read_text().splitlines()]
    print("\nsamples:")
    from lmtune.score.tasks import gsm8k_answer

    for row, untrained in zip(rows[:NUM_SAMPLES], untrained_rows):
        verdict = ""
        if "reference" in row:
            verdict = "  (correct)" if gsm8k_answer(row["completion"]) == gsm8k_answer(row["reference"]) else f"  (wrong; reference: {_one_line(row['reference'])})"
        print(f"  prompt:           {_one_line(row['prompt'])}")
        print(f"  before training:  {_one_line(untrained['completion'])[:60]}" + ("..." if len(_one_line(untrained["completion"])) > 60 else ""))
        print(f"  after training:   {_one_line(row['completion'])}{verdict}\n")
    if before is not None and after is not None:
        print(f"accuracy on {len(rows)} problems: {before:.3f} before fine-tuning -> {after:.3f} after")

    # ------------------------------------------- 3. export, check transformers
    _heading("3/4 Export to Hugging Face and complete with transformers")
    from lmtune.export.hf_dir import export_hf, resolve_export

    spec, tokenizer, _ = resolve_export(str(checkpoint_dir))
    _run(quiet, export_hf, spec, tokenizer, hf_dir, force=True)  # the export takes a second: redo it, so it matches the last checkpoint
    print(f"exported step {last_step} to {hf_dir}: " + ", ".join(sorted(p.name for p in hf_dir.iterdir())))
    mismatches = _compare_with_transformers(hf_dir, rows[:NUM_COMPARED])

    # ---------------------------------------------------------- 4. summary
    _heading("4/4 Summary")
    width = len(str(untrained_dir)) + 1
    print(f"{str(train_dir) + '/':{width}}  checkpoints/step_N, metrics/train.jsonl, plots/*.png, tb/ (TensorBoard), logs/, lmtune.yaml (the effective config)")
    print(f"{str(gen_dir) + '/':{width}}  generations.jsonl and scores.json of the fine-tuned model")
    print(f"{str(untrained_dir) + '/':{width}}  the same before fine-tuning")
    print(f"{str(hf_dir) + '/':{width}}  config.json, model.safetensors, tokenizer, generation_config.json: transformers loads it, vLLM serves it")
    finetune_args = " ".join(["--config-file", PRESET] + (["--config", *map(shlex.quote, overrides)] if overrides else []))
    print("\nthe same steps by hand:")
    print(f"  lmtune instruction_finetune {train_dir} {finetune_args}")
    print(f"  lmtune generate {gen_dir} --config checkpoint_dir={checkpoint_dir} model=last_checkpoint dataset={options.dataset} generator_config.max_gen_len={MAX_GEN_LEN}")
    print(f"  lmtune score {gen_dir}/generations.jsonl --task gsm8k")
    print(f"  lmtune write_hf_config {checkpoint_dir} --output {hf_dir} --force --verify")
    print("on your own data: dataset=DIR (train.jsonl and test.jsonl of {\"src\": ..., \"tgt\": ...} or chat {\"messages\": ...} lines)")
    print("and model=CARD (`lmtune assets list --kind model`); add score=exact_match (or gsm8k, classification) to generate to score a plain directory.")
    print(f"\ntotal wall time: {time.monotonic() - start:.0f} s (training {train_seconds:.0f} s)")
    if mismatches:
        raise RunFailed(f"transformers' greedy completion of the export differs from lmtune's for {mismatches} of {NUM_COMPARED} prompts (see above); the export in {hf_dir} does not reproduce the fine-tuned model.")


def _run(quiet: bool, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``step(*args, **kwargs)``; when quiet, what it prints is shown only if it fails."""
    if not quiet:
        return step(*args, **kwargs)
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            return step(*args, **kwargs)
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise


def _heading(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _one_line(text: str) -> str:
    return text.strip().replace("\n", " / ")


def _losses(metrics_file: Path) -> list[tuple[int, float]]:
    """(step, loss) in step order; after a resume a step may be logged twice, the last entry wins."""
    by_step: dict[int, float] = {}
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            m = json.loads(line)
            if "NLL Loss" in m:
                by_step[int(m["Step"])] = float(m["NLL Loss"])
    return sorted(by_step.items())


def _accuracy(gen_dir: Path) -> float | None:
    path = gen_dir / "scores.json"
    return float(json.loads(path.read_text())["accuracy"]) if path.is_file() else None


def _compare_with_transformers(hf_dir: Path, rows: list[dict]) -> int:
    """Greedy completions by transformers on the export against lmtune's; returns the number that differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where lmtune generated
    tok = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, trust_remote_code=False).to(device).eval()  # type: ignore[arg-type]  # transformers types the wrapped to() unbound
    mismatches = 0
    for row in rows:
        enc = tok(row["prompt"], return_tensors="pt")  # the tokenizer adds BOS, as lmtune's prompt encoder does
        with torch.inference_mode():
            # Not generate(**enc): the exported tokenizer also returns token_type_ids, which Llama's generate refuses.
            out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device), do_sample=False, max_new_tokens=MAX_GEN_LEN)
        ids = out[0, enc["input_ids"].shape[1] :].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        print(f"\n  prompt:       {_one_line(row['prompt'])}")
        print(f"  lmtune:       {_one_line(row['completion'])}")
        print(f"  transformers: {_one_line(text)}")
        if ids == row["token_ids"]:
            stop = ", the stop token included" if row["finish_reason"] == "stop" else ""
            print(f"  identical ({len(ids)} token ids{stop})")
        else:
            mismatches += 1
            at = next((i for i, (a, b) in enumerate(zip(ids, row["token_ids"])) if a != b), min(len(ids), len(row["token_ids"])))
            print(f"  MISMATCH: the token ids differ from position {at} (transformers {ids[at:at + 5]}..., lmtune {row['token_ids'][at:at + 5]}...)")
    return mismatches
