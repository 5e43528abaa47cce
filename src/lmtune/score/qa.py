"""Question answering scored as the official SQuAD v2 script scores it: exact match and token F1.

Both compare normalised answers (lowercased, punctuation and the articles a/an/the removed,
whitespace collapsed) and take the best over a question's reference answers. A question with
no reference answer is unanswerable: its one reference is the empty answer, so a prediction
scores 1 there exactly when it normalises to nothing.

References come from a record's ``answers``: a list of strings, or SQuAD's
``{"text": [...], "answer_start": [...]}``; an empty list marks an unanswerable question.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from lmtune.errors import UserError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation, in its order: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def token_f1(prediction: str, answer: str) -> float:
    """F1 of the normalised tokens' multiset overlap; when either side is empty, 1 if both are, else 0."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_over_answers(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1), each the best over the reference answers; no answers: unanswerable."""
    golds = [a for a in answers if normalize_answer(a)] or [""]  # SQuAD v2 drops answers that normalise to nothing
    return max(exact_match(prediction, a) for a in golds), max(token_f1(prediction, a) for a in golds)


def answer_list(value: object, where: str) -> list[str]:
    """A record's ``answers`` as a list of strings; a sentence naming ``where`` when it is neither form."""
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return list(value)
    raise UserError(f"{where}: 'answers' must be a list of strings (an empty list for an unanswerable question) or SQuAD's {{\"text\": [...]}}.")


def qa_references(reference: str | Sequence[str]) -> list[str]:
    """A plain reference string is one answer."""
    return [reference] if isinstance(reference, str) else list(reference)


def task_reference(task: str | None, reference: str | None, answers: list[str] | None) -> str | list[str] | None:
    """What a task scores a record against: qa its answers (else its reference as the one answer), the others its reference."""
    return answers if task == "qa" and answers is not None else reference
