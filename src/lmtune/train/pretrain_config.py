"""``lmtune pretrain``'s flat options -> fairseq2's recipe config sections (imports torch and fairseq2)."""

from __future__ import annotations

from pathlib import Path

from fairseq2.recipe.config import (
    ActivationCheckpointingConfig,
    AdamWConfig,
    CommonSection,
    CosineAnnealingLRConfig,
    GangSection,
    GradAccumulationConfig,
    LRSchedulerSection,
    MetricRecordersConfig,
    OptimizerSection,
    RegimeSection,
    TensorBoardConfig,
    TrainerSection,
    WandbConfig,
)

from lmtune.catalog.specs import ModelSpec, TokenizerSpec
from lmtune.options.pretrain import PretrainOptions
from lmtune.train.fairseq2_config import model_section, publish_interval, tokenizer_section, training_precision, warmup_steps


def pretrain_config(o: PretrainOptions, model: ModelSpec, tokenizer: TokenizerSpec, train_files: list[Path], valid_files: list[Path], rows: int):  # type: ignore[no-untyped-def]
    from lmtune.recipes.pretrain import PretrainConfig, TextDataSection

    n_full = o.keep_last_n_checkpoints
    n_models = o.keep_last_n_models
    keep = max(n_full or 0, n_models or 0) or None
    save_model_only: bool | str = "all_but_last" if (n_models and (n_full or 0) <= 1) else False
    validates = bool(valid_files)

    return PretrainConfig(
        model=model_section(model, o.compile),
        tokenizer=tokenizer_section(tokenizer),
        data=TextDataSection(
            train_files=train_files,
            valid_files=valid_files,
            max_seq_len=o.max_seq_len,
            rows=rows,
            max_valid_tokens=o.max_valid_tokens,
            tokenizer_threads=o.tokenizer_threads,
            skip_invalid=o.skip_invalid,
        ),
        gang=GangSection(timeout=o.distributed_timeout_minutes),
        trainer=TrainerSection(
            data_parallelism=o.data_parallelism,
            mixed_precision=training_precision(o.dtype),
            grad_accumulation=GradAccumulationConfig(num_batches=o.gradient_accumulation_steps),
            activation_checkpointing=ActivationCheckpointingConfig(mode="layerwise" if o.activation_checkpointing else "off"),
            max_grad_norm=o.max_grad_norm,
        ),
        optimizer=OptimizerSection(
            config=AdamWConfig(lr=o.learning_rate, betas=o.optimizer.betas, eps=o.optimizer.eps, weight_decay=o.optimizer.weight_decay)
        ),
        lr_scheduler=LRSchedulerSection(
            config=CosineAnnealingLRConfig(num_warmup_steps=warmup_steps(o), final_lr_scale=o.lr_scheduler.final_lr_scale)  # type: ignore[arg-type]
        ),
        regime=RegimeSection(
            num_steps=o.max_num_steps,
            num_data_epochs=o.max_num_data_epochs,
            checkpoint_every_n_steps=o.checkpoint_every_n_steps,
            keep_last_n_checkpoints=keep,
            save_model_only=save_model_only,  # type: ignore[arg-type]
            validate_every_n_steps=o.validate_every_n_steps if validates else None,
            publish_metrics_every_n_steps=publish_interval(o, validates),  # type: ignore[arg-type]
        ),
        common=CommonSection(
            seed=o.seed,
            no_sweep_dir=True,  # OUT is OUT: no hash-named sub-folder
            cluster="none",  # lmtune.launch has set torch.distributed's variables already
            metric_recorders=MetricRecordersConfig(
                tensorboard=TensorBoardConfig(enabled=o.tensorboard),
                wandb=WandbConfig(enabled=o.wandb.enabled, project=o.wandb.project, entity=o.wandb.entity, run_name=o.wandb.run_name),
            ),
        ),
    )
