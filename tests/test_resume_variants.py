"""Killed runs of other shapes resume to the uninterrupted run's losses: length-batched (padded) batches,
bf16 autocast, and a small dataset read over several data epochs. Apart from test_resume.py so that
``pytest -n auto --dist loadfile`` can run the two on both workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import metric_rows, run_lmtune, run_lmtune_in_process
from resume_runs import ARGS, kill_resume_and_compare

pytestmark = pytest.mark.slow  # every test trains (and kills) real runs


def test_killed_length_batched_run_resumes_to_identicallosses(tmp_path: Path) -> None:
    args = [*ARGS, "packing=false"]
    reference = tmp_path / "reference"
    assert run_lmtune_in_process("instruction_finetune", str(reference), *args).returncode == 0
    assert metric_rows(reference)[0]["Padding"] > 0  # really padded batches
    kill_resume_and_compare(tmp_path / "killed", reference, args)


def test_killed_bf16_run_resumes_to_identical_losses(tmp_path: Path) -> None:
    """Within one precision a resume is exact: bf16 autocast over float32 weights and optimizer state."""
    args = [*ARGS, "dtype=bfloat16"]
    reference = tmp_path / "reference"
    r = run_lmtune("instruction_finetune", str(reference), *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lmtune: precision: bf16 autocast over float32 weights (dtype=bfloat16; " in r.stderr
    kill_resume_and_compare(tmp_path / "killed", reference, args)


def test_killed_run_resumes_identically_across_data_epochs(tmp_path: Path) -> None:
    from lmtune.resources import assets_dir

    lines = (assets_dir() / "tiny/gsm8k/sft/train.jsonl").read_text().splitlines()[:300]
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(lines) + "\n")  # about 8 packed batches: 60 steps run 7 epochs
    args = [*ARGS, f"dataset={data}"]
    reference = tmp_path / "reference"
    assert run_lmtune_in_process("instruction_finetune", str(reference), *args).returncode == 0
    epochs = {row["Data Epoch"] for row in metric_rows(reference)}
    assert len(epochs) >= 5, epochs
    kill_resume_and_compare(tmp_path / "killed", reference, args)
