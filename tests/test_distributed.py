"""Several processes on one CPU machine (gloo): torchrun and srun-style launches, DDP and FSDP, give one
process's numbers. (A rank killed, signalled or missing: test_distributed_failures.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from distributed_runs import (
    final_weights,
    launch_torchrun,
    run_args,
    srun_like,
    step_losses,
    wait_all,
)
from helpers import run_lmtune_in_process

pytestmark = pytest.mark.slow  # every test trains under torchrun or srun-like ranks


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_srun_variables_match_torchrun(tmp_path: Path, parallelism: str) -> None:
    # Both checkpoints kept whole: fairseq2 0.8.1 lists the checkpoints to thin on each rank from the file
    # system after a save, and a rank that lists after rank 0 has thinned one skips the deletion's barrier,
    # so the ranks part ways ("lost contact"; seen once in CI under load). That race is not what this tests.
    keep = "keep_last_n_checkpoints=2"
    by_torchrun = tmp_path / "torchrun"
    r = launch_torchrun(by_torchrun, f"data_parallelism={parallelism}", keep)
    assert r.returncode == 0, r.stderr[-3000:]
    by_srun = tmp_path / "srun"
    wait_all(srun_like(by_srun, f"data_parallelism={parallelism}", keep))
    assert step_losses(by_srun) == step_losses(by_torchrun)
    # Checkpoints are written once, by all ranks together, at the expected steps.
    assert sorted(p.name for p in (by_srun / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_12", "step_6"]
    # A checkpoint written by 2 ranks loads on 1 process (for generation and export).
    srun_w, torchrun_w = final_weights(by_srun), final_weights(by_torchrun)
    for k in torchrun_w:
        torch.testing.assert_close(srun_w[k], torchrun_w[k], rtol=0, atol=0)
    if parallelism == "fsdp":
        shards = list((by_srun / "checkpoints/step_12/model/pp_00/tp_00").glob("sdp_*.pt"))
        assert len(shards) == 2


def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path: Path) -> None:
    two = tmp_path / "two"
    # float32: bf16 autocast rounds the 2x8 and the 1x16 batches' products differently (7e-4 relative apart).
    r = launch_torchrun(two, "batch_size=8", "max_grad_norm=null", "dtype=float32")
    assert r.returncode == 0, r.stderr[-3000:]
    # Rank 0 encoded the data once; both ranks trained on its memory-mapped cache.
    assert r.stderr.count("lmtune: encoded train.jsonl: 4,000 examples") == 1, r.stderr[-3000:]
    assert len(list(Path(os.environ["LMTUNE_CACHE_DIR"], "encoded").glob("*/tokens.npy"))) == 1
    one = tmp_path / "one"
    r1 = run_lmtune_in_process(*run_args(one, "batch_size=16", "max_grad_norm=null", "dtype=float32"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    # Sharding alternates examples, so the 2x8 batches hold the same 16 examples as the 1x16 batch.
    for a, b in zip(step_losses(two), step_losses(one)):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (a, b)
    w2, w1 = final_weights(two), final_weights(one)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
