"""Early stopping: stop after ``patience`` validations without improvement.

fairseq2 0.8.1's trainer calls an ``EarlyStopper`` with each scheduled validation's
score (already signed so that higher is better) on rank 0, and stops every rank when
it says so; its recipes pass none, so lmtune installs this one.

Resume: the stopper's state (best score, its step, validations since) is a function
of the scores up to the step a run resumes from. Every score goes to
``OUT/checkpoints/early_stopping.jsonl``; a resumed run replays the lines up to its
checkpoint's step and drops the rest (a run killed after a validation but before the
next checkpoint validates that step again), so it stops where an uninterrupted run
stops. Validations outside the schedule (at the last step, on preemption) never reach
the stopper, so they do not count either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairseq2.early_stopper import EarlyStopper
from typing_extensions import override

from lmtune.errors import UserError


@dataclass(kw_only=True)
class StopState:
    reference: float | None = None
    """The score of the last validation that counted as an improvement (by more than min_delta)."""
    bad: int = 0
    """Validations since then."""
    best: float | None = None
    best_step: int = 0
    """The best score and its step as fairseq2 ranks checkpoints: the highest, the later on a tie."""


def _read_history(file: Path) -> list[dict[str, Any]]:
    """The records of ``file``, plain JSON (never unpickled); anything else is one sentence."""
    entries = []
    for n, line in enumerate(file.read_bytes().splitlines(), 1):
        try:
            entry = json.loads(line)
            valid = isinstance(entry, dict) and isinstance(entry.get("step"), int) and isinstance(entry.get("metric"), str) and isinstance(entry.get("score"), (int, float))
        except ValueError:
            valid = False
        if not valid:
            raise UserError(f"{file}:{n} is not an early-stopping record (a JSON object with step, metric and score); delete the file to forget the recorded scores.")
        entries.append(entry)
    return entries


class PatienceStopper(EarlyStopper):
    def __init__(self, metric: str, history_file: Path, stop_file: Path, patience: int | None, min_delta: float) -> None:
        self._metric = metric
        self._history_file = history_file
        self._stop_file = stop_file
        self._patience = patience
        self._min_delta = min_delta
        self.state = StopState()

    def restore(self, resumed_step: int, forgive: bool = False) -> None:
        """Replays the scores up to ``resumed_step``; ``forgive`` restarts the count there
        (the user raised max_num_steps after an early stop)."""
        kept = []
        if self._history_file.is_file():
            for entry in _read_history(self._history_file):
                if entry["step"] <= resumed_step and entry["metric"] == self._metric:
                    kept.append(entry)
                    self._update(entry["step"], entry["score"])
        if forgive:
            self.state.bad = 0
        self._history_file.parent.mkdir(parents=True, exist_ok=True)
        self._history_file.write_text("".join(json.dumps(e) + "\n" for e in kept))

    def _update(self, step: int, score: float) -> None:
        s = self.state
        if s.reference is None or score > s.reference + self._min_delta:
            s.reference, s.bad = score, 0
        else:
            s.bad += 1
        if s.best is None or score >= s.best:
            s.best, s.best_step = score, step

    def exhausted(self) -> bool:
        return self._patience is not None and self.state.bad >= self._patience

    @override
    def should_stop(self, step_nr: int, score: float) -> bool:
        self._update(step_nr, score)
        with self._history_file.open("a") as fp:
            fp.write(json.dumps({"step": step_nr, "metric": self._metric, "score": score}) + "\n")
        if not self.exhausted():
            return False
        s = self.state
        record = {"step": step_nr, "metric": self._metric, "best_step": s.best_step, "best_score": s.best, "bad": s.bad}
        self._stop_file.write_text(json.dumps(record) + "\n")
        return True
