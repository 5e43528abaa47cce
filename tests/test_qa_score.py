"""score=qa against SQuAD v2's definitions, worked by hand: normalisation, token F1, the best
over reference answers, unanswerable questions; ``answers`` read from records and predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.cli import main
from lmtune.data.records import read_records
from lmtune.errors import UserError
from lmtune.score.qa import (
    answer_list,
    best_over_answers,
    exact_match,
    normalize_answer,
    token_f1,
)
from lmtune.score.tasks import check_references, score


def test_normalisation_is_squads() -> None:
    # lowercase, punctuation removed (joining what it split), articles removed, whitespace collapsed
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a day.") == "apple day"
    assert normalize_answer("  Theory of\tthe ANT ") == "theory of ant"  # 'the' inside 'Theory' stays
    assert normalize_answer("The.") == normalize_answer("") == ""


def test_token_f1_by_hand() -> None:
    # pred: cat sat on mat; gold: cat on hat; common 2 -> P 2/4, R 2/3, F1 = 2PR/(P+R) = 4/7
    assert token_f1("the cat sat on the mat", "a cat on a hat") == pytest.approx(4 / 7)
    # tokens are a multiset: x x y vs x y y share one x and one y -> P = R = 2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "red") == 0.0 and token_f1("red", "") == 0.0
    assert exact_match("Denver Broncos.", "the denver broncos") == 1.0


def test_best_over_reference_answers() -> None:
    assert best_over_answers("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos"]) == (1.0, 1.0)
    # vs "denver broncos": common 2, P 2/3, R 1 -> 0.8; vs "broncos": P 1/3, R 1 -> 0.5; the best: 0.8
    em, f1 = best_over_answers("Broncos of Denver", ["Denver Broncos", "Broncos"])
    assert em == 0.0 and f1 == pytest.approx(0.8)


def test_unanswerable_questions_want_an_empty_answer() -> None:
    assert best_over_answers("", []) == (1.0, 1.0)
    assert best_over_answers("The.", []) == (1.0, 1.0)  # empty after normalisation
    assert best_over_answers("no answer", []) == (0.0, 0.0)
    # an answer that normalises to nothing is dropped, as SQuAD v2 does; none left: unanswerable
    assert best_over_answers("", ["the"]) == (1.0, 1.0)
    assert best_over_answers("", ["the", "Paris"]) == (0.0, 0.0)


def test_qa_scores_by_hand() -> None:
    pairs = [
        ("Denver Broncos", ["Broncos", "Denver Broncos"]),  # EM 1, F1 1
        ("Broncos of Denver", ["Denver Broncos", "Broncos"]),  # EM 0, F1 0.8
        ("", []),  # unanswerable, empty: EM 1, F1 1
        ("Paris", []),  # unanswerable, answered: 0, 0
        ("the cat sat on the mat", "a cat on a hat"),  # a plain reference is one answer: EM 0, F1 4/7
    ]
    s = score("qa", pairs)
    assert s["exact_match"] == s["accuracy"] == pytest.approx(2 / 5)
    assert s["f1"] == pytest.approx((1 + 0.8 + 1 + 0 + 4 / 7) / 5)
    assert (s["num_examples"], s["has_answer"], s["no_answer"]) == (5, 3, 2)
    for key in ("accuracy", "exact_match", "f1"):
        low, high = s["confidence_intervals"][key]
        assert low <= s[key] <= high


def test_answers_forms_and_bad_answers() -> None:
    assert answer_list(["a", "b"], "f:1") == ["a", "b"]
    assert answer_list({"text": ["a"], "answer_start": [3]}, "f:1") == ["a"]
    assert answer_list({"text": [], "answer_start": []}, "f:1") == []
    for bad in ("Paris", [1], {"answer_start": [3]}):
        with pytest.raises(UserError, match="f:7: 'answers' must be a list of strings"):
            answer_list(bad, "f:7")


def test_records_carry_answers(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text(
        json.dumps({"src": "Q1", "answers": ["a", "b"]}) + "\n"
        + json.dumps({"src": "Q2", "answers": {"text": [], "answer_start": []}}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Q3"}], "answers": ["c"]}) + "\n"
        + json.dumps({"src": "Q4", "tgt": "d"}) + "\n"
    )
    assert [r.answers for r in read_records(path, need_target=False)] == [["a", "b"], [], ["c"], None]
    path.write_text(json.dumps({"src": "Q1", "answers": "a"}) + "\n")
    with pytest.raises(UserError, match=rf"{path}:1: 'answers' must be"):
        read_records(path, need_target=False)


def test_check_references_for_qa() -> None:
    assert check_references("qa", [("f:1", ["a"]), ("f:2", []), ("f:3", "b")], None) is None
    with pytest.raises(UserError, match=r"f:2: score=qa needs reference answers .* \(1 of 2 lack one\)"):
        check_references("qa", [("f:1", ["a"]), ("f:2", None)], None)
    with pytest.raises(UserError, match="f:1: score=exact_match needs one reference text .* score=qa"):
        check_references("exact_match", [("f:1", ["a"])], None)


def test_score_command_reads_answers_and_refuses_lines_without(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = tmp_path / "generations.jsonl"
    rows = [{"prompt": "p1", "completion": "The Paris!", "answers": ["Paris"]}, {"prompt": "p2", "completion": "", "answers": []}, {"prompt": "p3", "completion": "Lyon", "reference": "Nice"}]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(preds), "--task", "qa"]) == 0
    s = json.loads((tmp_path / "scores.json").read_text())
    assert (s["exact_match"], s["f1"], s["no_answer"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 1)
    assert "exact match  0.6667  [" in capsys.readouterr().out

    rows[1] = {"prompt": "p2", "completion": "x"}
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(preds), "--task", "qa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{preds}:2: score=qa needs reference answers" in err
    assert json.loads((tmp_path / "scores.json").read_text()) == s  # nothing written lost
