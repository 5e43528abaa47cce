"""Task scores of completions against references: gsm8k, classification, exact_match, qa.

Every task reads (completion, reference) pairs into per-example outcomes
(``lmtune.score.example_scores``), from which ``score`` computes a plain dict, written as
``scores.json``, with a 95% bootstrap interval for every score. ``check_references`` runs
before any generation, so a task that does not fit the data costs one sentence, not an hour
of GPU time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Literal

from lmtune.errors import UserError
from lmtune.score.bootstrap import (  # numpy-free: options import TaskName
    LEVEL,
    RESAMPLES,
    SEED,
)

if TYPE_CHECKING:  # numpy is imported only when something is scored
    from lmtune.score.example_scores import ExampleScores

TASKS = ("gsm8k", "classification", "exact_match", "qa")
TaskName = Literal["gsm8k", "classification", "exact_match", "qa"]
Reference = str | Sequence[str]
"""A reference text; for qa also a list of reference answers (empty: unanswerable)."""
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


def _gsm8k_examples(pairs: Sequence[tuple[str, str]]) -> ExampleScores:
    from lmtune.score.example_scores import binary_scores

    predicted = [gsm8k_answer(c) for c, _ in pairs]
    correct = [p is not None and p == gsm8k_answer(r) for p, (_, r) in zip(predicted, pairs)]
    return binary_scores("gsm8k", ["" if p is None else f"{p.normalize():f}" for p in predicted], correct)


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


def _classification_examples(pairs: Sequence[tuple[str, str]], labels: Sequence[str]) -> ExampleScores:
    """References must name a label (see check_references); INVALID is index len(labels)."""
    from lmtune.score.example_scores import classification_scores

    labels = list(labels)
    truth, predicted = [], []
    for completion, reference in pairs:
        label = parse_label(reference, labels)
        assert label is not None, reference
        truth.append(labels.index(label))
        guess = parse_label(completion, labels)
        predicted.append(len(labels) if guess is None else labels.index(guess))
    answers = [labels[p] if p < len(labels) else INVALID for p in predicted]
    return classification_scores(answers, truth, predicted, labels)


# -------------------------------------------------------------- exact_match


def _exact_match_examples(pairs: Sequence[tuple[str, str]]) -> ExampleScores:
    from lmtune.score.example_scores import binary_scores

    return binary_scores("exact_match", [c.strip() for c, _ in pairs], [c.strip() == r.strip() for c, r in pairs])


# ----------------------------------------------------------------------- qa


def _qa_examples(pairs: Sequence[tuple[str, Reference]]) -> ExampleScores:
    from lmtune.score.example_scores import qa_scores
    from lmtune.score.qa import best_over_answers, normalize_answer, qa_references

    best = [best_over_answers(c, qa_references(r)) for c, r in pairs]
    return qa_scores([normalize_answer(c) for c, _ in pairs], [em for em, _ in best], [f1 for _, f1 in best])


# ------------------------------------------------------------------ common


def check_references(task: str, references: Sequence[tuple[str, Reference | None]], labels: Sequence[str] | None) -> list[str] | None:
    """Refuses data the task cannot score; ``references`` are (where, reference) pairs.
    Returns the label set for classification (given, else the references' own)."""
    missing = [where for where, ref in references if ref is None]
    if missing:
        what = "reference answers ('answers': [...], [] when unanswerable, or 'tgt')" if task == "qa" else "a reference answer"
        raise UserError(f"{missing[0]}: score={task} needs {what} for every prompt, and this one has none ({len(missing)} of {len(references)} lack one); set score=none to only generate.")
    refs = [(where, ref) for where, ref in references if ref is not None]
    if task != "qa":
        bad = [where for where, ref in refs if not isinstance(ref, str)]
        if bad:
            raise UserError(f"{bad[0]}: score={task} needs one reference text per prompt, and this one is a list of answers; use score=qa for them.")
    if task == "gsm8k":
        bad = [where for where, ref in refs if gsm8k_answer(ref) is None]  # type: ignore[arg-type]
        if bad:
            raise UserError(f"{bad[0]}: score=gsm8k needs references ending in '#### <number>', and {len(bad)} of {len(refs)} have none; pick the task that fits the data (classification, exact_match, qa) or score=none.")
    if task == "classification":
        if labels is None:
            labels = sorted({_reference_label(ref) for _, ref in refs})  # type: ignore[arg-type]
        bad = [where for where, ref in refs if parse_label(ref, labels) is None]  # type: ignore[arg-type]
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


def example_scores(task: str, pairs: Sequence[tuple[str, Reference]], labels: Sequence[str] | None = None) -> ExampleScores:
    """What each pair contributes to the task's scores."""
    if task == "gsm8k":
        return _gsm8k_examples(pairs)  # type: ignore[arg-type]
    if task == "classification":
        assert labels is not None
        return _classification_examples(pairs, labels)  # type: ignore[arg-type]
    if task == "exact_match":
        return _exact_match_examples(pairs)  # type: ignore[arg-type]
    if task == "qa":
        return _qa_examples(pairs)
    raise UserError(f"unknown score task '{task}'; valid: {', '.join(TASKS)}.")


def nest(flat: dict[tuple[str, ...], object]) -> dict[str, object]:
    """{("per_class", "World", "f1"): x} -> {"per_class": {"World": {"f1": x}}}"""
    out: dict[str, object] = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})  # type: ignore[assignment]
        node[path[-1]] = value
    return out


def score(task: str, pairs: Sequence[tuple[str, Reference]], labels: Sequence[str] | None = None, *, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, object]:
    """The task's scores.json: its scores, counts and, when ``resamples`` > 0, every score's
    95% percentile bootstrap interval under ``confidence_intervals`` (the same nesting)."""
    from lmtune.score.bootstrap import bootstrap_intervals

    examples = example_scores(task, pairs, labels)
    values = examples.scores()
    n = len(pairs)
    out: dict[str, object] = {"task": task, "num_examples": n, "accuracy": values["accuracy",]}
    if task in ("gsm8k", "exact_match"):
        out["correct"] = int(examples.means["accuracy",].sum())
    if task == "gsm8k":
        out["no_answer"] = sum(a == "" for a in examples.answers)
    if task == "qa":
        out["exact_match"], out["f1"] = values["exact_match",], values["f1",]
        unanswerable = sum(_is_unanswerable(r) for _, r in pairs)
        out["has_answer"], out["no_answer"] = n - unanswerable, unanswerable
    if task == "classification":
        assert labels is not None and examples.cells is not None
        k = len(labels)
        counts = [[0] * (k + 1) for _ in labels]
        for cell in examples.cells.tolist():
            counts[cell // (k + 1)][cell % (k + 1)] += 1
        out["macro_f1"], out["micro_f1"], out["weighted_f1"] = values["macro_f1",], values["micro_f1",], values["weighted_f1",]
        out["invalid"] = sum(row[-1] for row in counts)
        out["per_class"] = {
            label: {"precision": values["per_class", label, "precision"], "recall": values["per_class", label, "recall"], "f1": values["per_class", label, "f1"], "support": sum(counts[i])}
            for i, label in enumerate(labels)
        }
        out["confusion_matrix"] = {"rows": list(labels), "columns": list(labels) + [INVALID], "counts": counts}
    if resamples > 0:
        intervals = bootstrap_intervals(examples.statistics, n, resamples=resamples, seed=seed)
        out["confidence_intervals"] = nest({path: list(iv) for path, iv in intervals.items()})
        out["bootstrap"] = {"method": "percentile", "level": LEVEL, "resamples": resamples, "seed": seed}
    return out


def _is_unanswerable(reference: Reference) -> bool:
    from lmtune.score.qa import normalize_answer, qa_references

    return not any(normalize_answer(a) for a in qa_references(reference))


def format_table(scores: dict[str, object]) -> str:
    """The scores as printed by generate and score: each with its interval when scores.json has them."""
    n = scores["num_examples"]
    intervals: dict[str, object] = scores.get("confidence_intervals") or {}  # type: ignore[assignment]
    boot: dict[str, object] = scores.get("bootstrap") or {}  # type: ignore[assignment]

    def ci(*path: str) -> str:
        node: object = intervals
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return f"[{node[0]:.4f}, {node[1]:.4f}]" if isinstance(node, list) else ""

    about = f" (95% bootstrap intervals over {boot['resamples']} resamples)" if boot else ""
    lines = [f"score: {scores['task']} on {n} examples{about}"]
    if scores["task"] in ("gsm8k", "exact_match"):
        lines.append(f"  accuracy  {scores['accuracy']:.4f}  ({scores['correct']}/{n})  {ci('accuracy')}".rstrip())
        if scores["task"] == "gsm8k":
            lines.append(f"  no '####' answer in {scores['no_answer']} completions")
        return "\n".join(lines)
    if scores["task"] == "qa":
        lines.append(f"  exact match  {scores['exact_match']:.4f}  {ci('exact_match')}".rstrip())
        lines.append(f"  F1           {scores['f1']:.4f}  {ci('f1')}".rstrip())
        lines.append(f"  {scores['has_answer']} answerable, {scores['no_answer']} unanswerable questions")
        return "\n".join(lines)
    lines.append(f"  accuracy  {scores['accuracy']:.4f}   macro F1  {scores['macro_f1']:.4f}   invalid answers  {scores['invalid']}")
    if "micro_f1" in scores:
        lines.append(f"  micro F1  {scores['micro_f1']:.4f}   weighted F1  {scores['weighted_f1']:.4f}")
    if intervals:
        names = [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("micro_f1", "micro F1"), ("weighted_f1", "weighted F1")]
        lines.append("  95% CI: " + "   ".join(f"{name} {ci(key)}" for key, name in names if key in intervals))
    per_class: dict[str, dict[str, float]] = scores["per_class"]  # type: ignore[assignment]
    width = max(10, *(len(label) for label in per_class))
    if not intervals:
        lines.append(f"  {'label':{width}}  precision  recall      f1  support")
        for label, c in per_class.items():
            lines.append(f"  {label:{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    else:
        lines.append(f"  {'label':{width}}  precision  {'95% CI':16}  recall  {'95% CI':16}      f1  {'95% CI':16}  support")
        for label, c in per_class.items():
            p, r, f = (ci("per_class", label, key) for key in ("precision", "recall", "f1"))
            lines.append(f"  {label:{width}}  {c['precision']:9.4f}  {p:16}  {c['recall']:6.4f}  {r:16}  {c['f1']:6.4f}  {f:16}  {c['support']:7d}")
    return "\n".join(lines)
