"""Several processes on one CPU machine when one fails: a rank killed stops the other, a signal to one rank
stops both at one step and the rerun resumes to the uninterrupted losses, a missing peer fails within the
timeout. Apart from test_distributed.py so that ``pytest -n auto --dist loadfile`` can run the two on both
workers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from distributed_runs import (
    LMTUNE,
    STEPS,
    launch_env,
    run_args,
    srun_like,
    step_losses,
    wait_all,
)
from helpers import free_port

pytestmark = pytest.mark.slow  # every test trains under torchrun or srun-like ranks


def test_killing_one_rank_stops_the_other(tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs = srun_like(out, "max_num_steps=100000", "checkpoint_every_n_steps=100000")
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics/train.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "metrics/train.jsonl").exists()
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=90)
        assert time.monotonic() - killed_at < 60
        assert procs[0].returncode not in (0, None)
        assert "lmtune: error:" in err and "rank" in err.split("lmtune: error:")[-1], err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_signal_to_one_rank_stops_both_at_one_step_and_resume_matches(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    wait_all(srun_like(reference))
    out = tmp_path / "out"
    procs = srun_like(out)
    deadline = time.monotonic() + 300
    while not (out / "metrics/train.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGUSR1)  # only one rank hears it
    for p in procs:
        p.communicate(timeout=120)
    assert [p.returncode for p in procs] == [75, 75]
    steps = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit())
    assert steps and steps[-1] < STEPS
    wait_all(srun_like(out))
    assert step_losses(out) == step_losses(reference)


def test_missing_peer_fails_within_the_timeout(tmp_path: Path) -> None:
    env = launch_env(
        SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NNODES="1",
        SLURM_JOB_ID="778", SLURM_JOB_NODELIST="localhost", SLURM_TASKS_PER_NODE="2", MASTER_PORT=str(free_port()),
    )
    started = time.monotonic()
    r = subprocess.run([*LMTUNE, *run_args(tmp_path / "out", "distributed_timeout_minutes=1")], env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 150
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr.split("lmtune: error:")[-1]
    assert "not all 2 did" in r.stderr, r.stderr[-3000:]
