"""What the multi-process tests share: the run, its environment without a launcher's variables, and
torchrun and srun-style launches of it (test_distributed.py, test_distributed_failures.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import free_port, metric_rows

LMTUNE = [sys.executable, "-m", "lmtune"]
STEPS = 12
COMMON = [
    "instruction_finetune", "--config-file", "tiny_gsm8k", "--config", f"max_num_steps={STEPS}",
    "checkpoint_every_n_steps=6", "publish_metrics_every_n_steps=1", "lr_scheduler.num_warmup_steps=2",
]


def run_args(out: Path, *extra: str) -> list[str]:
    return [COMMON[0], str(out), *COMMON[1:], *extra]


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def launch_torchrun(out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "--no-python", *LMTUNE, *run_args(out, *extra)]
    return subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600)


def srun_like(out: Path, *extra: str) -> list[subprocess.Popen[str]]:
    """Two tasks with the variables `srun --nodes=1 --ntasks=2` sets: no SLURM_NTASKS_PER_NODE, no scontrol."""
    procs, port = [], free_port()
    for rank in range(2):
        env = launch_env(
            SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
            SLURM_JOB_ID="777", SLURM_JOB_NODELIST="localhost", SLURM_TASKS_PER_NODE="2", MASTER_PORT=str(port),
            PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "scontrol").exists()),
        )
        procs.append(subprocess.Popen([*LMTUNE, *run_args(out, *extra)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def step_losses(out: Path) -> list[float]:
    rows = metric_rows(out)
    assert [r["Step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["NLL Loss"] for r in rows]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.specs import model_from_checkpoint_dir

    spec = model_from_checkpoint_dir(out / "checkpoints", None, "checkpoint_dir")
    return {k: v.detach().clone() for k, v in load_any_model(spec).state_dict().items()}
