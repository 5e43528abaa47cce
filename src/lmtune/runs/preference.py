"""``lmtune preference_finetune OUT``: check the inputs, compute the reference log-probs once, run the recipe.

What is preference tuning's own: the criterion, the pairs (their records checked before OUT is
touched), and dpo's reference model. The reference is never in memory while training: where its
log-probs are not cached, every rank loads it once fairseq2's gangs exist and before the policy is loaded (the policy's starting model by
default, from its card or the earlier run's checkpoint, never from OUT, so a resumed run cannot score
with the trained policy; for LoRA the base model with no adapters), computes its log-probs of its
share of the pairs that train, rank 0 gathers the shares and stores them beside the encoded pairs in the shared cache (OUT/reference without data_cache),
keyed by the data's and the model's fingerprints (``lmtune.preference.reference``): a rerun, a
resumed run or a sweep point on the same data reads them. The run's lifecycle is
``lmtune.runs.lifecycle``; fine-tuning's LoRA, model fit and early-stopping pieces are shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import (
    ModelSpec,
    TokenizerSpec,
    resolve_dataset,
    resolve_model,
    resolve_tokenizer,
)
from lmtune.errors import UserError
from lmtune.launch import prepare_distributed_env
from lmtune.options.preference import PreferenceOptions
from lmtune.preference.losses import check_criterion, needs_reference
from lmtune.run_dir import (
    EARLY_STOP_FILE,
    checkpoint_dir,
    clear_early_stop,
    early_stop_history,
    encoded_cache_root,
    is_main_process,
    read_early_stop,
    write_early_stop,
    write_hf_export_card,
    write_lora_card,
)
from lmtune.runs.finetune import check_model_fit
from lmtune.runs.lifecycle import (
    check_saved_steps,
    check_training_numbers,
    open_run_dir,
    run_training,
)
from lmtune.training.console import RunConsole
from lmtune.training.valid_metrics import ValidMetric
from lmtune.training.validation_plan import (
    ValidationPlan,
    continues_after_early_stop,
    early_stop_message,
)

# The validation metrics by the names users give them (early_stopping.metric).
VALID_METRICS = [
    ValidMetric(user_name="valid.loss", name="preference_loss", display_name="Preference Loss", higher_better=False),
    ValidMetric(user_name="valid.reward_accuracy", name="reward_accuracy", display_name="Reward Accuracy", higher_better=True),
    ValidMetric(user_name="valid.reward_margin", name="reward_margin", display_name="Reward Margin", higher_better=True),
    ValidMetric(user_name="valid.chosen_reward", name="chosen_reward", display_name="Chosen Reward", higher_better=True),
    ValidMetric(user_name="valid.chosen_logps", name="chosen_logps", display_name="Chosen Log-prob", higher_better=True),
]


@dataclass(kw_only=True)
class Split:
    """One data file of the run: where its encoded pairs and reference log-probs live."""

    file: Path
    encoded: Path | None
    """The cache entry (data_cache=true), built before fairseq2 starts."""
    reference_dir: Path
    cache: object | None = None
    """lmtune.data.encoded_cache.CachePlan, or None without data_cache."""


def check_preference_options(o: PreferenceOptions) -> None:
    check_criterion(o.criterion.name)
    if o.batch_size is not None:
        raise UserError(f"config key 'batch_size' is {o.batch_size}, and preference_finetune packs whole pairs into batches of max_num_tokens; leave batch_size unset.")
    c = o.criterion
    if c.beta is not None and c.beta <= 0:
        raise UserError(f"config key 'criterion.beta' must be positive, got {c.beta}.")
    if (c.nll_scale is not None and c.nll_scale < 0) or c.orpo_lambda < 0:
        raise UserError(f"config keys 'criterion.nll_scale' and 'criterion.orpo_lambda' must be 0 or more, got {c.nll_scale} and {c.orpo_lambda}.")
    if o.reference_model is not None and not needs_reference(c.name):
        print(f"lmtune: warning: criterion.name={c.name} is reference-free; reference_model={o.reference_model} is not used.", file=sys.stderr)


def plan_preference_validation(o: PreferenceOptions, valid: Path | None) -> ValidationPlan:
    es = o.early_stopping
    metric = None
    if es.metric is not None:
        if valid is None:
            raise UserError(f"early_stopping.metric={es.metric} needs held-out pairs, and the run has none; add valid.jsonl beside the training data or set valid_dataset=FILE.")
        by_name = {m.user_name: m for m in VALID_METRICS}
        if es.metric not in by_name:
            raise UserError(f"config key 'early_stopping.metric' is {es.metric}, which preference validation does not produce; valid: {', '.join(by_name)}.")
        metric = by_name[es.metric] if es.mode == "auto" else dataclasses.replace(by_name[es.metric], higher_better=es.mode == "max")
        if o.validate_every_n_steps is None:
            raise UserError(f"early_stopping.metric={es.metric} needs validations to compare; set validate_every_n_steps=N.")
        if es.patience is not None and es.patience < 1:
            raise UserError(f"config key 'early_stopping.patience' must be at least 1 (or null: never stop), got {es.patience}.")
    elif o.keep_best_n_checkpoints is not None:
        raise UserError("keep_best_n_checkpoints ranks checkpoints by a validation metric; set early_stopping.metric (e.g. valid.reward_accuracy) too.")
    if o.keep_best_n_checkpoints is not None and o.validate_every_n_steps is not None and o.checkpoint_every_n_steps % o.validate_every_n_steps:
        raise UserError(f"keep_best_n_checkpoints needs every checkpoint validated: checkpoint_every_n_steps={o.checkpoint_every_n_steps} must be a multiple of validate_every_n_steps={o.validate_every_n_steps}.")
    metrics = [metric if metric is not None and m.name == metric.name else m for m in VALID_METRICS] if valid is not None else []
    return ValidationPlan(task=None, labels=None, metrics=metrics, metric=metric)


def reference_spec(o: PreferenceOptions, model: ModelSpec, tokenizer: TokenizerSpec, store: CardStore) -> ModelSpec:
    """dpo's reference model: ``reference_model``, else the policy's starting model."""
    if o.reference_model is None:
        if model.checkpoint is None:
            raise UserError(f"criterion.name=dpo scores against the starting model, and model '{model.name}' has no weights (init: random); start from a trained model (e.g. model=last_checkpoint resume_checkpoint_dir=SFT_OUT/checkpoints), set reference_model=NAME, or use a reference-free criterion (simpo, orpo, cpo).")
        return model
    spec = resolve_model(store, o.reference_model, o.resume_checkpoint_dir)
    if spec.tokenizer is not None:
        from lmtune.preference.reference import check_same_tokenizer

        check_same_tokenizer(tokenizer, spec.tokenizer)
    return spec


def reference_key(ref: ModelSpec | None) -> str:
    """One folder per reference model (its card and checkpoint path), so runs on the same data with
    different references keep theirs; what the files hold is checked by their fingerprint."""
    what = json.dumps([ref.name, str(Path(ref.checkpoint).resolve()) if ref.checkpoint else None]) if ref is not None else "none"
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def plan_splits(out_dir: Path, o: PreferenceOptions, tokenizer: TokenizerSpec, files: dict[str, Path], ref: ModelSpec | None) -> dict[str, Split]:
    splits = {}
    key = reference_key(ref)
    for name, path in files.items():
        if o.data_cache:
            from lmtune.data.encoded_cache import plan_cache

            plan = plan_cache(encoded_cache_root(), path, tokenizer)
            splits[name] = Split(file=path, encoded=plan.directory, reference_dir=plan.directory / "reference" / key, cache=plan)
        else:
            splits[name] = Split(file=path, encoded=None, reference_dir=out_dir / "reference" / name)
    return splits


def prepare_data(splits: dict[str, Split], loaded: object, tokenizer: TokenizerSpec) -> None:
    """Rank 0, before fairseq2: the encoded pairs in the shared cache (reused, or built once)."""
    from lmtune.data.encoded_cache import ensure_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.preference.pairs import encode_pair_file

    encoder = ExampleEncoder(loaded, tokenizer.hf_dir)
    for split in splits.values():
        if split.cache is not None:
            ensure_cache(split.cache, lambda tmp, s=split: encode_pair_file(encoder, s.file, tmp))  # type: ignore[arg-type, misc]


def reference_values_path(split: Split) -> Path:
    from lmtune.preference.reference import VALUES

    return split.reference_dir / VALUES


def compute_references(o: PreferenceOptions, splits: dict[str, Split], ref: ModelSpec, lora_base: bool, loaded: object, tokenizer: TokenizerSpec, gang) -> None:
    """Every rank, inside fairseq2's run before the policy is loaded (``gang``: fairseq2's root gang):
    each split's reference log-probs, read from their cache or computed with the reference model,
    each rank its share of the pairs (``rank_share``), gathered and written by rank 0."""
    import numpy as np
    import torch

    from lmtune.adapters.build import load_any_model
    from lmtune.data.encoded_cache import fingerprint as data_fingerprint
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.dtypes import torch_dtype
    from lmtune.models.loading import model_width
    from lmtune.precision import choose_precision
    from lmtune.preference.pairs import EncodedPairs, encode_pair_file
    from lmtune.preference.reference import (
        cached_reference_logps,
        compute_reference_logps,
        gather_shares,
        model_fingerprint,
        rank_share,
        reference_fingerprint,
    )

    main = gang.rank == 0
    device = torch.device(gang.device)
    dtype = torch_dtype(choose_precision(o.dtype, device.type, model_width(ref)).dtype)
    model_print = model_fingerprint(ref, dtype=dtype, lora_base=lora_base)
    loaded_model: list[object] = []  # the reference model, loaded by the first split that computes

    def reference_model():
        if not loaded_model:
            if main:
                print(f"lmtune: loading the reference model {ref.name} ({str(dtype).removeprefix('torch.')})", file=sys.stderr)
            loaded_model.append(load_any_model(ref, device=device, dtype=dtype))
        return loaded_model[0]

    encoder = ExampleEncoder(loaded, tokenizer.hf_dir)
    for split in splits.values():
        pairs = EncodedPairs.load(split.encoded, split.file) if split.encoded is not None else encode_pair_file(encoder, split.file)
        needed = pairs.trainable(o.max_seq_len)
        fp = reference_fingerprint(data_fingerprint(split.file, tokenizer), model_print)

        def compute(ids, p=pairs, s=split):
            if main:
                shares = [len(part) for part in np.array_split(ids, gang.size)]
                each = "" if gang.size == 1 else f", each rank its share ({', '.join(f'rank {r}: {n:,}' for r, n in enumerate(shares))})"
                print(f"lmtune: computing the reference log-probs of {len(ids):,} pairs of {s.file.name} with {ref.name}{each} -> {s.reference_dir}", file=sys.stderr)
            mine = compute_reference_logps(reference_model(), p, rank_share(ids, gang.rank, gang.size), max_num_tokens=o.max_num_tokens)
            return gather_shares(gang, mine, len(ids))

        # Every rank reads the same verdict from the same files; the barrier keeps the next split's
        # verdict after rank 0's write (two splits may share one file).
        cached_reference_logps(split.reference_dir, fp, pairs, needed, compute, writer=main)
        gang.barrier()


def preference_config(o: PreferenceOptions, model: ModelSpec, tokenizer: TokenizerSpec, splits: dict[str, Split], plan: ValidationPlan, out_dir: Path):
    from fairseq2.recipe.config import RegimeSection

    from lmtune.recipes.instruction_finetune import EarlyStoppingSection
    from lmtune.recipes.preference_finetune import (
        PreferenceConfig,
        PreferenceDataSection,
    )
    from lmtune.runs.fairseq2_config import (
        instrument_section,
        kept_checkpoints,
        model_section,
        publish_interval,
        run_precision,
        tokenizer_section,
        training_sections,
    )

    train, valid = splits["train"], splits.get("valid")
    uses_reference = needs_reference(o.criterion.name)
    metric = plan.metric
    stopping = EarlyStoppingSection()
    if metric is not None and o.early_stopping.patience is not None:
        stopping = EarlyStoppingSection(
            metric=metric.user_name, patience=o.early_stopping.patience, min_delta=o.early_stopping.min_delta,
            history_file=early_stop_history(checkpoint_dir(out_dir)), stop_file=out_dir / EARLY_STOP_FILE,
        )  # fmt: skip
    keep, save_model_only = kept_checkpoints(o)  # type: ignore[arg-type]
    return PreferenceConfig(
        model=model_section(model, o.compile),
        tokenizer=tokenizer_section(tokenizer),
        data=PreferenceDataSection(
            train_file=train.file, valid_file=valid.file if valid else None, chat_tokenizer_dir=tokenizer.hf_dir,
            max_seq_len=o.max_seq_len, max_num_tokens=o.max_num_tokens,
            train_encoded=train.encoded, valid_encoded=valid.encoded if valid else None,
            train_reference=reference_values_path(train) if uses_reference else None,
            valid_reference=reference_values_path(valid) if (uses_reference and valid) else None,
        ),  # fmt: skip
        criterion=o.criterion,
        regime=RegimeSection(
            num_steps=o.max_num_steps, num_data_epochs=o.max_num_data_epochs, checkpoint_every_n_steps=o.checkpoint_every_n_steps,
            keep_last_n_checkpoints=keep, save_model_only=save_model_only,  # type: ignore[arg-type]
            validate_every_n_steps=o.validate_every_n_steps if valid is not None else None,
            publish_metrics_every_n_steps=publish_interval(o, valid is not None),  # type: ignore[arg-type]
            score_metric=metric.name if metric is not None else None, keep_best_n_checkpoints=o.keep_best_n_checkpoints,
        ),  # fmt: skip
        early_stopping=stopping,
        instrument=instrument_section(o),  # type: ignore[arg-type]
        **training_sections(o, run_precision(o, model)),  # type: ignore[arg-type]
    )


def run_preference_finetune(out_dir: Path, o: PreferenceOptions, console: RunConsole | None = None) -> None:
    console = console or RunConsole()
    check_training_numbers(o, {"keep_best_n_checkpoints": o.keep_best_n_checkpoints})
    check_preference_options(o)
    o = o.with_defaults()  # criterion.beta for the criterion: OUT's config says the value the loss uses
    prepare_distributed_env(os.environ)
    if o.model is None:
        raise UserError("config key 'model' is not set; name a model card or an SFT run's checkpoint (model=last_checkpoint resume_checkpoint_dir=SFT_OUT/checkpoints).")
    if o.dataset is None:
        raise UserError("config key 'dataset' is not set; give a .jsonl file of preference pairs, a directory or a dataset card.")
    store = CardStore()
    model = resolve_model(store, o.model, o.resume_checkpoint_dir)
    if model.family == "transformers":  # its wrapper computes its own loss: no fused loss for the response log-probs
        raise UserError(f"preference tuning does not take model '{o.model}', which lmtune builds through transformers; preference-tune a llama, qwen, olmo, mistral or gpt2 model.")
    tokenizer = resolve_tokenizer(store, o.tokenizer) if o.tokenizer else model.tokenizer
    if tokenizer is None:
        raise UserError(f"model '{o.model}' names no tokenizer; set tokenizer=NAME (a card with a 'tokenizer:' path).")
    data = resolve_dataset(store, o.dataset)
    if data.train is None:
        raise UserError(f"dataset={o.dataset} has no training split (train.jsonl).")
    valid_file = data.valid
    if o.valid_dataset is not None:
        v = resolve_dataset(store, o.valid_dataset, "valid_dataset")
        valid_file = v.valid or v.test or v.train
    from lmtune.adapters.plan import plan_lora

    lora = plan_lora(o, model)  # type: ignore[arg-type]
    if lora is not None:
        o = dataclasses.replace(o, lora=dataclasses.replace(lora.spec.settings))
    uses_reference = needs_reference(o.criterion.name)
    ref = reference_spec(o, model, tokenizer, store) if uses_reference else None
    from lmtune.models.loading import load_tokenizer

    loaded = load_tokenizer(tokenizer)
    o = dataclasses.replace(o, max_seq_len=check_model_fit(model if model.lora is None else model.lora.base, tokenizer, o, loaded))  # type: ignore[arg-type]
    if o.max_num_tokens < 2 * o.max_seq_len:
        raise UserError(f"max_num_tokens={o.max_num_tokens} is below twice max_seq_len={o.max_seq_len}; a batch holds both halves of a pair, so raise max_num_tokens to at least {2 * o.max_seq_len} or lower max_seq_len.")
    plan = plan_preference_validation(o, valid_file)
    files = {"train": data.train} | ({"valid": valid_file} if valid_file is not None else {})
    splits = plan_splits(out_dir, o, tokenizer, files, ref)
    from lmtune.preference.records import read_preference_pairs

    for split in splits.values():
        if split.cache is None or split.cache.stale is not None:  # type: ignore[attr-defined]
            read_preference_pairs(split.file)  # malformed records fail here, before OUT is touched
    main = is_main_process()
    steps = check_saved_steps(out_dir)
    earlier_stop = read_early_stop(out_dir) if steps else None
    if earlier_stop is not None and not continues_after_early_stop(earlier_stop, o, steps[-1]):  # type: ignore[arg-type]
        if main:
            print(f"lmtune: {earlier_stop.get('message', 'this run stopped early')} (raise early_stopping.patience or max_num_steps to continue)", file=sys.stderr)
        return
    if main:
        open_run_dir(out_dir, o, tokenizer)
        if lora is not None:
            write_lora_card(checkpoint_dir(out_dir), lora.spec.as_card())
        if model.hf_export is not None:
            write_hf_export_card(checkpoint_dir(out_dir), model.hf_export)

    config = preference_config(o, lora.spec.base if lora is not None else model, tokenizer, splits, plan, out_dir)
    if lora is not None:
        from lmtune.adapters.base_family import lora_base_family_key
        from lmtune.runs.fairseq2_config import lora_section

        config.lora = lora_section(lora)
        config.model.family = lora_base_family_key(config.model.family)
    if plan.metric is not None and earlier_stop is not None:
        config.early_stopping.forgive_at_resume = o.early_stopping.patience == earlier_stop["patience"]
        if main:
            clear_early_stop(out_dir)

    def before_run() -> None:  # rank 0, before fairseq2 whose ranks map the caches
        prepare_data(splits, loaded, tokenizer)

    def reference_step(gang) -> None:  # every rank, in fairseq2's run, before the policy loads
        assert ref is not None
        compute_references(o, splits, ref, lora is not None and model.lora is None, loaded, tokenizer, gang)
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the reference model is gone: its memory goes back before the policy loads

    def record_early_stop() -> None:
        record = read_early_stop(out_dir) if plan.metric is not None else None
        if record is not None and "message" not in record:
            message = early_stop_message(record, plan.metric, o.early_stopping.min_delta)  # type: ignore[arg-type]
            write_early_stop(out_dir, {**record, "patience": o.early_stopping.patience, "max_num_steps": o.max_num_steps, "message": message})
            print(f"lmtune: {message}.", file=sys.stderr)

    from lmtune.recipes.preference_finetune import PreferenceFinetuneRecipe
    from lmtune.runs.fairseq2_config import run_precision

    run_training(out_dir, o, recipe=PreferenceFinetuneRecipe(console, {plan.metric.name: plan.metric.higher_better} if plan.metric else None, reference_step if ref is not None else None), config=config, console=console, plan=plan, precision=run_precision(o, model), before_run=before_run, after_run=record_early_stop)
