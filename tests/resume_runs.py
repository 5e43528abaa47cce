"""What the resume tests share: the run they kill, how they start and kill it, and the comparison with an
uninterrupted run (test_resume.py, test_resume_variants.py; the kill also test_preference_processes.py, and the
copy of a run cut back to a checkpoint test_lora.py and test_lora_ranks.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import losses, run_lmtune_in_process

ARGS = [
    "--config-file", "tiny_gsm8k", "--config", "max_num_steps=60", "checkpoint_every_n_steps=10",
    "publish_metrics_every_n_steps=1", "keep_last_n_checkpoints=2", "max_num_tokens=1024",
]


def complete_steps(out: Path) -> list[int]:
    ckpt = out / "checkpoints"
    return sorted(int(p.name[5:]) for p in ckpt.glob("step_*") if p.name[5:].isdigit()) if ckpt.is_dir() else []


def start_run(out: Path, args: list[str] = ARGS, command: str = "instruction_finetune") -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmtune", command, str(out), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_after_first_checkpoint(out: Path, args: list[str], last_step: int, command: str = "instruction_finetune") -> list[int]:
    """Runs ``lmtune COMMAND OUT ARGS`` in a process and kills it (SIGKILL) once a checkpoint is complete;
    returns the complete checkpoints' steps, checked to end before ``last_step`` (killed mid-run)."""
    proc = start_run(out, args, command)
    deadline = time.monotonic() + 300
    while not complete_steps(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps = complete_steps(out)
    assert steps and steps[-1] < last_step, steps
    return steps


def cut_back(run: Path, copy: Path, *, keep_step: int, drop_step: int) -> None:
    """``copy`` as ``run`` would be after kill -9 right after its step-``keep_step`` checkpoint: the checkpoint
    of ``drop_step`` and the metrics after ``keep_step`` gone (one metrics line a step), no lock left."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / f"checkpoints/step_{drop_step}")
    metrics = copy / "metrics/train.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:keep_step]))
    (copy / ".lmtune.lock").unlink(missing_ok=True)


def kill_resume_and_compare(out: Path, reference: Path, args: list[str]) -> None:
    steps_at_kill = kill_after_first_checkpoint(out, args, 60)

    # The lock died with the process: the same command resumes.
    result = run_lmtune_in_process("instruction_finetune", str(out), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    expected, resumed = losses(reference), losses(out)
    assert sorted(resumed) == sorted(expected) == list(range(1, 61))
    for step in range(steps_at_kill[-1] + 1, 61):
        assert resumed[step] == expected[step], (step, resumed[step], expected[step])
