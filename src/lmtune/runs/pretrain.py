"""``lmtune pretrain OUT``: resolve names, check the corpus, run the recipe.

Everything a user can get wrong is checked here, before fairseq2 starts: a bad key,
card or path, and the corpus itself, read once through (every file, every line, as
training will read it), so a binary file, a line of invalid UTF-8 or JSON, or a
corpus without text costs one sentence naming the file and line, and leaves OUT as
it was. With ``skip_invalid=true`` such lines (and binary files) are counted and skipped.
The run's lifecycle (OUT, fairseq2's run, plots, export) is ``lmtune.runs.lifecycle``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from lmtune.catalog.cards import Card, CardStore
from lmtune.catalog.specs import (
    CHECKPOINT_NAME,
    ModelSpec,
    TokenizerSpec,
    model_from_card,
    resolve_model,
    resolve_tokenizer,
)
from lmtune.data.text_corpus import CorpusCheck, CorpusFile, check_corpus, list_corpus
from lmtune.errors import UserError
from lmtune.files import atomic_write_text
from lmtune.launch import prepare_distributed_env
from lmtune.options.finetune import FinetuneOptions
from lmtune.options.pretrain import PretrainOptions
from lmtune.run_dir import is_main_process
from lmtune.runs.lifecycle import (
    check_saved_steps,
    check_training_numbers,
    open_run_dir,
    run_training,
)
from lmtune.training.console import RunConsole
from lmtune.training.valid_metrics import LOSS, ValidMetric
from lmtune.training.validation_plan import ValidationPlan

# OUT/corpus_check.json: what check_corpus found, with the files' sizes and times, for a rerun.
# (Beside run_dir's layout, which knows only fine-tuning's files.)
CHECK_CACHE = "corpus_check.json"

PERPLEXITY = ValidMetric(user_name="valid.perplexity", name="perplexity", display_name="Perplexity", higher_better=False)

# Keys a rerun may change besides run_dir.RESUMABLE_CHANGES: neither moves the reader's position.
RESUMABLE_HERE = {"skip_invalid", "tokenizer_threads", "max_valid_tokens"}


class PretrainConsole(RunConsole):
    """RunConsole with pretraining's header line."""

    def header(self, o: FinetuneOptions | PretrainOptions, out_dir: Path, plan: ValidationPlan, publish_every: int, *, validates: bool) -> None:
        shown: list[str] = []
        self.write = shown.append  # type: ignore[method-assign, assignment]  # RunConsole's own header line is replaced below
        try:
            super().header(o, out_dir, plan, publish_every, validates=validates)
        finally:
            del self.write
        assert isinstance(o, PretrainOptions)
        init = " (random initial weights)" if o.init == "random" else ""
        valid = f", validating on {_names(o.valid_dataset)} every {o.validate_every_n_steps} steps" if validates else ""
        self.write(f"lmtune: pretraining {o.model}{init} on {_names(o.dataset)} for {o.max_num_steps} steps{valid}, into {out_dir} (fairseq2's full log: {out_dir / 'logs'})")


def _names(refs: str | list[str] | None) -> str:
    return ", ".join(refs) if isinstance(refs, list) else str(refs)


def _check_numbers(o: PretrainOptions) -> None:
    check_training_numbers(o, {"max_valid_tokens": o.max_valid_tokens, "tokenizer_threads": o.tokenizer_threads})
    if o.max_seq_len < 2:
        raise UserError(f"config key 'max_seq_len' must be at least 2 (a token and the one it predicts), got {o.max_seq_len}.")


def resolve_model_and_tokenizer(o: PretrainOptions) -> tuple[ModelSpec, TokenizerSpec]:
    if o.model is None:
        raise UserError("config key 'model' is not set; name a model card whose architecture to train (e.g. model=tiny_llama init=random; see `lmtune assets list --kind model`).")
    store = CardStore()
    card: Card | None
    if o.init == "random":
        if CHECKPOINT_NAME.match(o.model):
            raise UserError(f"init=random takes a model card's architecture, and model={o.model} names trained weights; name a card, or drop init=random to continue from {o.model}.")
        card = store.require(o.model, "model")
        model = model_from_card(store, card, need_weights=False)
        if o.tokenizer is None and ("tokenizer" in card.fields or "tokenizer_ref" in card.fields):
            model.tokenizer = resolve_tokenizer(store, card.name)
    else:
        card = None if CHECKPOINT_NAME.match(o.model) else store.require(o.model, "model")
        if card is not None and card.get("checkpoint") is None and card.get("init") != "random":
            raise UserError(f"model card '{o.model}' has no checkpoint; set init=random to train its architecture from scratch, or add a user card '{o.model}@user' with 'checkpoint: /path/to/weights'.")
        model = resolve_model(store, o.model, o.resume_checkpoint_dir)
    tokenizer = resolve_tokenizer(store, o.tokenizer) if o.tokenizer else model.tokenizer
    if tokenizer is None:
        raise UserError(f"model '{o.model}' names no tokenizer; set tokenizer=NAME (a card with a 'tokenizer:' path).")
    return model, tokenizer


def check_model_fit(model: ModelSpec, tokenizer: TokenizerSpec, o: PretrainOptions) -> tuple[int, int]:
    """Checks the tokenizer against the model; returns max_seq_len (capped at the model's) and rows per batch."""
    from lmtune.models.fit import check_vocabulary, fitted_max_seq_len
    from lmtune.models.loading import load_tokenizer, model_config

    config = model_config(model)
    loaded = load_tokenizer(tokenizer)
    check_vocabulary(model.name, config, tokenizer, loaded)
    if loaded.vocab_info.eos_idx is None:
        raise UserError(f"tokenizer '{tokenizer.name}' has no end-of-sequence token, which pretraining puts between documents; use a tokenizer with one.")
    max_seq_len = fitted_max_seq_len(model.name, config, o.max_seq_len, warn=is_main_process())
    if o.batch_size is not None:
        return max_seq_len, o.batch_size
    if o.max_num_tokens < max_seq_len:
        raise UserError(f"max_num_tokens={o.max_num_tokens} is smaller than max_seq_len={max_seq_len}; a batch holds whole rows of max_seq_len tokens, so raise max_num_tokens or lower max_seq_len (or set batch_size=ROWS).")
    return max_seq_len, o.max_num_tokens // max_seq_len


def check_text(refs: str | list[str], key: str, num_ranks: int, skip_invalid: bool, out_dir: Path) -> tuple[CorpusCheck, dict[str, object] | None]:
    """The corpus, read through once (``check_corpus``), or the result of an earlier run on the same OUT
    when no file has changed since (OUT/corpus_check.json): a resumed run starts without reading it again.
    Also the files' fingerprint to save that result under; None when it came from there."""
    store = CardStore()

    def card_data(ref: str) -> Path | None:
        card = store.get(ref)
        data = card.get("data") if card is not None else None
        if card is None or not isinstance(data, str):
            return None
        if not Path(data).exists():
            raise UserError(f"dataset card '{card.name}' ({card.where}): data {data} does not exist; add a user card '{card.name}@user' with 'data: /path/to/your/copy'.")
        return Path(data)

    files = list_corpus(refs, key, card_data)
    what = f"{key}={_names(refs)}"
    fingerprint = {"files": [[str(f.path.resolve()), f.size, f.path.stat().st_mtime_ns] for f in files], "ranks": num_ranks, "skip_invalid": skip_invalid}
    cached = _read_check_cache(out_dir).get(key)
    if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint:
        result = cached["result"]
        by_path = {str(f.path.resolve()): f for f in files}
        return CorpusCheck(files=[by_path[p] for p in result["files"]], documents=result["documents"], num_bytes=result["num_bytes"], skipped_lines=result["skipped_lines"], skipped_files=result["skipped_files"], first_skipped=result["first_skipped"]), None
    return check_corpus(files, num_ranks, skip_invalid=skip_invalid, what=what, every_rank=key == "dataset"), fingerprint


def _read_check_cache(out_dir: Path) -> dict[str, object]:
    path = out_dir / CHECK_CACHE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_check_cache(out_dir: Path, checks: dict[str, tuple[CorpusCheck, dict[str, object] | None]]) -> None:
    data = _read_check_cache(out_dir)
    for key, (check, fingerprint) in checks.items():
        if fingerprint is None:
            continue  # read from the cache itself
        result = {"files": [str(f.path.resolve()) for f in check.files], "documents": check.documents, "num_bytes": check.num_bytes,
                  "skipped_lines": check.skipped_lines, "skipped_files": check.skipped_files, "first_skipped": check.first_skipped}  # fmt: skip
        data[key] = {"fingerprint": fingerprint, "result": result}
    atomic_write_text(out_dir / CHECK_CACHE, json.dumps(data, indent=1) + "\n")


def run_pretrain(out_dir: Path, o: PretrainOptions, console: RunConsole | None = None) -> None:
    """``console``: what the run shows (default: ``PretrainConsole``, the compact console of ``lmtune.training.console``)."""
    console = console or PretrainConsole()
    _check_numbers(o)
    prepare_distributed_env(os.environ)
    if o.dataset is None:
        raise UserError("config key 'dataset' is not set; give a .txt or .jsonl file, a directory of them, a glob or a list (e.g. dataset=corpus/).")
    model, tokenizer = resolve_model_and_tokenizer(o)
    main = is_main_process()

    num_ranks = int(os.environ.get("WORLD_SIZE", "1"))
    checks = {"dataset": check_text(o.dataset, "dataset", num_ranks, o.skip_invalid, out_dir)}
    if o.valid_dataset is not None:
        checks["valid_dataset"] = check_text(o.valid_dataset, "valid_dataset", num_ranks, o.skip_invalid, out_dir)
    train = checks["dataset"][0]
    valid = checks["valid_dataset"][0] if "valid_dataset" in checks else None
    if main:
        for check, key in ((train, "dataset"), (valid, "valid_dataset")):
            if check is not None:
                print(f"lmtune: {check.summary(key)}", file=sys.stderr)
                skipped = check.skipped(key)
                if skipped:
                    print(f"lmtune: warning: {skipped}", file=sys.stderr)
        if valid is not None:
            both = {f.path.resolve() for f in train.files} & {f.path.resolve() for f in valid.files}
            if both:
                print(f"lmtune: warning: {len(both)} file(s) are both training and validation text (e.g. {sorted(both)[0]}); the validation loss will not measure held-out text.", file=sys.stderr)
    if valid is None and o.validate_every_n_steps is not None and main:
        print("lmtune: warning: validate_every_n_steps is set but valid_dataset is not; no validation will run.", file=sys.stderr)
    max_seq_len, rows = check_model_fit(model, tokenizer, o)  # loads the tokenizer: after the corpus, which needs no fairseq2
    o = dataclasses.replace(o, max_seq_len=max_seq_len)  # the effective config runs at the length the model takes

    check_saved_steps(out_dir)  # a damaged checkpoint is named before OUT is touched
    if main:
        open_run_dir(out_dir, o, tokenizer, resumable=RESUMABLE_HERE)
        _write_check_cache(out_dir, checks)

    from lmtune.recipes.pretrain import PretrainRecipe
    from lmtune.runs.fairseq2_config import run_precision
    from lmtune.runs.pretrain_config import pretrain_config

    config = pretrain_config(o, model, tokenizer, _paths(train.files), _paths(valid.files) if valid else [], rows)
    plan = ValidationPlan(metrics=[LOSS, PERPLEXITY])
    run_training(out_dir, o, recipe=PretrainRecipe(console), config=config, console=console, plan=plan, precision=run_precision(o, model))


def _paths(files: list[CorpusFile]) -> list[Path]:
    return [f.path.resolve() for f in files]
