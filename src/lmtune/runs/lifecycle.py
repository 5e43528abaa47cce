"""A training run before and after fairseq2 runs it: what every recipe shares.

The order, for every recipe (``runs/finetune.py`` and ``runs/pretrain.py`` add only what is theirs):

1. ``check_training_numbers``: the keys every run has, in one sentence each, before anything is read.
2. the recipe resolves and checks its own inputs (nothing in OUT is touched yet).
3. ``open_run_dir`` (rank 0): OUT's lock, the rerun check against the saved config, the resume
   message, the effective config (OUT/lmtune.yaml) and the tokenizer card beside the checkpoints.
4. ``run_training``: fairseq2's run with its errors turned into sentences, a stop request turned
   into the preemption exit, then the console's summary, OUT/plots and the export.

A new recipe is what is new: its key table on ``lmtune.options.training.TrainingOptions``, its
fairseq2 recipe in ``recipes/``, and a module here that checks its inputs and calls these steps.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.catalog.specs import TokenizerSpec
from lmtune.errors import RunFailed, Stopped, UserError
from lmtune.launch import explain_distributed_failure
from lmtune.options.instrument import check_instrument_options
from lmtune.options.load import dump_yaml, to_dict
from lmtune.options.training import TrainingOptions
from lmtune.run_dir import (
    check_rerun,
    check_resume_checkpoint,
    checkpoint_dir,
    checkpoint_steps,
    is_main_process,
    lock_output_dir,
    save_config,
    write_tokenizer_card,
)
from lmtune.safe_load import check_checkpoint_objects
from lmtune.training.allocator import (
    keep_freed_blocks_for_reuse,
    return_large_blocks_when_freed,
)

if TYPE_CHECKING:
    from lmtune.precision import Precision
    from lmtune.training.console import RunConsole
    from lmtune.training.validation_plan import ValidationPlan


def check_training_numbers(o: TrainingOptions, own: dict[str, int | None]) -> None:
    """The numbers every training run has; ``own``: the recipe's own keys that must be at least 1."""
    check_instrument_options(o)  # warmup_ratio, profiler.* (lmtune.options.instrument)
    positive = {
        "max_seq_len": o.max_seq_len, "max_num_tokens": o.max_num_tokens, "batch_size": o.batch_size,
        "max_num_steps": o.max_num_steps, "max_num_data_epochs": o.max_num_data_epochs,
        "gradient_accumulation_steps": o.gradient_accumulation_steps, "checkpoint_every_n_steps": o.checkpoint_every_n_steps,
        "keep_last_n_checkpoints": o.keep_last_n_checkpoints, "keep_last_n_models": o.keep_last_n_models,
        "validate_every_n_steps": o.validate_every_n_steps, "publish_metrics_every_n_steps": o.publish_metrics_every_n_steps,
        "distributed_timeout_minutes": o.distributed_timeout_minutes, **own,
    }  # fmt: skip
    for key, value in positive.items():
        if value is not None and value < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {value}.")
    if o.learning_rate <= 0:
        raise UserError(f"config key 'learning_rate' must be positive, got {o.learning_rate}.")
    if o.lr_scheduler.num_warmup_steps < 0:
        raise UserError(f"config key 'lr_scheduler.num_warmup_steps' must be 0 or more, got {o.lr_scheduler.num_warmup_steps}.")
    if o.max_num_steps is None and o.max_num_data_epochs is None:
        raise UserError("set max_num_steps or max_num_data_epochs, or the run would never end.")
    if o.max_num_steps is not None and o.lr_scheduler.num_warmup_steps >= o.max_num_steps and is_main_process():
        print(
            f"lmtune: warning: lr_scheduler.num_warmup_steps={o.lr_scheduler.num_warmup_steps} is not below max_num_steps={o.max_num_steps}; "
            f"warming up over {o.max_num_steps - 1} step(s) instead.",
            file=sys.stderr,
        )


def saved_steps(out_dir: Path) -> list[int]:
    """The complete checkpoints an earlier run left in OUT (none for a fresh OUT)."""
    where = checkpoint_dir(out_dir)
    return checkpoint_steps(where) if where.is_dir() else []


def check_saved_steps(out_dir: Path) -> list[int]:
    """Every rank, before OUT is touched: ``saved_steps``, with the checkpoint a resume starts
    from checked whole (a damaged one is named in one sentence, run_dir.check_resume_checkpoint) and
    holding nothing lmtune will not unpickle (a planted file is refused, lmtune.safe_load)."""
    check_resume_checkpoint(checkpoint_dir(out_dir))
    check_checkpoint_objects(checkpoint_dir(out_dir))
    return saved_steps(out_dir)


def open_run_dir(out_dir: Path, o: TrainingOptions, tokenizer: TokenizerSpec, *, resumable: Iterable[str] = ()) -> None:
    """Rank 0, once the inputs are checked: locks OUT, refuses a rerun whose changes would not match
    its checkpoints (``resumable``: the recipe's keys that may change besides run_dir's), says how a
    changed max_num_steps continues, and saves the effective config and the tokenizer card."""
    lock_output_dir(out_dir)
    has_checkpoint = bool(saved_steps(out_dir))
    skip = set(resumable)
    old = check_rerun(out_dir, {k: v for k, v in to_dict(o).items() if k not in skip}, has_checkpoint)
    if has_checkpoint and old is not None and old.get("max_num_steps") != o.max_num_steps:
        print(f"lmtune: resuming {out_dir} with max_num_steps {old.get('max_num_steps')} -> {o.max_num_steps}: the cosine schedule is recomputed over the new total, so the learning rate continues from where that curve is at the resumed step.", file=sys.stderr)
    save_config(out_dir, dump_yaml(o))
    write_tokenizer_card(checkpoint_dir(out_dir), tokenizer.as_card())


def run_training(
    out_dir: Path,
    o: TrainingOptions,
    *,
    recipe: object,
    config: object,
    console: RunConsole,
    plan: ValidationPlan,
    precision: Precision,
    before_run: Callable[[], None] | None = None,
    after_run: Callable[[], None] | None = None,
) -> None:
    """Runs ``recipe`` on ``config`` with fairseq2 into OUT, and what follows a run.

    ``precision``: what the config's trainer section computes in, said under the header.
    ``before_run`` and ``after_run`` (rank 0): the recipe's own steps after the console's header
    and after a completed run, before the summary."""
    import torch

    if o.release_freed_memory:
        return_large_blocks_when_freed()  # the RSS follows the live tensors (lmtune.training.allocator)
    elif not torch.cuda.is_available():
        keep_freed_blocks_for_reuse()  # a CPU step's activations reuse the last step's pages (lmtune.training.allocator)
    from fairseq2.recipe.run import run
    from fairseq2.task import TaskStopException
    from fairseq2.utils.validation import ValidationError

    from lmtune.training.preemption import PREEMPTED_EXIT_CODE

    main = is_main_process()
    regime = config.regime  # type: ignore[attr-defined]
    console.header(o, out_dir, plan, regime.publish_metrics_every_n_steps, validates=regime.validate_every_n_steps is not None)  # type: ignore[arg-type]
    console.write(f"lmtune: {precision.line}")
    if main and before_run is not None:  # after the header, so the run's first line says what runs
        before_run()
    try:
        with console.running():
            run(recipe, config, out_dir, no_progress=not console.verbose)  # type: ignore[arg-type]
    except ValidationError as ex:
        raise UserError(f"the config is not valid for fairseq2: {ex}") from None
    except TaskStopException:
        console.summary()
        steps = saved_steps(out_dir)
        at = f" at step {steps[-1]}" if steps else ""
        raise Stopped(f"stopped on request after writing a checkpoint{at}; rerun the same command to resume.", PREEMPTED_EXIT_CODE) from None
    except UserError as ex:
        steps = saved_steps(out_dir)
        if not steps:
            raise
        raise UserError(f"{str(ex).rstrip('.')} (the checkpoints up to step {steps[-1]} are kept; fix it and rerun to resume).") from None
    except KeyboardInterrupt:
        raise
    except Exception as ex:
        explained = explain_distributed_failure(ex, os.environ)
        if explained is None:
            raise
        raise RunFailed(explained) from None

    if main and after_run is not None:
        after_run()
    console.summary()
    if main:  # OUT/plots/: loss, learning rate, tokens/s, task scores (lmtune/report/plots.py)
        from lmtune.report.plots import write_run_plots

        write_run_plots(out_dir)
    if main and o.export_hf != "none":
        from lmtune.export.hf_dir import export_run_checkpoints

        export_run_checkpoints(checkpoint_dir(out_dir), o.export_hf)
