"""``lmtune instruction_finetune OUT``: resolve names, check inputs, run the recipe.

Everything a user can get wrong is checked here, before fairseq2 starts, so a bad
key, path, card or record costs one clear sentence and leaves OUT untouched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmtune.cards import CardStore
from lmtune.cluster import explain_distributed_failure, prepare_distributed_env
from lmtune.config import dump_yaml, to_dict
from lmtune.errors import RunFailed, Stopped, UserError
from lmtune.finetune_options import FinetuneOptions
from lmtune.records import read_records
from lmtune.run_dir import check_rerun, is_main_process, lock_output_dir, save_config
from lmtune.specs import RUN_TOKENIZER_CARD, ModelSpec, TokenizerSpec, checkpoint_steps, resolve_dataset, resolve_model, resolve_tokenizer


def _check_numbers(o: FinetuneOptions) -> None:
    positive = {
        "max_seq_len": o.max_seq_len, "max_num_tokens": o.max_num_tokens, "batch_size": o.batch_size,
        "max_num_steps": o.max_num_steps, "max_num_data_epochs": o.max_num_data_epochs,
        "gradient_accumulation_steps": o.gradient_accumulation_steps, "checkpoint_every_n_steps": o.checkpoint_every_n_steps,
        "keep_last_n_checkpoints": o.keep_last_n_checkpoints, "keep_last_n_models": o.keep_last_n_models,
        "validate_every_n_steps": o.validate_every_n_steps, "publish_metrics_every_n_steps": o.publish_metrics_every_n_steps,
        "distributed_timeout_minutes": o.distributed_timeout_minutes,
    }
    for key, value in positive.items():
        if value is not None and value < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {value}.")
    if o.learning_rate <= 0:
        raise UserError(f"config key 'learning_rate' must be positive, got {o.learning_rate}.")
    if o.lr_scheduler.num_warmup_steps < 0:
        raise UserError(f"config key 'lr_scheduler.num_warmup_steps' must be 0 or more, got {o.lr_scheduler.num_warmup_steps}.")
    if o.max_num_steps is not None and o.lr_scheduler.num_warmup_steps >= o.max_num_steps:
        if is_main_process():
            print(
                f"lmtune: warning: lr_scheduler.num_warmup_steps={o.lr_scheduler.num_warmup_steps} is not below max_num_steps={o.max_num_steps}; "
                f"warming up over {o.max_num_steps - 1} step(s) instead.",
                file=sys.stderr,
            )
    if o.max_num_steps is None and o.max_num_data_epochs is None:
        raise UserError("set max_num_steps or max_num_data_epochs, or the run would never end.")


def resolve_inputs(o: FinetuneOptions) -> tuple[ModelSpec, TokenizerSpec, Path, Path | None]:
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
    valid = data.valid
    if o.valid_dataset is not None:
        v = resolve_dataset(store, o.valid_dataset, "valid_dataset")
        valid = v.valid or v.test or v.train
    # Malformed records fail here, before any model is loaded.
    read_records(data.train)
    if valid is not None:
        read_records(valid)
    return model, tokenizer, data.train, valid


def _hf_token_count(tokenizer: TokenizerSpec) -> int:
    """Highest token id + 1 of a tokenizer.json, added tokens included (fairseq2's vocab_info leaves them out)."""
    if not tokenizer.path.is_dir() or not (tokenizer.path / "tokenizer.json").is_file():
        return 0
    import json

    data = json.loads((tokenizer.path / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
    return max(ids, default=-1) + 1


def check_model_fit(model: ModelSpec, tokenizer: TokenizerSpec, o: FinetuneOptions) -> None:
    """Token ids beyond the embedding table, or positions beyond the model's maximum, would crash a step."""
    from lmtune.loading import load_tokenizer, model_config

    config = model_config(model)
    vocab_size = getattr(config, "vocab_size", None)
    tok_size = max(load_tokenizer(tokenizer).vocab_info.size, _hf_token_count(tokenizer))
    if vocab_size is not None and tok_size > vocab_size:
        raise UserError(f"tokenizer '{tokenizer.name}' has {tok_size} tokens but model '{model.name}' has vocab_size={vocab_size}; use the model's own tokenizer or a model with a larger vocabulary.")
    model_max = getattr(config, "max_seq_len", None)
    if model_max is not None and o.max_seq_len > model_max:
        if is_main_process():
            print(f"lmtune: warning: max_seq_len={o.max_seq_len} is longer than model '{model.name}' allows; using max_seq_len={model_max}.", file=sys.stderr)
        o.max_seq_len = model_max


def run_instruction_finetune(out_dir: Path, o: FinetuneOptions) -> None:
    _check_numbers(o)
    prepare_distributed_env(os.environ)  # type: ignore[arg-type]
    model, tokenizer, train_file, valid_file = resolve_inputs(o)
    check_model_fit(model, tokenizer, o)
    main = is_main_process()
    checkpoint_dir = out_dir / "checkpoints"
    has_checkpoint = checkpoint_dir.is_dir() and bool(checkpoint_steps(checkpoint_dir))
    if main:
        lock_output_dir(out_dir)
        flat = to_dict(o)
        old = check_rerun(out_dir, flat, has_checkpoint)
        if has_checkpoint and old is not None and old.get("max_num_steps") != o.max_num_steps:
            print(f"lmtune: resuming {out_dir} with max_num_steps {old.get('max_num_steps')} -> {o.max_num_steps}: the cosine schedule is recomputed over the new total, so the learning rate continues from where that curve is at the resumed step.", file=sys.stderr)
        save_config(out_dir, dump_yaml(o))
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (checkpoint_dir / RUN_TOKENIZER_CARD).write_text(yaml.safe_dump(tokenizer.as_card(), sort_keys=False))

    from lmtune.fairseq2_config import finetune_config

    config = finetune_config(o, model, tokenizer, train_file, valid_file)

    from fairseq2.recipe.run import run

    from lmtune.recipes.instruction_finetune import InstructionFinetuneRecipe

    from fairseq2.task import TaskStopException
    from fairseq2.utils.validation import ValidationError

    from lmtune.preemption import PREEMPTED_EXIT_CODE

    try:
        run(InstructionFinetuneRecipe(), config, out_dir)
    except ValidationError as ex:
        raise UserError(f"the config is not valid for fairseq2: {ex}") from None
    except TaskStopException:
        steps = checkpoint_steps(checkpoint_dir)
        at = f" at step {steps[-1]}" if steps else ""
        raise Stopped(f"stopped on request after writing a checkpoint{at}; rerun the same command to resume.", PREEMPTED_EXIT_CODE) from None
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as ex:
        explained = explain_distributed_failure(ex, os.environ)
        if explained is None:
            raise
        raise RunFailed(explained) from None

    # [hf export, issue 4: lmtune/hf_export.py] rank 0 exports once training has finished.
    if main and o.export_hf != "none":
        from lmtune.hf_export import export_run_checkpoints

        export_run_checkpoints(checkpoint_dir, o.export_hf)
    # [end hf export]
