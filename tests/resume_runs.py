"""What the resume tests share: the run they kill, how they start and kill it, and the comparison with an
uninterrupted run (test_resume.py, test_resume_variants.py)."""

from __future__ import annotations

import os
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


def start_run(out: Path, args: list[str] = ARGS) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmtune", "instruction_finetune", str(out), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_resume_and_compare(out: Path, reference: Path, args: list[str]) -> None:
    proc = start_run(out, args)
    deadline = time.monotonic() + 300
    while not complete_steps(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps_at_kill = complete_steps(out)
    assert steps_at_kill and steps_at_kill[-1] < 60, steps_at_kill  # killed mid-run, after a checkpoint

    # The lock died with the process: the same command resumes.
    result = run_lmtune_in_process("instruction_finetune", str(out), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    expected, resumed = losses(reference), losses(out)
    assert sorted(resumed) == sorted(expected) == list(range(1, 61))
    for step in range(steps_at_kill[-1] + 1, 61):
        assert resumed[step] == expected[step], (step, resumed[step], expected[step])
