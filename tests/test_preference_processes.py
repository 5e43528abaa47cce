"""``lmtune preference_finetune`` over several processes, on the tiny GSM8K SFT checkpoint: a run killed
with SIGKILL and rerun gives the uninterrupted run's losses; two ranks under torchrun (DDP, FSDP)
give one rank's losses accumulating both batches and compute their shares of the reference
log-probs; ``lmtune sweep`` trains each point on one shared reference.

Apart from test_preference_finetune.py so that ``pytest -n auto --dist loadfile`` can run the two on
both workers; both read the one SFT checkpoint of the session (preference_runs.sft_checkpoints).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distributed_runs import launch_env
from helpers import run_lmtune, run_lmtune_in_process
from preference_runs import metrics, preference_args, write_pairs
from resume_runs import kill_after_first_checkpoint

pytestmark = pytest.mark.slow  # preference runs on an SFT checkpoint, killed, on two ranks and in a sweep


def test_killed_run_resumes_to_the_uninterrupted_losses(tmp_path: Path, sft: Path, pairs: Path) -> None:
    args = preference_args(sft, pairs, "max_num_steps=12", "checkpoint_every_n_steps=3", "keep_last_n_checkpoints=2")
    reference = tmp_path / "reference"
    r = run_lmtune_in_process("preference_finetune", str(reference), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "killed"
    at_kill = kill_after_first_checkpoint(out, args, 12, command="preference_finetune")
    r = run_lmtune_in_process("preference_finetune", str(out), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    # The reference log-probs come from the cache the first run wrote, never from the trained policy.
    assert "lmtune: reusing the reference log-probs" in r.stderr and "computing the reference" not in r.stderr, r.stderr[-3000:]
    expected, resumed = metrics(reference), metrics(out)
    assert sorted(resumed) == sorted(expected) == list(range(1, 13))
    for step in range(at_kill[-1] + 1, 13):
        assert resumed[step]["Preference Loss"] == expected[step]["Preference Loss"], step


def _torchrun(out: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m", "lmtune", "preference_finetune", str(out), *args]
    return subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_ranks_equal_one_rank_accumulating_two_batches(tmp_path: Path, sft: Path, pairs: Path, parallelism: str) -> None:
    common = ["max_num_steps=4", "checkpoint_every_n_steps=4", "max_grad_norm=null", f"data_parallelism={parallelism}"]
    two = tmp_path / "two"
    r = _torchrun(two, preference_args(sft, pairs, *common))
    assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    r1 = run_lmtune_in_process("preference_finetune", str(one), *preference_args(sft, pairs, *common, "gradient_accumulation_steps=2"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    # Rank r reads batches r, r + 2, ...: the two ranks' step holds the batches one rank accumulates.
    a, b = metrics(two), metrics(one)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step]["Number of Examples"] == b[step]["Number of Examples"]
        assert a[step]["Preference Loss"] == pytest.approx(b[step]["Preference Loss"], rel=1e-4, abs=1e-6), step


def test_two_ranks_compute_their_shares_of_the_same_reference_logps(tmp_path: Path, sft: Path) -> None:
    import numpy as np

    data = write_pairs(tmp_path / "data", 41, 5)  # 41 pairs: rank 0 computes 21, rank 1 20
    common = ["max_num_steps=1", "checkpoint_every_n_steps=1", "data_cache=false"]  # OUT/reference: one file per run
    r2 = _torchrun(tmp_path / "two", preference_args(sft, data, *common))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "lmtune: computing the reference log-probs of 41 pairs of train.jsonl with last_checkpoint, each rank its share (rank 0: 21, rank 1: 20)" in r2.stderr, r2.stderr[-3000:]
    assert "pairs of valid.jsonl with last_checkpoint, each rank its share (rank 0: 3, rank 1: 2)" in r2.stderr, r2.stderr[-3000:]
    r1 = run_lmtune_in_process("preference_finetune", str(tmp_path / "one"), *preference_args(sft, data, *common))
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert "lmtune: computing the reference log-probs of 41 pairs of train.jsonl with last_checkpoint ->" in r1.stderr, r1.stderr[-3000:]
    for split, n in (("train", 41), ("valid", 5)):
        two = np.load(tmp_path / f"two/reference/{split}/reference_logps.npy")
        one = np.load(tmp_path / f"one/reference/{split}/reference_logps.npy")
        assert two.shape == one.shape == (n, 2) and np.isfinite(one).all() and (one < 0).all()
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-4)  # packed into other batches: float32 sums may differ in the last bits
    # The first step's loss is log 2 on both: every rank's reference values are the starting policy's.
    assert metrics(tmp_path / "two")[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_a_sweep_over_beta_trains_each_point_on_one_shared_reference(tmp_path: Path, sft: Path) -> None:
    """``lmtune sweep --recipe preference_finetune``: each point trains as the verb would, and the
    points share the encoded pairs and the reference log-probs (computed once, by the first point)."""
    data = write_pairs(tmp_path / "data", 60, 10)
    out = tmp_path / "sweep"
    args = preference_args(sft, data, "max_num_steps=2", "checkpoint_every_n_steps=2")
    r = run_lmtune("sweep", str(out), "--recipe", "preference_finetune", *args, "--grid", "criterion.beta=0.1,0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    points = {beta: metrics(out / f"runs/criterion.beta={beta}") for beta in ("0.1", "0.5")}
    for train in points.values():
        assert sorted(train) == [1, 2]
        assert train[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)  # each point's reference is the start
    assert points["0.1"][2]["Preference Loss"] != pytest.approx(points["0.5"][2]["Preference Loss"], abs=1e-4)  # beta reached the loss
    for name in ("train.jsonl", "valid.jsonl"):
        assert r.stderr.count(f"lmtune: encoded {name}:") == 1, r.stderr[-3000:]
        assert r.stderr.count(f"pairs of {name} with last_checkpoint") == 1, r.stderr[-3000:]  # computed by the first point only
    assert r.stderr.count("lmtune: reusing the reference log-probs in ") == 2, r.stderr[-3000:]  # the second point, both splits
    cache = Path(os.environ["LMTUNE_CACHE_DIR"])
    assert len(list(cache.rglob("reference.json"))) == 2  # one entry per split, shared by both points
