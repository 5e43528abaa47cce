"""The Task both recipes return: fairseq2's trainer, stopped cleanly on preemption, with the
console following its steps, checkpoints and resume."""

from __future__ import annotations

from fairseq2.recipe import RecipeContext
from fairseq2.recipe.config import RegimeSection
from fairseq2.trainer import Trainer

from lmtune.training.console import RunConsole
from lmtune.training.instruments import InstrumentSection, attach_instruments
from lmtune.training.nll_unit import NllTrainUnit
from lmtune.training.preemption import PreemptibleTrainer, StopFlag


def training_task(context: RecipeContext, trainer: Trainer, unit: NllTrainUnit, console: RunConsole | None, *, early_stopping: bool = False, instruments: InstrumentSection | None = None, regime: RegimeSection | None = None) -> PreemptibleTrainer:
    task = PreemptibleTrainer(trainer, StopFlag(), context.gangs.root, early_stopping=early_stopping)
    if instruments is not None and regime is not None:
        attach_instruments(context, trainer, unit, instruments, regime.publish_metrics_every_n_steps, regime.num_steps)
    unit.on_step = task.check
    if console is None:
        return task
    resumed = context.get_checkpoint_manager().maybe_get_last_step_number(exclude_model_only=True)
    if resumed is not None:
        console.resuming(resumed)
    trainer.register_checkpoint_save_hook(lambda args: console.checkpoint_saved(args.step_nr))

    def on_step() -> None:
        task.check()
        console.step(trainer.step_nr)

    unit.on_step = on_step
    return task
