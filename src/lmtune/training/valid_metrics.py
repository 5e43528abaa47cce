"""The validation metrics a run produces, by the names users give them.

``valid.loss`` always (fairseq2's ``nll_loss``); with a task, ``valid.accuracy``, and
for classification ``valid.macro_f1`` and ``valid.f1_LABEL`` per label. The values
come from ``lmtune.score.tasks``, the scorer of ``lmtune generate``, so a score seen
during training is the score ``lmtune generate`` gives the same checkpoint.

Kept free of heavy imports: the early-stopping key is checked before training starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from lmtune.errors import UserError


@dataclass(frozen=True, kw_only=True)
class ValidMetric:
    user_name: str
    """What a user writes: valid.accuracy."""
    name: str
    """The key in fairseq2's metric values: accuracy."""
    display_name: str
    """The column in OUT/metrics/valid.jsonl and on the console."""
    higher_better: bool


LOSS = ValidMetric(user_name="valid.loss", name="nll_loss", display_name="NLL Loss", higher_better=False)

# Counts beside the scores, recorded but not for early stopping.
COUNTS = {"eval_examples": "Eval Examples", "no_answer": "No Answer", "invalid_answers": "Invalid Answers"}


def valid_metrics(task: str | None, labels: Sequence[str] | None) -> list[ValidMetric]:
    """Every metric a validation with this task produces."""
    metrics = [LOSS]
    if task is None:
        return metrics
    metrics.append(ValidMetric(user_name="valid.accuracy", name="accuracy", display_name="Accuracy", higher_better=True))
    if task == "classification":
        metrics.append(ValidMetric(user_name="valid.macro_f1", name="macro_f1", display_name="Macro F1", higher_better=True))
        metrics += [ValidMetric(user_name=f"valid.f1_{label}", name=f"f1_{label}", display_name=f"F1 {label}", higher_better=True) for label in labels or ()]
    return metrics


def choose_metric(user_name: str, mode: str, task: str | None, labels: Sequence[str] | None, why: str) -> ValidMetric:
    """The metric ``early_stopping.metric`` names, its direction set by ``mode`` (auto/min/max)."""
    metrics = valid_metrics(task, labels)
    by_name = {m.user_name: m for m in metrics}
    by_name.setdefault("valid.nll_loss", LOSS)
    metric = by_name.get(user_name)
    if metric is None:
        names = ", ".join(m.user_name for m in metrics)
        raise UserError(f"config key 'early_stopping.metric' is {user_name}, which the validation does not produce ({why}); valid: {names}.")
    if mode == "auto":
        return metric
    return replace(metric, higher_better=mode == "max")


def task_metric_values(scores: Mapping[str, object]) -> dict[str, float]:
    """``lmtune.score.tasks.score``'s dict -> flat metric values."""
    values: dict[str, float] = {"accuracy": float(scores["accuracy"]), "eval_examples": float(scores["num_examples"])}  # type: ignore[arg-type]
    if "macro_f1" in scores:
        values["macro_f1"] = float(scores["macro_f1"])  # type: ignore[arg-type]
        values["invalid_answers"] = float(scores["invalid"])  # type: ignore[arg-type]
        for label, c in scores["per_class"].items():  # type: ignore[attr-defined]
            values[f"f1_{label}"] = float(c["f1"])
    if "no_answer" in scores:
        values["no_answer"] = float(scores["no_answer"])  # type: ignore[arg-type]
    return values
