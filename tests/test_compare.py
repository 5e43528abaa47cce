"""``lmtune compare GEN_A GEN_B`` on generation runs built by hand: the differences, McNemar's p-value
and the disagreements against hand counts; runs over different prompts refused in one sentence."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest

from lmtune.cli import main

LABELS = ["pos", "neg"]


def write_run(path: Path, rows: list[dict[str, object]], task: str, *extra: str) -> Path:
    """A generation run as `lmtune generate` leaves it: generations.jsonl and scores.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(path / "generations.jsonl"), "--task", task, *extra]) == 0
    return path


def gsm8k_rows(right: list[bool]) -> list[dict[str, object]]:
    return [{"prompt": f"problem {i}", "completion": f"so #### {i if ok else -1}", "reference": f"#### {i}"} for i, ok in enumerate(right)]


def test_compare_gsm8k_against_hand_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A right on 0-29, B right on 5-39 of 50: A only right on 0-4, B only right on 30-39; the answers
    # differ exactly there (15 prompts), since both wrong answer the same -1.
    right_a = [i < 30 for i in range(50)]
    right_b = [5 <= i < 40 for i in range(50)]
    a = write_run(tmp_path / "a", gsm8k_rows(right_a), "gsm8k")
    b = write_run(tmp_path / "b", gsm8k_rows(right_b), "gsm8k")
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    result = json.loads((b / "compare.json").read_text())
    acc = result["scores"]["accuracy"]
    assert (acc["a"], acc["b"], acc["difference"]) == (pytest.approx(0.6), pytest.approx(0.7), pytest.approx(0.1))
    assert (acc["a_only"], acc["b_only"], acc["test"]) == (5, 10, "mcnemar_exact")
    assert acc["p_value"] == pytest.approx(2 * sum(comb(15, k) for k in range(6)) / 2**15)
    low, high = acc["interval"]
    assert low < 0.1 < high
    found = result["disagreements"]
    assert found["count"] == 15 and [e["line"] for e in found["examples"]] == [*range(1, 6), *range(31, 41)]
    first = found["examples"][0]
    assert (first["prompt"], first["correct_a"], first["correct_b"], first["completion_b"]) == ("problem 0", True, False, "so #### -1")
    assert "15 of 50 prompts answered differently; the first 5:" in out and "McNemar exact (A only right 5, B only right 10)" in out
    assert "line 31" not in out  # only the first few printed; all are in the file


def test_compare_classification_writes_every_score_to_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = ["pos", "neg", "pos", "neg", "pos", "neg"]
    rows_a = [{"prompt": f"p{i}", "completion": c, "reference": t} for i, (c, t) in enumerate(zip(["pos", "pos", "neg", "neg", "pos", "?"], truth))]
    rows_b = [{"prompt": f"p{i}", "completion": c, "reference": t} for i, (c, t) in enumerate(zip(["pos", "neg", "pos", "neg", "neg", "neg"], truth))]
    a = write_run(tmp_path / "a", rows_a, "classification", "--labels", "pos,neg")
    b = write_run(tmp_path / "b", rows_b, "classification", "--labels", "pos,neg")
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert not (b / "compare.json").exists() and result["labels"] == LABELS
    scores_a, scores_b = (json.loads((r / "scores.json").read_text()) for r in (a, b))
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1"):
        d = result["scores"][key]
        assert (d["a"], d["b"]) == (pytest.approx(scores_a[key]), pytest.approx(scores_b[key]))
        assert d["difference"] == pytest.approx(scores_b[key] - scores_a[key])
        assert d["test"] == ("mcnemar_exact" if key == "accuracy" else "paired_bootstrap") and 0 < d["p_value"] <= 1
    f1 = result["scores"]["per_class"]["neg"]["f1"]
    assert f1["difference"] == pytest.approx(scores_b["per_class"]["neg"]["f1"] - scores_a["per_class"]["neg"]["f1"])
    # answers differ on p1 (pos/neg), p2 (neg/pos), p4 (pos/neg), p5 ((invalid)/neg)
    assert [e["line"] for e in result["disagreements"]["examples"]] == [2, 3, 5, 6]
    assert result["disagreements"]["examples"][3]["answer_a"] == "(invalid)"


def test_compare_refuses_runs_over_different_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = gsm8k_rows([True, False, True])
    a = write_run(tmp_path / "a", rows, "gsm8k")
    changed = [dict(r) for r in rows]
    changed[1]["prompt"] = "another problem"
    b = write_run(tmp_path / "b", changed, "gsm8k")
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmtune: error: ")
    assert f"{b / 'generations.jsonl'}:2: its prompt differs from {a / 'generations.jsonl'}:2's" in err
    assert not (b / "compare.json").exists()

    shorter = write_run(tmp_path / "c", rows[:2], "gsm8k")
    capsys.readouterr()
    assert main(["compare", str(a), str(shorter)]) == 2
    assert "has 2 prompts and" in capsys.readouterr().err

    other = write_run(tmp_path / "d", [{**r, "reference": "#### 0"} for r in rows], "gsm8k")
    capsys.readouterr()
    assert main(["compare", str(a), str(other)]) == 2
    assert f"{other / 'generations.jsonl'}:2: its reference differs" in capsys.readouterr().err


def test_compare_names_a_missing_run_or_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "nowhere"), str(tmp_path)]) == 2
    assert "holds no generations.jsonl" in capsys.readouterr().err
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "generations.jsonl").write_text(json.dumps({"prompt": "p", "completion": "x", "reference": "x"}) + "\n")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "give --task" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--task", "exact_match"]) == 0
