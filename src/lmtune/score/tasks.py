"""Task scores of completions against references: gsm8k, classification, exact_match.

Every scorer takes (completion, reference) pairs and returns a plain dict, written
as ``scores.json``. ``check_references`` runs before any generation, so a task that
does not fit the data costs one sentence, not an hour of GPU time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Literal

from lmtune.errors import UserError

TASKS = ("gsm8k", "classification", "exact_match")
TaskName = Literal["gsm8k", "classification", "exact_match"]
INVALID = "(invalid)"  # the confusion-matrix column of completions that name no label

_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


# -------------------------------------------------------------------- gsm8k


def gsm8k_answer(text: str) -> Decimal | None:
    """The number after the last '#### ', commas dropped; None when there is none."""
    _, sep, tail = text.rpartition("####")
    if not sep:
        return None
    m = _NUMBER.search(tail)
    if m is None:
        return None
    try:
        return Decimal(m.group().replace(",", ""))
    except InvalidOperation:
        return None


def score_gsm8k(pairs: Sequence[tuple[str, str]]) -> dict[str, object]:
    correct = no_answer = 0
    for completion, reference in pairs:
        predicted = gsm8k_answer(completion)
        if predicted is None:
            no_answer += 1
        elif predicted == gsm8k_answer(reference):
            correct += 1
    n = len(pairs)
    return {"task": "gsm8k", "num_examples": n, "accuracy": correct / n, "correct": correct, "no_answer": no_answer}


# ----------------------------------------------------------- classification


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a completion names: JSON {"category": ...} or a bare label word
    (case, quotes and a final period ignored); None when it names none."""
    by_key = {label.lower(): label for label in labels}
    candidates = [text]
    m = re.search(r"\{.*?\}", text, re.DOTALL)  # JSON inside prose or a code fence
    if m:
        candidates.append(m.group())
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            value = candidate
        if isinstance(value, dict):
            value = value.get("category")
        if isinstance(value, str):
            label = by_key.get(value.strip().strip("`'\"").rstrip(".").strip().lower())
            if label is not None:
                return label
    return None


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def score_classification(pairs: Sequence[tuple[str, str]], labels: Sequence[str]) -> dict[str, object]:
    """Accuracy, macro F1 over ``labels``, per-class precision/recall/F1 and the
    confusion matrix (rows: reference, columns: prediction, then INVALID).
    References must name a label (see check_references)."""
    labels = list(labels)
    columns = labels + [INVALID]
    counts = [[0] * len(columns) for _ in labels]
    for completion, reference in pairs:
        truth = parse_label(reference, labels)
        assert truth is not None, reference
        predicted = parse_label(completion, labels) or INVALID
        counts[labels.index(truth)][columns.index(predicted)] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(labels):
        tp = counts[i][i]
        support = sum(counts[i])
        predicted = sum(row[i] for row in counts)
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * tp, support + predicted)  # = 2PR/(P+R), and 0 when both are 0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(pairs)
    correct = sum(counts[i][i] for i in range(len(labels)))
    return {
        "task": "classification",
        "num_examples": n,
        "accuracy": correct / n,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels),
        "invalid": sum(row[-1] for row in counts),
        "per_class": per_class,
        "confusion_matrix": {"rows": labels, "columns": columns, "counts": counts},
    }


# -------------------------------------------------------------- exact_match


def score_exact_match(pairs: Sequence[tuple[str, str]]) -> dict[str, object]:
    correct = sum(c.strip() == r.strip() for c, r in pairs)
    return {"task": "exact_match", "num_examples": len(pairs), "accuracy": correct / len(pairs), "correct": correct}


# ------------------------------------------------------------------ common


def check_references(task: str, references: Sequence[tuple[str, str | None]], labels: Sequence[str] | None) -> list[str] | None:
    """Refuses data the task cannot score; ``references`` are (where, text) pairs.
    Returns the label set for classification (given, else the references' own)."""
    missing = [where for where, ref in references if ref is None]
    if missing:
        raise UserError(f"{missing[0]}: score={task} needs a reference answer for every prompt, and this one has none ({len(missing)} of {len(references)} lack one); set score=none to only generate.")
    refs = [(where, ref) for where, ref in references if ref is not None]
    if task == "gsm8k":
        bad = [where for where, ref in refs if gsm8k_answer(ref) is None]
        if bad:
            raise UserError(f"{bad[0]}: score=gsm8k needs references ending in '#### <number>', and {len(bad)} of {len(refs)} have none; pick the task that fits the data (classification, exact_match) or score=none.")
    if task == "classification":
        if labels is None:
            labels = sorted({_reference_label(ref) for _, ref in refs})
        bad = [where for where, ref in refs if parse_label(ref, labels) is None]
        if bad:
            raise UserError(f"{bad[0]}: score=classification needs each reference to be one of the labels ({', '.join(labels)}) or {{\"category\": label}}, and {len(bad)} of {len(refs)} are not; set labels=[...] or pick another task.")
        if len(labels) < 2:
            raise UserError(f"score=classification needs at least two labels, and the references name only {labels}; set labels=[a, b, ...].")
        return list(labels)
    return None


def _reference_label(reference: str) -> str:
    """What a reference names when no label set is given: its JSON category, or its text."""
    try:
        value = json.loads(reference)
    except (json.JSONDecodeError, ValueError):
        value = reference
    if isinstance(value, dict):
        value = value.get("category")
    return value.strip() if isinstance(value, str) else reference.strip()


def score(task: str, pairs: Sequence[tuple[str, str]], labels: Sequence[str] | None = None) -> dict[str, object]:
    if task == "gsm8k":
        return score_gsm8k(pairs)
    if task == "classification":
        assert labels is not None
        return score_classification(pairs, labels)
    if task == "exact_match":
        return score_exact_match(pairs)
    raise UserError(f"unknown score task '{task}'; valid: {', '.join(TASKS)}.")


def format_table(scores: dict[str, object]) -> str:
    n = scores["num_examples"]
    lines = [f"score: {scores['task']} on {n} examples"]
    if scores["task"] in ("gsm8k", "exact_match"):
        lines.append(f"  accuracy  {scores['accuracy']:.4f}  ({scores['correct']}/{n})")
        if scores["task"] == "gsm8k":
            lines.append(f"  no '####' answer in {scores['no_answer']} completions")
        return "\n".join(lines)
    lines.append(f"  accuracy  {scores['accuracy']:.4f}   macro F1  {scores['macro_f1']:.4f}   invalid answers  {scores['invalid']}")
    per_class: dict[str, dict[str, float]] = scores["per_class"]  # type: ignore[assignment]
    width = max(10, *(len(label) for label in per_class))
    lines.append(f"  {'label':{width}}  precision  recall      f1  support")
    for label, c in per_class.items():
        lines.append(f"  {label:{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    return "\n".join(lines)
