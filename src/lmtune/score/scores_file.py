"""Predictions in (``generations.jsonl``), scores out (``scores.json``, the confusion-matrix PNG, a table on stdout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import UserError
from lmtune.files import atomic_write_text
from lmtune.score.qa import answer_list, task_reference


@dataclass(kw_only=True)
class Prediction:
    where: str
    """file:line"""
    prompt: str | None
    completion: str
    reference: str | None
    answers: list[str] | None
    """qa's reference answers, when the line has them ([]: unanswerable)."""

    def reference_for(self, task: str) -> str | list[str] | None:
        return task_reference(task, self.reference, self.answers)


def read_predictions(path: Path) -> list[Prediction]:
    """One Prediction per non-blank line."""
    if not path.is_file():
        raise UserError(f"{path}: predictions file does not exist.")
    rows = []
    with path.open(encoding="utf-8") as fp:
        for line_nr, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_nr}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as ex:
                raise UserError(f"{where}: not valid JSON ({ex.msg} at column {ex.colno}); each line must be one JSON object.") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("completion"), str):
                raise UserError(f"{where}: expected a JSON object with a string 'completion' (and 'reference'), as lmtune generate writes.")
            ref = obj.get("reference")
            if ref is not None and not isinstance(ref, str):
                raise UserError(f"{where}: 'reference' must be a string.")
            answers = answer_list(obj["answers"], where) if "answers" in obj else None
            prompt = obj.get("prompt")
            rows.append(Prediction(where=where, prompt=prompt if isinstance(prompt, str) else None, completion=obj["completion"], reference=ref, answers=answers))
    if not rows:
        raise UserError(f"{path}: the predictions file has no lines to score.")
    return rows


def save_scores(path: Path, scores: dict[str, object]) -> None:
    """scores.json (atomically), the confusion matrix PNG beside it, the table on stdout."""
    from lmtune.score.tasks import format_table

    path.parent.mkdir(parents=True, exist_ok=True)
    if scores["task"] == "classification":
        from lmtune.score.confusion_png import write_confusion_png

        cm: dict[str, list] = scores["confusion_matrix"]  # type: ignore[assignment]
        png = write_confusion_png(path.with_name(path.stem + "_confusion_matrix.png"), cm["rows"], cm["columns"], cm["counts"])
        scores["confusion_matrix_png"] = png.name
    atomic_write_text(path, json.dumps(scores, indent=2) + "\n")
    print(format_table(scores))
    print(f"scores: {path}")
