"""Checkpoints and resume: a run killed with SIGKILL or preempted by a signal and rerun equals an uninterrupted
run; a finished run extends; reruns that cannot resume are refused in one sentence, nothing touched.
(Killed runs of other shapes, padded, bf16 and over several data epochs: test_resume_variants.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_user_error, losses, metric_rows, run_lmtune_in_process
from resume_runs import ARGS, complete_steps, kill_resume_and_compare, start_run

pytestmark = pytest.mark.slow  # every test trains (and kills) real runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the same command."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run_lmtune_in_process("instruction_finetune", str(out), *ARGS).returncode == 0
    return out


def test_killed_run_resumes_to_identicallosses(tmp_path: Path, reference: Path) -> None:
    metrics = metric_rows(reference)
    assert all(m["Padding"] == 0 for m in metrics)  # packed (the default): no padding at all
    kill_resume_and_compare(tmp_path / "killed", reference, ARGS)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_exits_75_and_resumes(tmp_path: Path, reference: Path, sig: signal.Signals) -> None:
    out = tmp_path / "preempted"
    proc = start_run(out)
    deadline = time.monotonic() + 300
    while not (out / "metrics/train.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    stopped_at = complete_steps(out)[-1]
    assert 0 < stopped_at < 60
    assert f"writing a checkpoint at step {stopped_at}; rerun the same command to resume" in stderr.decode()
    assert run_lmtune_in_process("instruction_finetune", str(out), *ARGS).returncode == 0
    expected, resumed = losses(reference), losses(out)
    for step in range(1, 61):
        assert resumed[step] == expected[step], step


def test_finished_run_extended_continues_from_its_last_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--config-file", "tiny_gsm8k", "--config", "checkpoint_every_n_steps=10", "publish_metrics_every_n_steps=1"]
    assert run_lmtune_in_process("instruction_finetune", str(out), *args, "max_num_steps=10").returncode == 0
    result = run_lmtune_in_process("instruction_finetune", str(out), *args, "max_num_steps=15")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max_num_steps 10 -> 15" in result.stderr
    assert sorted(losses(out)) == list(range(1, 16))
    assert complete_steps(out)[-1] == 15
    # OUT is OUT: no hash-named sweep folder.
    assert not [p for p in out.iterdir() if p.name.startswith("ws_")]


def test_rerun_with_another_model_is_refused(tmp_path: Path, isolated_user_cards: Path) -> None:
    out = tmp_path / "out"
    assert run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=2", "checkpoint_every_n_steps=2").returncode == 0
    (isolated_user_cards / "m.yaml").write_text("name: other\nbase: tiny_llama\n")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    r = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=4", "model=other")
    assert_user_error(r, "model='tiny_llama'", "new output directory")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_second_run_on_busy_output_dir_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "lmtune", "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=100000", "checkpoint_every_n_steps=100000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "lmtune.yaml").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=100000", "checkpoint_every_n_steps=100000")
        assert_user_error(second, str(out), "in use by another lmtune run", f"pid {first.pid}")
        assert first.poll() is None  # the first run is unharmed
    finally:
        first.kill()
        first.wait()


SHORT = ["--config-file", "tiny_gsm8k", "--config", "checkpoint_every_n_steps=2", "publish_metrics_every_n_steps=1"]


@pytest.fixture(scope="module")
def finished_4_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with checkpoints at steps 2 (the model only) and 4 (everything)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    result = run_lmtune_in_process("instruction_finetune", str(out), *SHORT, "max_num_steps=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert complete_steps(out) == [2, 4] and not (out / "checkpoints/step_2/trainer").exists()
    return out


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_checkpoint_cut_short_is_named_and_nothing_is_touched(tmp_path: Path, finished_4_steps: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_4_steps, out)
    damaged = out / "checkpoints/step_4/model/pp_00/tp_00/sdp_00.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    before = _files(out)
    r = run_lmtune_in_process("instruction_finetune", str(out), *SHORT, "max_num_steps=6")  # extended: it would resume from step 4
    assert_user_error(r, f"{damaged} is damaged", "cannot resume from step 4", "step_2, holds only the model", "model=checkpoint_step_2")
    assert _files(out) == before
    # With trainer state in step 2 too, deleting step 4 resumes from step 2.
    shutil.copytree(out / "checkpoints/step_4/trainer", out / "checkpoints/step_2/trainer")
    r = run_lmtune_in_process("instruction_finetune", str(out), *SHORT, "max_num_steps=6")
    assert_user_error(r, "the whole checkpoint before it is step_2", f"delete {out / 'checkpoints/step_4'} to resume")


def test_unreadable_checkpoint_that_is_whole_is_one_sentence(tmp_path: Path, finished_4_steps: Path) -> None:
    """Damage the archive check cannot see reaches fairseq2, whose CheckpointError becomes one sentence."""
    import zipfile

    out = tmp_path / "out"
    shutil.copytree(finished_4_steps, out)
    damaged = out / "checkpoints/step_4/model/pp_00/tp_00/sdp_00.pt"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("not_torch/data.pkl", b"garbage")
    r = run_lmtune_in_process("instruction_finetune", str(out), *SHORT, "max_num_steps=6")
    assert_user_error(r, f"{damaged} of step 4 is not a valid checkpoint file", "cannot resume from step 4")
    assert complete_steps(out) == [2, 4]
