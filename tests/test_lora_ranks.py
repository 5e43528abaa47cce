"""LoRA with its batch split: two ranks under torchrun (DDP, FSDP, QLoRA) and one rank accumulating two
batches give the adapters of one rank with the whole batch, and a two-rank run resumes bit for bit.

Apart from test_lora.py so that ``pytest -n auto --dist loadfile`` can run the two on both workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_runs import RUN_ARGS, adapter_tensors, losses, train, write_base
from resume_runs import cut_back

pytestmark = pytest.mark.slow  # trains LoRA runs, two of them on two ranks


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base(tmp_path_factory.mktemp("lora_base"))


@pytest.mark.parametrize("parallelism,quantize", [("ddp", "none"), ("fsdp", "none"), ("ddp", "nf4")])
def test_two_ranks_equal_one_rank_with_twice_the_batch(cards: Path, tmp_path: Path, parallelism: str, quantize: str) -> None:
    """torchrun, 2 processes on CPU (gloo): the same adapters as one process with both ranks' examples.
    Under QLoRA each rank loads and quantizes the base itself (a 4-bit base is never broadcast)."""
    import os
    import subprocess
    import sys

    args = ["lora.rank=4", "lora.alpha=8", f"lora.quantize={quantize}", "batch_size=8", "max_grad_norm=null"]  # no dropout: ranks draw different masks
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", LMTUNE_USER_ASSET_DIR=str(cards))
    torchrun = Path(sys.executable).with_name("torchrun")

    def run_two(out: Path) -> str:
        cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m", "lmtune",
               "instruction_finetune", str(out), *RUN_ARGS, *args, f"data_parallelism={parallelism}"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stderr

    two = tmp_path / "two"
    run_two(two)
    one = train(tmp_path / "one", cards, *args[:3], "batch_size=16", "max_grad_norm=null")
    l2, l1 = losses(two), losses(one)
    assert sorted(l2) == sorted(l1) == list(range(1, 7))
    for step in l1:
        assert abs(l2[step] - l1[step]) < 1e-4 * max(1.0, abs(l1[step])), (step, l2[step], l1[step])
    a2, a1 = adapter_tensors(two / "checkpoints/step_6"), adapter_tensors(one / "checkpoints/step_6")
    assert a2.keys() == a1.keys() and all(k.endswith(("lora_a", "lora_b")) for k in a2)
    # Summing gradients over ranks rounds differently; Adam divides by the gradients' own scale,
    # so a rounding difference in a near-zero gradient moves a weight by up to ~1e-5 here.
    for k in a1:
        torch.testing.assert_close(a2[k], a1[k], rtol=1e-3, atol=1e-4)
    # Resumed on 2 ranks from the step-3 checkpoint (FSDP: sharded adapters and optimizer state): bit-identical.
    resumed = tmp_path / "resumed"
    cut_back(two, resumed, keep_step=3, drop_step=6)
    assert "resuming from step 3" in run_two(resumed)
    lr = losses(resumed)
    assert [lr[s] for s in (4, 5, 6)] == [l2[s] for s in (4, 5, 6)]
    ar = adapter_tensors(resumed / "checkpoints/step_6")
    assert all(torch.equal(ar[k], a2[k]) for k in a2)


def test_gradient_accumulation_equals_one_batch_of_both(cards: Path, tmp_path: Path) -> None:
    args = ["lora.rank=4", "lora.alpha=8", "max_grad_norm=null"]
    accumulated = train(tmp_path / "accumulated", cards, *args, "batch_size=8", "gradient_accumulation_steps=2")
    one = train(tmp_path / "one", cards, *args, "batch_size=16")
    la, l1 = losses(accumulated), losses(one)
    assert sorted(la) == sorted(l1) == list(range(1, 7))
    for step in l1:
        assert abs(la[step] - l1[step]) < 1e-4 * max(1.0, abs(l1[step])), (step, la[step], l1[step])
    a2, a1 = adapter_tensors(accumulated / "checkpoints/step_6"), adapter_tensors(one / "checkpoints/step_6")
    for k in a1:  # the same tolerance as across ranks, for the same reason
        torch.testing.assert_close(a2[k], a1[k], rtol=1e-3, atol=1e-4)
