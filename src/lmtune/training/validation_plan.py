"""What a run's validation computes, checked before training: the task scored, the
metric that stops the run early and ranks its checkpoints, and whether a rerun of a
run that stopped early goes on.

Every mistake here (a metric the validation does not produce, early stopping without
validation, keep_best_n_checkpoints without a metric) is one sentence before step 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtune.errors import UserError
from lmtune.options.finetune import FinetuneOptions
from lmtune.training.valid_metrics import ValidMetric, choose_metric, valid_metrics

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer


@dataclass(kw_only=True)
class ValidationPlan:
    task: str | None = None
    """The task scored on greedy completions at each validation; None: loss only."""
    labels: list[str] | None = None
    metrics: list[ValidMetric] = field(default_factory=list)
    """Every metric the validation produces."""
    metric: ValidMetric | None = None
    """early_stopping.metric, when set."""


def plan_validation(o: FinetuneOptions, valid: Path | None, card_task: str | None, card_labels: list[str] | None, tokenizer: Tokenizer, chat_dir: Path | None) -> ValidationPlan:
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import read_records
    from lmtune.score.tasks import check_references

    es = o.early_stopping
    task = None if o.eval_task == "none" else (card_task if o.eval_task == "auto" else o.eval_task)
    labels = card_labels
    if valid is None:
        if o.eval_task not in ("auto", "none"):
            raise UserError(f"eval_task={o.eval_task} scores the validation split, and the run has none; add valid.jsonl beside the training data or set valid_dataset=FILE.")
        if es.metric is not None:
            raise UserError(f"early_stopping.metric={es.metric} needs a validation split, and the run has none; add valid.jsonl beside the training data or set valid_dataset=FILE.")
        task = None
    else:
        records = read_records(valid)[: o.max_eval_examples]
        encoder = ExampleEncoder(tokenizer, chat_dir)
        references = [(r.where, encoder.reference(r)) for r in records]
        if task is not None and o.eval_task == "auto" and any(ref is None for _, ref in references):
            print(f"lmtune: no task scores during validation: {valid} has records without a reference answer; validating on loss only.", file=sys.stderr)
            task = None
        if task is not None:
            labels = check_references(task, references, labels)
    metrics = valid_metrics(task, labels)
    metric = None
    if es.metric is not None:
        why = f"task {task}" if task is not None else "loss only: the dataset has no task, so set eval_task=gsm8k|classification|exact_match for task scores"
        metric = choose_metric(es.metric, es.mode, task, labels, why)
        if o.validate_every_n_steps is None:
            raise UserError(f"early_stopping.metric={es.metric} needs validations to compare; set validate_every_n_steps=N.")
        metrics = [metric if m.name == metric.name else m for m in metrics]
    elif o.keep_best_n_checkpoints is not None:
        raise UserError("keep_best_n_checkpoints ranks checkpoints by a validation metric; set early_stopping.metric (e.g. valid.loss) too.")
    if o.keep_best_n_checkpoints is not None and o.validate_every_n_steps is not None and o.checkpoint_every_n_steps % o.validate_every_n_steps:
        raise UserError(f"keep_best_n_checkpoints needs every checkpoint validated: checkpoint_every_n_steps={o.checkpoint_every_n_steps} must be a multiple of validate_every_n_steps={o.validate_every_n_steps}.")
    if es.patience is not None and es.patience < 1:
        raise UserError(f"config key 'early_stopping.patience' must be at least 1 (or null: never stop), got {es.patience}.")
    if es.min_delta < 0:
        raise UserError(f"config key 'early_stopping.min_delta' must be 0 or more, got {es.min_delta}.")
    return ValidationPlan(task=task, labels=labels, metrics=metrics, metric=metric)


def continues_after_early_stop(record: dict[str, Any], o: FinetuneOptions, last_step: int) -> bool:
    """A rerun of a run that stopped early ends at once, unless patience or max_num_steps was raised."""
    if record.get("step") != last_step or o.early_stopping.metric is None:
        return True
    patience, max_steps = o.early_stopping.patience, o.max_num_steps
    if patience is None or patience > int(record.get("patience") or 0):
        return True
    return max_steps is None or max_steps > int(record.get("max_num_steps") or 0)


def early_stop_message(record: dict[str, Any], metric: ValidMetric, min_delta: float) -> str:
    def value(score: float) -> float:
        return score if metric.higher_better else -score

    best = f"{value(record['best_score']):.4g}"
    return (
        f"stopped early at step {record['step']}: {metric.user_name} has not improved by more than {min_delta:g} "
        f"for {record['bad']} validations; the best, {best}, was at step {record['best_step']} (model=best_checkpoint)"
    )
