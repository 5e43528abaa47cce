"""lmtune's flat options -> fairseq2's recipe config sections (imports torch and fairseq2)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from fairseq2.recipe.config import (
    ActivationCheckpointingConfig,
    AdamWConfig,
    CommonSection,
    CosineAnnealingLRConfig,
    GangSection,
    GradAccumulationConfig,
    LRSchedulerSection,
    MetricRecordersConfig,
    MixedPrecisionConfig,
    ModelSection,
    OptimizerSection,
    RegimeSection,
    TensorBoardConfig,
    TokenizerSection,
    TorchProfilerConfig,
    TrainerSection,
    WandbConfig,
)

from lmtune.catalog.specs import ModelSpec, TokenizerSpec
from lmtune.dtypes import torch_dtype
from lmtune.options.finetune import FinetuneOptions
from lmtune.options.instrument import warmup_steps as instrument_warmup_steps
from lmtune.options.pretrain import PretrainOptions
from lmtune.options.training import TrainingOptions
from lmtune.precision import Precision, choose_precision
from lmtune.training.instruments import InstrumentSection
from lmtune.training.validation_plan import ValidationPlan

if TYPE_CHECKING:
    from lmtune.adapters.plan import LoraPlan
    from lmtune.recipes.instruction_finetune import LoraSection


def run_precision(o: TrainingOptions, model: ModelSpec) -> Precision:
    """What this run computes in (lmtune.precision): ``o.dtype`` on this machine's device, for ``model``'s width."""
    from lmtune.models.loading import model_width
    from lmtune.run_dir import is_main_process

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_precision(o.dtype, device_type, model_width(model), warn=is_main_process())


def training_precision(precision: Precision, data_parallelism: str) -> MixedPrecisionConfig:
    """Weights and optimizer state stay float32; forward and backward (training and validation) autocast
    to ``precision.dtype`` (fairseq2's "auto" mode: autocast on the gangs' device, the CPU included).
    Under FSDP, fairseq2's "static" mode: FSDP's own mixed precision across ranks (autocast on one)."""
    if precision.dtype == "float32":
        return MixedPrecisionConfig(mode="off")
    return MixedPrecisionConfig(mode="static" if data_parallelism == "fsdp" else "auto", dtype=torch_dtype(precision.dtype))


def warmup_steps(o: FinetuneOptions | PretrainOptions) -> int:
    """The warmup, shortened to leave one cosine step when max_num_steps is smaller (a quick smoke run of a preset)."""
    warmup = instrument_warmup_steps(o)  # lr_scheduler.num_warmup_steps, or from warmup_ratio
    if o.max_num_steps is not None and warmup >= o.max_num_steps:
        return o.max_num_steps - 1
    return warmup


def model_section(model: ModelSpec, compile: bool = False) -> ModelSection:
    return ModelSection(
        name=None,
        path=model.checkpoint,
        family=model.family,
        arch=model.arch,
        config_overrides=model.config or None,
        dtype=torch.float32,
        compile=compile,
    )


def tokenizer_section(tokenizer: TokenizerSpec) -> TokenizerSection:
    return TokenizerSection(name=None, path=tokenizer.path, family=tokenizer.family, config_overrides=tokenizer.config or None)


def publish_interval(o: FinetuneOptions, validates: bool) -> int:
    """fairseq2 checkpoints and validates only on metric-publishing steps: make them line up."""
    every = o.publish_metrics_every_n_steps
    intervals = [o.checkpoint_every_n_steps] + ([o.validate_every_n_steps] if validates and o.validate_every_n_steps else [])
    reps = getattr(o, "representations", None)  # representations are taken at publishing steps (lmtune.training.representations)
    if reps is not None and reps.every_n_steps and validates:
        intervals.append(reps.every_n_steps)
    fitted = every
    for n in intervals:
        fitted = math.gcd(fitted, n)
    if fitted != every:
        print(f"lmtune: publishing metrics every {fitted} steps instead of {every}, so that checkpoints, validation and saved representations fall on publishing steps.", file=sys.stderr)
    return fitted


def kept_checkpoints(o: FinetuneOptions | PretrainOptions) -> tuple[int | None, bool | str]:
    """keep_last_n_checkpoints / keep_last_n_models -> fairseq2's keep_last_n_checkpoints and save_model_only."""
    n_full = o.keep_last_n_checkpoints
    n_models = o.keep_last_n_models
    keep = max(n_full or 0, n_models or 0) or None
    save_model_only: bool | str = "all_but_last" if (n_models and (n_full or 0) <= 1) else False
    return keep, save_model_only


def training_sections(o: FinetuneOptions | PretrainOptions, precision: Precision) -> dict[str, object]:
    """The sections both recipes set alike from the keys they share: gang, trainer, optimizer,
    lr_scheduler, common."""
    return {
        "gang": GangSection(timeout=o.distributed_timeout_minutes),
        "trainer": TrainerSection(
            data_parallelism=o.data_parallelism,
            mixed_precision=training_precision(precision, o.data_parallelism),
            grad_accumulation=GradAccumulationConfig(num_batches=o.gradient_accumulation_steps),
            activation_checkpointing=ActivationCheckpointingConfig(mode="layerwise" if o.activation_checkpointing else "off"),
            max_grad_norm=o.max_grad_norm,
        ),
        "optimizer": OptimizerSection(
            config=AdamWConfig(
                lr=o.learning_rate, betas=o.optimizer.betas, eps=o.optimizer.eps, weight_decay=o.optimizer.weight_decay,
                # On CPU torch's default AdamW loops over the parameters in Python (~10 ops each); its fused kernel
                # updates them in one pass, 4x faster (bench/RESULTS.md). On GPU fairseq2's default (foreach) stays.
                impl="auto" if torch.cuda.is_available() else "fused",
            )
        ),
        "lr_scheduler": LRSchedulerSection(
            config=CosineAnnealingLRConfig(num_warmup_steps=warmup_steps(o), final_lr_scale=o.lr_scheduler.final_lr_scale)
        ),
        "common": CommonSection(
            seed=o.seed,
            no_sweep_dir=True,  # OUT is OUT: no hash-named sub-folder
            cluster="none",  # lmtune.launch has set torch.distributed's variables already
            metric_recorders=MetricRecordersConfig(
                tensorboard=TensorBoardConfig(enabled=o.tensorboard),
                wandb=WandbConfig(enabled=o.wandb.enabled, project=o.wandb.project, entity=o.wandb.entity, run_name=o.wandb.run_name),
            ),
        ),
    }


def instrument_section(o: FinetuneOptions | PretrainOptions) -> InstrumentSection:
    """grad_stats and profiler.* (lmtune.training.instruments); the profiler is lmtune's, not fairseq2's common.profilers."""
    p = o.profiler
    profiler = TorchProfilerConfig(
        enabled=p.enabled, skip_n_steps=p.skip_n_steps, wait_n_steps=p.wait_n_steps,
        num_warmup_steps=p.num_warmup_steps, num_active_steps=p.num_active_steps, repeat=p.repeat,
    )  # fmt: skip
    return InstrumentSection(grad_stats=o.grad_stats, profiler=profiler)


def lora_section(plan: LoraPlan) -> LoraSection:
    from lmtune.recipes.instruction_finetune import LoraSection

    s = plan.spec
    return LoraSection(settings=s.settings, seed=s.seed, base_name=s.base.name, adapter_init=plan.adapter_init)


def finetune_config(o: FinetuneOptions, model: ModelSpec, tokenizer: TokenizerSpec, train_file: Path, valid_file: Path | None, plan: ValidationPlan | None = None, out_dir: Path | None = None, encoded: dict[Path, Path] | None = None, encode_workers: int = 1):
    """``encoded``: data file -> its cache entry (lmtune.data.encoded_cache), when data_cache is on."""
    from lmtune.recipes.instruction_finetune import (
        EarlyStoppingSection,
        FinetuneConfig,
        RepresentationsSection,
        SftDataSection,
        TaskEvalSection,
    )
    from lmtune.run_dir import EARLY_STOP_FILE, checkpoint_dir, early_stop_history

    plan = plan or ValidationPlan()
    metric = plan.metric
    stopping = EarlyStoppingSection()
    if metric is not None and o.early_stopping.patience is not None and out_dir is not None:
        stopping = EarlyStoppingSection(
            metric=metric.user_name, patience=o.early_stopping.patience, min_delta=o.early_stopping.min_delta,
            history_file=early_stop_history(checkpoint_dir(out_dir)), stop_file=out_dir / EARLY_STOP_FILE,
        )  # fmt: skip
    keep, save_model_only = kept_checkpoints(o)

    return FinetuneConfig(
        model=model_section(model, o.compile),
        tokenizer=tokenizer_section(tokenizer),
        data=SftDataSection(
            train_file=train_file,
            valid_file=valid_file,
            chat_tokenizer_dir=tokenizer.hf_dir,
            max_seq_len=o.max_seq_len,
            max_num_tokens=o.max_num_tokens,
            batch_size=o.batch_size,
            packing=o.packing,
            train_encoded=(encoded or {}).get(train_file),
            valid_encoded=(encoded or {}).get(valid_file) if valid_file is not None else None,
            encode_workers=encode_workers,
        ),
        regime=RegimeSection(
            num_steps=o.max_num_steps,
            num_data_epochs=o.max_num_data_epochs,
            checkpoint_every_n_steps=o.checkpoint_every_n_steps,
            keep_last_n_checkpoints=keep,
            save_model_only=save_model_only,  # type: ignore[arg-type]
            validate_every_n_steps=o.validate_every_n_steps if valid_file is not None else None,
            publish_metrics_every_n_steps=publish_interval(o, valid_file is not None),
            score_metric=metric.name if metric is not None else None,
            keep_best_n_checkpoints=o.keep_best_n_checkpoints,
        ),
        eval=TaskEvalSection(task=plan.task, labels=plan.labels, max_examples=o.max_eval_examples, max_gen_len=o.eval_max_gen_len),
        early_stopping=stopping,
        instrument=instrument_section(o),
        representations=RepresentationsSection(
            every_n_steps=o.representations.every_n_steps if valid_file is not None else None, num_examples=o.representations.num_examples,
            layers=o.representations.layers, out_dir=out_dir,
        ),  # fmt: skip
        **training_sections(o, run_precision(o, model)),
    )
