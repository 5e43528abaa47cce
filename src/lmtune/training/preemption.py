"""Preemption: on SIGUSR1 or SIGTERM, finish the step, write a checkpoint, exit 75.

SLURM signals a job before killing it (``#SBATCH --signal=USR1@120``, or SIGTERM).
fairseq2 0.8.1's trainer ignores a stop request while ``num_steps`` is set, and a
signal reaches ranks at different steps, so lmtune handles it itself: every step
the ranks agree (one all-reduce of a flag) whether any of them was signalled,
and all stop after the same step. The trainer then saves a checkpoint, which the
rerun (or the requeued job) resumes from.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
from fairseq2.gang import Gang, ReduceOperation
from fairseq2.task import Task, TaskStopException
from fairseq2.trainer import Trainer
from typing_extensions import override

from lmtune.fairseq2_internals import drop_step_limit

# sysexits' EX_TEMPFAIL: "try again later", which a requeue script can test for.
PREEMPTED_EXIT_CODE = 75


class StopFlag:
    """Set from a signal handler; read once per step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, gang: Gang) -> bool:
        """True on every rank when any rank was signalled."""
        if gang.size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=gang.device)
        gang.all_reduce(flag, ReduceOperation.MAX)
        return bool(flag.item() > 0)


class PreemptibleTrainer(Task):
    """fairseq2's Trainer, stopped cleanly (with a checkpoint) when the flag is agreed."""

    def __init__(self, trainer: Trainer, flag: StopFlag, gang: Gang, early_stopping: bool = False) -> None:
        self._trainer = trainer
        self._flag = flag
        self._gang = gang
        self._early_stopping = early_stopping
        self._preempted = False

    def check(self) -> None:
        """Called at the start of every step on every rank."""
        if self._flag.agreed(self._gang):
            self._preempted = True
            drop_step_limit(self._trainer)  # else fairseq2's post-step check never sees the request
            self._trainer.request_stop()

    @override
    def run(self) -> None:
        self._flag.install()  # fairseq2 installs its SIGUSR1 handler before run(); ours wins
        try:
            self._trainer.run()
        except TaskStopException:
            # fairseq2 ends an early stop as it ends a stop request; only the latter is a preemption.
            if self._preempted or not self._early_stopping:
                raise

    @override
    def request_stop(self) -> None:
        self._flag.requested = True

    @property
    @override
    def step_nr(self) -> int:
        return self._trainer.step_nr

    @override
    def close(self) -> None:
        self._trainer.close()
