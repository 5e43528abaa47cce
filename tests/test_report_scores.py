"""`lmtune report` shows a run's test scores from its scores.json, each with its bootstrap interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmtune.cli import main


def write_run(out: Path, lr: float, scores: dict[str, object] | None, where: str = "test") -> Path:
    (out / "metrics").mkdir(parents=True)
    (out / "lmtune.yaml").write_text(yaml.safe_dump({"model": "tiny_llama", "learning_rate": lr, "seed": 1}))
    (out / "metrics/train.jsonl").write_text(json.dumps({"Step": 10, "NLL Loss": 1.5, "Elements per Second": 1000.0, "Total Time": 20.0}) + "\n")
    if scores is not None:
        (out / where).mkdir(exist_ok=True)
        (out / where / "scores.json").write_text(json.dumps(scores))
    return out


def rows_of(text: str) -> list[list[str]]:
    return [[c for c in line.split("  ") if c.strip()] for line in text.splitlines()]


def test_report_shows_test_scores_with_their_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classification = {"task": "classification", "num_examples": 50, "accuracy": 0.7, "macro_f1": 0.65, "confidence_intervals": {"accuracy": [0.58, 0.82], "macro_f1": [0.5, 0.79]}}
    a = write_run(tmp_path / "a", 1e-5, classification)
    b = write_run(tmp_path / "b", 2e-5, {"task": "gsm8k", "num_examples": 50, "accuracy": 0.25}, where=".")  # RUN/scores.json, no intervals
    c = write_run(tmp_path / "c", 3e-5, None)
    assert main(["report", str(a), str(b), str(c), "--output", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "test accuracy" in header and "test macro F1" in header and "test F1" not in header
    assert "train loss" in header and "tokens/s" in header  # the columns there were stay
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip() and not line.startswith("wrote")}
    assert "0.7000 [0.5800, 0.8200]" in lines["learning_rate=1e-05"] and "0.6500 [0.5000, 0.7900]" in lines["learning_rate=1e-05"]
    assert "0.2500" in lines["learning_rate=2e-05"] and "[" not in lines["learning_rate=2e-05"]
    assert lines["learning_rate=3e-05"].count("n/a") == 2
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| a | learning_rate=1e-05 | 1 | 10 | 1.5000 | 0.7000 [0.5800, 0.8200] | 0.6500 [0.5000, 0.7900] |" in md


def test_groups_of_several_runs_show_mean_and_std_of_test_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for seed, acc in [(1, 0.6), (2, 0.8)]:
        run = write_run(tmp_path / f"s{seed}", 1e-5, {"task": "gsm8k", "num_examples": 50, "accuracy": acc, "confidence_intervals": {"accuracy": [acc - 0.1, acc + 0.1]}})
        config = yaml.safe_load((run / "lmtune.yaml").read_text())
        (run / "lmtune.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
        runs.append(str(run))
    assert main(["report", *runs, "--output", str(tmp_path / "rep")]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert "0.7000 ± 0.1414" in row  # std over the two runs (n - 1): sqrt(0.02)
    assert "| s1 | all runs | 1 | 10 | 1.5000 | 0.6000 [0.5000, 0.7000] |" in (tmp_path / "rep" / "report.md").read_text()
