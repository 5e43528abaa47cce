"""``lmtune instruction_finetune OUT``: resolve names, check inputs, run the recipe.

Everything a user can get wrong is checked here, before fairseq2 starts, so a bad
key, path, card or record costs one clear sentence and leaves OUT untouched. What is
fine-tuning's own: records, the encoded cache, LoRA, validation tasks and early stopping;
the run's lifecycle (OUT, fairseq2's run, plots, export) is ``lmtune.runs.lifecycle``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import (
    ModelSpec,
    TokenizerSpec,
    resolve_dataset,
    resolve_model,
    resolve_tokenizer,
)
from lmtune.data.records import check_records
from lmtune.errors import UserError
from lmtune.launch import prepare_distributed_env
from lmtune.options.finetune import FinetuneOptions
from lmtune.run_dir import checkpoint_dir as run_checkpoint_dir
from lmtune.run_dir import (
    clear_early_stop,
    encoded_cache_root,
    is_main_process,
    read_early_stop,
    write_early_stop,
    write_hf_export_card,
    write_lora_card,
)
from lmtune.runs.lifecycle import (
    check_saved_steps,
    check_training_numbers,
    open_run_dir,
    run_training,
)
from lmtune.training.console import RunConsole
from lmtune.training.validation_plan import (
    continues_after_early_stop,
    early_stop_message,
    plan_validation,
)

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer

    from lmtune.data.encoded_cache import CachePlan


@dataclass(kw_only=True)
class Inputs:
    model: ModelSpec
    tokenizer: TokenizerSpec
    train: Path
    valid: Path | None
    task: str | None
    """The dataset card's task (of the validation data's card when valid_dataset names one)."""
    labels: list[str] | None


def resolve_inputs(o: FinetuneOptions) -> Inputs:
    if o.model is None:
        raise UserError("config key 'model' is not set; name a model card (e.g. model=tiny_llama; see `lmtune assets list --kind model`).")
    if o.dataset is None:
        raise UserError("config key 'dataset' is not set; give a .jsonl file, a directory or a dataset card (e.g. dataset=tiny_gsm8k).")
    store = CardStore()
    model = resolve_model(store, o.model, o.resume_checkpoint_dir)
    tokenizer = resolve_tokenizer(store, o.tokenizer) if o.tokenizer else model.tokenizer
    if tokenizer is None:
        raise UserError(f"model '{o.model}' names no tokenizer; set tokenizer=NAME (a card with a 'tokenizer:' path).")
    data = resolve_dataset(store, o.dataset)
    if data.train is None:
        raise UserError(f"dataset={o.dataset} has no training split (train.jsonl or sft/train.jsonl).")
    valid, task, labels = data.valid, data.task, data.labels
    if o.valid_dataset is not None:
        v = resolve_dataset(store, o.valid_dataset, "valid_dataset")
        valid = v.valid or v.test or v.train
        task, labels = (v.task, v.labels) if v.task is not None else (task, labels)
    return Inputs(model=model, tokenizer=tokenizer, train=data.train, valid=valid, task=task, labels=labels)


def check_model_fit(model: ModelSpec, tokenizer: TokenizerSpec, o: FinetuneOptions, loaded: Tokenizer) -> int:
    """Checks the tokenizer (``loaded``: the fairseq2 tokenizer) against the model's vocabulary;
    returns max_seq_len capped at the model's maximum."""
    from lmtune.models.fit import check_vocabulary, fitted_max_seq_len
    from lmtune.models.loading import model_config

    config = model_config(model)
    check_vocabulary(model.name, config, tokenizer, loaded)
    window = (model.hf_export or {}).get("sliding_window")
    if isinstance(window, int) and o.max_seq_len > window:
        raise UserError(f"max_seq_len={o.max_seq_len} is longer than the sliding attention window of model '{model.name}' ({window} tokens), which lmtune builds as full attention; set max_seq_len={window} or less.")
    max_seq_len = fitted_max_seq_len(model.name, config, o.max_seq_len, warn=is_main_process())
    if o.batch_size is None and o.max_num_tokens < max_seq_len:
        how = "packed" if o.packing else "length-batched"
        raise UserError(f"max_num_tokens={o.max_num_tokens} is smaller than max_seq_len={max_seq_len}; a {how} batch must fit at least one full-length example, so raise max_num_tokens or lower max_seq_len.")
    return max_seq_len


def _cache_plans(out_dir: Path, o: FinetuneOptions, tokenizer: TokenizerSpec, files: list[Path]) -> dict[Path, CachePlan]:
    if not o.data_cache:
        return {}
    from lmtune.data.encoded_cache import plan_cache

    return {path: plan_cache(encoded_cache_root(), path, tokenizer) for path in dict.fromkeys(files)}


def _write_caches(caches: dict[Path, CachePlan], loaded: Tokenizer, tokenizer: TokenizerSpec) -> None:
    """Rank 0, before fairseq2 starts: the other ranks map the caches once they have all joined."""
    from lmtune.data.encoded_cache import ensure_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import default_workers, encode_jsonl

    encoder = ExampleEncoder(loaded, tokenizer.hf_dir)
    for plan in caches.values():  # reused, or built once while concurrent runs on the same data wait
        def encode(tmp: Path, p: CachePlan = plan) -> object:
            return encode_jsonl(p.data_file, encoder, workers=default_workers(), directory=tmp)

        ensure_cache(plan, encode)


def run_instruction_finetune(out_dir: Path, o: FinetuneOptions, console: RunConsole | None = None) -> None:
    """``console``: what the run shows (default: the compact console of ``lmtune.training.console``)."""
    console = console or RunConsole()
    check_training_numbers(o, {"max_eval_examples": o.max_eval_examples, "eval_max_gen_len": o.eval_max_gen_len, "keep_best_n_checkpoints": o.keep_best_n_checkpoints})
    prepare_distributed_env(os.environ)
    inputs = resolve_inputs(o)
    model, tokenizer, train_file, valid_file = inputs.model, inputs.tokenizer, inputs.train, inputs.valid
    from lmtune.adapters.plan import plan_lora

    lora = plan_lora(o, model)
    if lora is not None:  # the effective settings (a continued adapter's own) go into OUT/lmtune.yaml
        o = dataclasses.replace(o, lora=dataclasses.replace(lora.spec.settings))
    # The effective config (saved as OUT/lmtune.yaml) runs at the length the model takes; the caller's is left as it was.
    from lmtune.models.loading import load_tokenizer

    loaded = load_tokenizer(tokenizer)
    o = dataclasses.replace(o, max_seq_len=check_model_fit(model, tokenizer, o, loaded))
    plan = plan_validation(o, valid_file, inputs.task, inputs.labels, loaded, tokenizer.hf_dir)
    if o.representations.every_n_steps is not None:
        from lmtune.models.loading import model_config
        from lmtune.training.representations import check_representations

        r = o.representations
        check_representations(r.every_n_steps, r.num_examples, r.layers, valid_file is not None, model_config(model).num_layers, o.data_parallelism)  # type: ignore[attr-defined]
    main = is_main_process()
    caches = _cache_plans(out_dir, o, tokenizer, [p for p in (train_file, valid_file) if p is not None])
    for path in dict.fromkeys(p for p in (train_file, valid_file) if p is not None):
        if path not in caches or caches[path].stale is not None:
            check_records(path)  # malformed records fail here, before OUT is touched (a current cache was checked when built)
    steps = check_saved_steps(out_dir)  # a damaged checkpoint is named before OUT is touched
    earlier_stop = read_early_stop(out_dir) if steps else None
    if earlier_stop is not None and not continues_after_early_stop(earlier_stop, o, steps[-1]):
        if main:
            print(f"lmtune: {earlier_stop.get('message', 'this run stopped early')} (raise early_stopping.patience or max_num_steps to continue)", file=sys.stderr)
        return
    if main:
        open_run_dir(out_dir, o, tokenizer)
        if lora is not None:
            write_lora_card(run_checkpoint_dir(out_dir), lora.spec.as_card())
        if model.hf_export is not None:
            write_hf_export_card(run_checkpoint_dir(out_dir), model.hf_export)

    from lmtune.data.parallel_encoding import default_workers
    from lmtune.runs.fairseq2_config import finetune_config, lora_section, run_precision

    encoded = {path: c.directory for path, c in caches.items()}
    workers = max(1, default_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    # A LoRA run names its frozen base; fairseq2 creates it empty (lmtune.adapters.base_family),
    # and the recipe's setup_model loads it and adds the adapters.
    config = finetune_config(o, lora.spec.base if lora is not None else model, tokenizer, train_file, valid_file, plan, out_dir, encoded, workers)
    if lora is not None:
        from lmtune.adapters.base_family import lora_base_family_key

        config.lora = lora_section(lora)
        config.model.family = lora_base_family_key(config.model.family)
    if plan.metric is not None and earlier_stop is not None:
        # Raised patience: the count goes on. Raised max_num_steps alone: the count starts afresh.
        config.early_stopping.forgive_at_resume = o.early_stopping.patience == earlier_stop["patience"]
        if main:
            clear_early_stop(out_dir)

    def record_early_stop() -> None:
        record = read_early_stop(out_dir) if plan.metric is not None else None
        if record is not None and "message" not in record:  # the stopper has just written it
            message = early_stop_message(record, plan.metric, o.early_stopping.min_delta)  # type: ignore[arg-type]
            write_early_stop(out_dir, {**record, "patience": o.early_stopping.patience, "max_num_steps": o.max_num_steps, "message": message})
            print(f"lmtune: {message}.", file=sys.stderr)

    from lmtune.recipes.instruction_finetune import InstructionFinetuneRecipe

    run_training(
        out_dir, o, recipe=InstructionFinetuneRecipe(plan.metrics, console), config=config, console=console, plan=plan, precision=run_precision(o, model),
        before_run=lambda: _write_caches(caches, loaded, tokenizer),  # before fairseq2, whose ranks map the caches
        after_run=record_early_stop,
    )  # fmt: skip
