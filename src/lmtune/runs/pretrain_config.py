"""``lmtune pretrain``'s flat options -> fairseq2's recipe config sections (imports torch and fairseq2)."""

from __future__ import annotations

from pathlib import Path

from fairseq2.recipe.config import RegimeSection

from lmtune.catalog.specs import ModelSpec, TokenizerSpec
from lmtune.options.pretrain import PretrainOptions
from lmtune.runs.fairseq2_config import (
    instrument_section,
    kept_checkpoints,
    model_section,
    publish_interval,
    run_precision,
    tokenizer_section,
    training_sections,
)


def pretrain_config(o: PretrainOptions, model: ModelSpec, tokenizer: TokenizerSpec, train_files: list[Path], valid_files: list[Path], rows: int):
    from lmtune.recipes.pretrain import PretrainConfig, TextDataSection

    keep, save_model_only = kept_checkpoints(o)
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
        regime=RegimeSection(
            num_steps=o.max_num_steps,
            num_data_epochs=o.max_num_data_epochs,
            checkpoint_every_n_steps=o.checkpoint_every_n_steps,
            keep_last_n_checkpoints=keep,
            save_model_only=save_model_only,  # type: ignore[arg-type]
            validate_every_n_steps=o.validate_every_n_steps if validates else None,
            publish_metrics_every_n_steps=publish_interval(o, validates),  # type: ignore[arg-type]
        ),
        instrument=instrument_section(o),
        **training_sections(o, run_precision(o, model)),
    )
