"""One point of a sweep: its options, whether it has finished, and running it in this process."""

from __future__ import annotations

from pathlib import Path

from lmtune.options.finetune import FinetuneOptions
from lmtune.sweep.grid import Point
from lmtune.sweep.sweep_dir import run_dir


def point_options(config_file: str | None, config: list[str], point: Point) -> FinetuneOptions:
    """The base config with the point's values on top (the grid wins over --config)."""
    from lmtune.options.load import load_config
    from lmtune.options.presets import resolve_config_file

    return load_config(FinetuneOptions, resolve_config_file(config_file), [*config, *point.config])


def is_finished(run_out: Path, o: FinetuneOptions) -> bool:
    """True when rerunning the point would train nothing: it reached max_num_steps, or stopped
    early and neither patience nor max_num_steps was raised since."""
    from lmtune.run_dir import checkpoint_dir, checkpoint_steps, read_early_stop
    from lmtune.training.validation_plan import continues_after_early_stop

    checkpoints = checkpoint_dir(run_out)
    steps = checkpoint_steps(checkpoints) if checkpoints.is_dir() else []
    if not steps:
        return False
    if o.max_num_steps is not None and steps[-1] >= o.max_num_steps:
        return True
    stop = read_early_stop(run_out)
    return stop is not None and not continues_after_early_stop(stop, o, steps[-1])


def run_point(out: Path, config_file: str | None, config: list[str], point: Point, verbose: bool = False) -> None:
    from lmtune.runs.finetune import run_instruction_finetune
    from lmtune.training.console import RunConsole

    run_instruction_finetune(run_dir(out, point), point_options(config_file, config, point), RunConsole(verbose=verbose))
