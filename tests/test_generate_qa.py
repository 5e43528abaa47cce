"""`lmtune generate ... score=qa` on a real tiny model: each record's ``answers`` travel into
generations.jsonl and score it; records without references are refused before generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.cli import main
from lmtune.score.qa import best_over_answers

pytestmark = pytest.mark.slow  # generates with a tiny model

RECORDS = [
    {"src": "Where is the Eiffel Tower?", "answers": ["Paris", "in Paris"]},
    {"src": "Who wrote Hamlet?", "answers": {"text": ["Shakespeare"], "answer_start": [0]}},
    {"src": "What is the colour of silence?", "answers": []},
    {"src": "Capital of Italy?", "tgt": "Rome"},  # no answers: its tgt is the one answer
]


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_generate_scores_qa_from_the_records_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", RECORDS)
    out = tmp_path / "gen"
    assert main(["generate", str(out), "--config", "model=tiny_llama", f"dataset={data}", "score=qa", "generator_config.max_gen_len=4"]) == 0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r.get("answers") for r in rows] == [["Paris", "in Paris"], ["Shakespeare"], [], None]
    assert rows[3]["reference"] == "Rome"
    scores = json.loads((out / "scores.json").read_text())
    best = [best_over_answers(r["completion"], r["answers"] if "answers" in r else [r["reference"]]) for r in rows]
    assert scores["exact_match"] == pytest.approx(sum(em for em, _ in best) / 4)
    assert scores["f1"] == pytest.approx(sum(f1 for _, f1 in best) / 4)
    assert (scores["has_answer"], scores["no_answer"]) == (3, 1)
    assert set(scores["confidence_intervals"]) == {"accuracy", "exact_match", "f1"}
    assert "exact match" in capsys.readouterr().out


def test_generate_qa_refuses_a_record_without_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", [RECORDS[0], {"src": "What now?"}])
    out = tmp_path / "gen"
    assert main(["generate", str(out), "--config", "model=tiny_llama", f"dataset={data}", "score=qa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}:2: score=qa needs reference answers" in err
    assert not (out / "generations.jsonl").exists()
