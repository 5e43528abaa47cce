"""Several processes on one CPU machine (gloo): torchrun and srun-style launches, DDP and FSDP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import free_port, metric_rows, run_lmtune_in_process

pytestmark = pytest.mark.slow  # every test trains under torchrun or srun-like ranks

LMTUNE = [sys.executable, "-m", "lmtune"]
STEPS = 12
COMMON = [
    "instruction_finetune", "--config-file", "tiny_gsm8k", "--config", f"max_num_steps={STEPS}",
    "checkpoint_every_n_steps=6", "publish_metrics_every_n_steps=1", "lr_scheduler.num_warmup_steps=2",
]


def _args(out: Path, *extra: str) -> list[str]:
    return [COMMON[0], str(out), *COMMON[1:], *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _torchrun(out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "--no-python", *LMTUNE, *_args(out, *extra)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _srun_like(out: Path, *extra: str) -> list[subprocess.Popen[str]]:
    """Two tasks with the variables `srun --nodes=1 --ntasks=2` sets: no SLURM_NTASKS_PER_NODE, no scontrol."""
    procs, port = [], free_port()
    for rank in range(2):
        env = _env(
            SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
            SLURM_JOB_ID="777", SLURM_JOB_NODELIST="localhost", SLURM_TASKS_PER_NODE="2", MASTER_PORT=str(port),
            PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "scontrol").exists()),
        )
        procs.append(subprocess.Popen([*LMTUNE, *_args(out, *extra)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def _losses(out: Path) -> list[float]:
    rows = metric_rows(out)
    assert [r["Step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["NLL Loss"] for r in rows]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.specs import model_from_checkpoint_dir

    spec = model_from_checkpoint_dir(out / "checkpoints", None, "checkpoint_dir")
    return {k: v.detach().clone() for k, v in load_any_model(spec).state_dict().items()}


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_srun_variables_match_torchrun(tmp_path: Path, parallelism: str) -> None:
    # Both checkpoints kept whole: fairseq2 0.8.1 lists the checkpoints to thin on each rank from the file
    # system after a save, and a rank that lists after rank 0 has thinned one skips the deletion's barrier,
    # so the ranks part ways ("lost contact"; seen once in CI under load). That race is not what this tests.
    keep = "keep_last_n_checkpoints=2"
    by_torchrun = tmp_path / "torchrun"
    r = _torchrun(by_torchrun, f"data_parallelism={parallelism}", keep)
    assert r.returncode == 0, r.stderr[-3000:]
    by_srun = tmp_path / "srun"
    _wait_all(_srun_like(by_srun, f"data_parallelism={parallelism}", keep))
    assert _losses(by_srun) == _losses(by_torchrun)
    # Checkpoints are written once, by all ranks together, at the expected steps.
    assert sorted(p.name for p in (by_srun / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_12", "step_6"]
    # A checkpoint written by 2 ranks loads on 1 process (for generation and export).
    srun_w, torchrun_w = _final_weights(by_srun), _final_weights(by_torchrun)
    for k in torchrun_w:
        torch.testing.assert_close(srun_w[k], torchrun_w[k], rtol=0, atol=0)
    if parallelism == "fsdp":
        shards = list((by_srun / "checkpoints/step_12/model/pp_00/tp_00").glob("sdp_*.pt"))
        assert len(shards) == 2


def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path: Path) -> None:
    two = tmp_path / "two"
    r = _torchrun(two, "batch_size=8", "max_grad_norm=null")
    assert r.returncode == 0, r.stderr[-3000:]
    # Rank 0 encoded the data once; both ranks trained on its memory-mapped cache.
    assert r.stderr.count("lmtune: encoded train.jsonl: 4,000 examples") == 1, r.stderr[-3000:]
    assert len(list(Path(os.environ["LMTUNE_CACHE_DIR"], "encoded").glob("*/tokens.npy"))) == 1
    one = tmp_path / "one"
    r1 = run_lmtune_in_process(*_args(one, "batch_size=16", "max_grad_norm=null"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    # Sharding alternates examples, so the 2x8 batches hold the same 16 examples as the 1x16 batch.
    for a, b in zip(_losses(two), _losses(one)):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (a, b)
    w2, w1 = _final_weights(two), _final_weights(one)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


def test_killing_one_rank_stops_the_other(tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs = _srun_like(out, "max_num_steps=100000", "checkpoint_every_n_steps=100000")
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
    _wait_all(_srun_like(reference))
    out = tmp_path / "out"
    procs = _srun_like(out)
    deadline = time.monotonic() + 300
    while not (out / "metrics/train.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGUSR1)  # only one rank hears it
    for p in procs:
        p.communicate(timeout=120)
    assert [p.returncode for p in procs] == [75, 75]
    steps = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit())
    assert steps and steps[-1] < STEPS
    _wait_all(_srun_like(out))
    assert _losses(out) == _losses(reference)


def test_missing_peer_fails_within_the_timeout(tmp_path: Path) -> None:
    env = _env(
        SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NNODES="1",
        SLURM_JOB_ID="778", SLURM_JOB_NODELIST="localhost", SLURM_TASKS_PER_NODE="2", MASTER_PORT=str(free_port()),
    )
    started = time.monotonic()
    r = subprocess.run([*LMTUNE, *_args(tmp_path / "out", "distributed_timeout_minutes=1")], env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 150
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr.split("lmtune: error:")[-1]
    assert "not all 2 did" in r.stderr, r.stderr[-3000:]
