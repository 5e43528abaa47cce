"""One point of a sweep: its options, whether it has finished, and running it in this process.

A sweep runs one training verb over its grid (``--recipe``): ``instruction_finetune`` (the
default) or ``preference_finetune``. Each point trains exactly as that verb would with the
point's values, so what a verb shares between runs on the same data (the encoded cache,
preference tuning's reference log-probs) is shared between the points too.
"""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import UserError
from lmtune.options.training import TrainingOptions
from lmtune.sweep.grid import Point
from lmtune.sweep.sweep_dir import run_dir

DEFAULT_RECIPE = "instruction_finetune"
RECIPES = ("instruction_finetune", "preference_finetune")


def check_recipe(recipe: str, where: str = "--recipe") -> None:
    if recipe not in RECIPES:
        raise UserError(f"{where} {recipe!r} is not a verb a sweep runs; valid: {', '.join(RECIPES)}.")


def options_class(recipe: str) -> type[TrainingOptions]:
    check_recipe(recipe)
    if recipe == "preference_finetune":
        from lmtune.options.preference import PreferenceOptions

        return PreferenceOptions
    from lmtune.options.finetune import FinetuneOptions

    return FinetuneOptions


def point_options(config_file: str | None, config: list[str], point: Point, recipe: str = DEFAULT_RECIPE) -> TrainingOptions:
    """The base config with the point's values on top (the grid wins over --config), as ``recipe``'s keys."""
    from lmtune.options.load import load_config
    from lmtune.options.presets import resolve_config_file

    return load_config(options_class(recipe), resolve_config_file(config_file), [*config, *point.config])


def is_finished(run_out: Path, o: TrainingOptions) -> bool:
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
    return stop is not None and not continues_after_early_stop(stop, o, steps[-1])  # type: ignore[arg-type]


def run_point(out: Path, config_file: str | None, config: list[str], point: Point, verbose: bool = False, recipe: str = DEFAULT_RECIPE) -> None:
    from lmtune.training.console import RunConsole

    o = point_options(config_file, config, point, recipe)
    if recipe == "preference_finetune":
        from lmtune.runs.preference import run_preference_finetune

        run_preference_finetune(run_dir(out, point), o, RunConsole(verbose=verbose))  # type: ignore[arg-type]
        return
    from lmtune.runs.finetune import run_instruction_finetune

    run_instruction_finetune(run_dir(out, point), o, RunConsole(verbose=verbose))  # type: ignore[arg-type]
