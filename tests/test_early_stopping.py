"""Evaluation during training: task scores at each validation, early stopping, the best checkpoint.

The task: "Is N even?" answered yes/no, scored as classification. Two regimes:
- a learning rate of 1e-12 leaves every weight bit-identical (an AdamW step of ~1e-12
  is below float32's resolution at the weights' size), so each validation scores the
  same: accuracy provably plateaus and a run with patience P validating every V steps
  stops at step V * (P + 1);
- a learning rate of 1e-3 learns the labels within a few steps; where it stops is
  whatever it is, but a run killed and resumed must stop at the same step with the same
  metrics, and its best checkpoint, scored by `lmtune generate`, must give the
  accuracy recorded for it during training.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_user_error, metric_rows, run_lmtune_in_process


def write_task(root: Path) -> Path:
    rng = random.Random(0)

    def record() -> dict[str, str]:
        n = rng.randint(10, 99)
        return {"src": f"Is {n} even? Answer yes or no.", "tgt": "yes" if n % 2 == 0 else "no"}

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(record()) + "\n" for _ in range(64)))
    (root / "valid.jsonl").write_text("".join(json.dumps(record()) + "\n" for _ in range(16)))
    return root


def common(data: Path, *extra: str) -> list[str]:
    return [
        "--config", "model=tiny_llama", f"dataset={data}", "eval_task=classification", "validate_every_n_steps=2",
        "early_stopping.metric=valid.accuracy", "eval_max_gen_len=4", "max_num_tokens=512", "max_seq_len=64",
        "tensorboard=false", "publish_metrics_every_n_steps=1", *extra,
    ]  # fmt: skip


def valid_rows(out: Path) -> dict[int, dict[str, float]]:
    return {r["Step"]: r for r in metric_rows(out, "valid")}


def trained_steps(out: Path) -> list[int]:
    return sorted({r["Step"] for r in metric_rows(out)})


def checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("even"))


# float32: one process and two ranks score the same weights; under bf16 autocast their batches round apart.
PLATEAU = ["learning_rate=1e-12", "max_num_steps=40", "checkpoint_every_n_steps=2", "early_stopping.patience=2", "dtype=float32"]


@pytest.fixture(scope="module")
def plateau(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("plateau") / "out"
    result = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *PLATEAU))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_a_plateau_stops_after_patience_validations(plateau: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = plateau
    rows = valid_rows(out)
    assert sorted(rows) == [2, 4, 6]  # validated every 2 steps, stopped after 2 without improvement
    assert trained_steps(out)[-1] == 6 and checkpoints(out)[-1] == 6
    assert len({(r["Accuracy"], r["NLL Loss"]) for r in rows.values()}) == 1  # the weights never moved
    for r in rows.values():
        assert r["Eval Examples"] == 16 and 0 <= r["Accuracy"] <= 1 and "Macro F1" in r and "F1 yes" in r
    record = json.loads((out / "early_stop.json").read_text())
    assert (record["step"], record["bad"], record["best_step"]) == (6, 2, 6)  # a tie: the later checkpoint, as fairseq2 ranks them
    assert record["message"] in result.stderr and "stopped early at step 6" in result.stderr


@pytest.mark.slow
def test_a_stopped_run_rerun_ends_at_once_and_continues_when_allowed(plateau: tuple[Path, subprocess.CompletedProcess[str]], data: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(plateau[0], out)
    message = json.loads((out / "early_stop.json").read_text())["message"]
    again = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *PLATEAU))
    assert again.returncode == 0 and message in again.stderr
    assert trained_steps(out)[-1] == 6

    # One more validation of patience: stops at the next one.
    more = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *PLATEAU, "early_stopping.patience=3"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert sorted(valid_rows(out)) == [2, 4, 6, 8] and "stopped early at step 8" in more.stderr

    # More steps with the same patience: the count starts afresh at the resumed step.
    longer = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *PLATEAU, "early_stopping.patience=3", "max_num_steps=60"))
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert sorted(valid_rows(out)) == [2, 4, 6, 8, 10, 12, 14] and "stopped early at step 14" in longer.stderr


LEARN = ["learning_rate=1e-3", "max_num_steps=40", "checkpoint_every_n_steps=1", "early_stopping.patience=3", "keep_last_n_checkpoints=1"]


@pytest.fixture(scope="module")
def learned(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("learned") / "out"
    result = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *LEARN, "checkpoint_every_n_steps=2", "keep_best_n_checkpoints=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "early_stop.json").is_file(), "the run was meant to stop early"
    return out


@pytest.mark.slow
def test_the_best_checkpoint_scores_as_recorded(learned: Path, data: Path, tmp_path: Path) -> None:
    rows = valid_rows(learned)
    record = json.loads((learned / "early_stop.json").read_text())
    best = record["best_step"]
    assert rows[best]["Accuracy"] == max(r["Accuracy"] for r in rows.values()) > 0  # the model learned the labels
    assert best in checkpoints(learned)  # kept by keep_best_n_checkpoints=1, beside the last
    gen = tmp_path / "gen"
    r = run_lmtune_in_process(
        "generate", str(gen), "--config", f"checkpoint_dir={learned}/checkpoints", "model=best_checkpoint",
        f"dataset={data / 'valid.jsonl'}",
        "score=classification", "generator_config.max_gen_len=4",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    scores = json.loads((gen / "scores.json").read_text())
    assert scores["accuracy"] == rows[best]["Accuracy"] and scores["macro_f1"] == pytest.approx(rows[best]["Macro F1"], abs=1e-12)

    export = run_lmtune_in_process("write_hf_config", f"{learned}/best_checkpoint")
    assert export.returncode == 0, export.stderr[-3000:]
    assert (learned / "checkpoints" / f"step_{best}" / "hf" / "config.json").is_file()

    # A new stage from the best checkpoint: its first validation, before any update counts (warmup
    # from 0), scores the best checkpoint's weights.
    stage = tmp_path / "stage2"
    r = run_lmtune_in_process("instruction_finetune", str(stage), *common(data, "model=best_checkpoint", f"resume_checkpoint_dir={learned}/checkpoints",
                   "max_num_steps=1", "validate_every_n_steps=1", "lr_scheduler.num_warmup_steps=1", "early_stopping.metric=null"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert valid_rows(stage)[1]["Accuracy"] == rows[best]["Accuracy"]


@pytest.mark.slow
def test_killed_and_resumed_run_stops_at_the_same_step_with_the_same_metrics(learned: Path, data: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert run_lmtune_in_process("instruction_finetune", str(reference), *common(data, *LEARN)).returncode == 0
    expected = valid_rows(reference)
    stop = json.loads((reference / "early_stop.json").read_text())["step"]

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lmtune", "instruction_finetune", str(out), *common(data, *LEARN)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill it after its third checkpoint: after the first validation, between two others.
    while (not (out / "checkpoints").is_dir() or len(checkpoints(out)) == 0 or checkpoints(out)[-1] < 3) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints(out)[-1]
    assert proc.returncode == -signal.SIGKILL and killed_at < stop, (killed_at, stop)

    resumed = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *LEARN))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"stopped early at step {stop}" in resumed.stderr
    got = valid_rows(out)
    assert sorted(got) == sorted(expected)
    for step in expected:
        for key in ("NLL Loss", "Accuracy", "Macro F1"):
            assert got[step][key] == expected[step][key], (step, key)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("extra,fragments", [
    (["early_stopping.metric=valid.bleu"], ["'early_stopping.metric' is valid.bleu", "valid: valid.loss, valid.accuracy, valid.macro_f1, valid.f1_no, valid.f1_yes"]),
    (["validate_every_n_steps=null"], ["early_stopping.metric=valid.accuracy needs validations", "validate_every_n_steps=N"]),
    (["early_stopping.metric=null", "keep_best_n_checkpoints=2"], ["keep_best_n_checkpoints", "set early_stopping.metric"]),
    (["keep_best_n_checkpoints=1", "checkpoint_every_n_steps=3"], ["checkpoint_every_n_steps=3 must be a multiple of validate_every_n_steps=2"]),
    (["early_stopping.patience=0"], ["'early_stopping.patience' must be at least 1"]),
])  # fmt: skip
def test_bad_early_stopping_config_fails_before_training(data: Path, tmp_path: Path, extra: list[str], fragments: list[str]) -> None:
    out = tmp_path / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), *common(data, "max_num_steps=4", *extra))
    assert_user_error(r, *fragments)
    assert not (out / "checkpoints").exists()


def test_early_stopping_without_a_validation_split(tmp_path: Path) -> None:
    data = write_task(tmp_path / "data")
    (data / "valid.jsonl").unlink()
    r = run_lmtune_in_process("instruction_finetune", str(tmp_path / "out"), *common(data, "max_num_steps=4", "eval_task=auto"))
    assert_user_error(r, "early_stopping.metric=valid.accuracy needs a validation split", "valid_dataset=FILE")


@pytest.mark.slow
def test_best_checkpoint_of_a_run_without_scores(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=2", "checkpoint_every_n_steps=2").returncode == 0
    r = run_lmtune_in_process("generate", str(tmp_path / "gen"), "--config", f"checkpoint_dir={out}/checkpoints", "model=best_checkpoint", "dataset=tiny_gsm8k")
    assert_user_error(r, "model=best_checkpoint", "no scored checkpoint", "early_stopping.metric")
    r = run_lmtune_in_process("instruction_finetune", str(tmp_path / "stage2"), "--config-file", "tiny_gsm8k", "--config", "model=best_checkpoint", f"resume_checkpoint_dir={out}/checkpoints", "max_num_steps=2")
    assert_user_error(r, "model=best_checkpoint", "no scored checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_ranks_share_the_task_evaluation(plateau: tuple[Path, subprocess.CompletedProcess[str]], data: Path, tmp_path: Path, parallelism: str) -> None:
    """Each rank completes half of the prompts; the scores cover all 16 and equal one process's
    (the weights never move, so both runs score the same model)."""
    import os

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m", "lmtune", "instruction_finetune", str(out), *common(data, *PLATEAU, f"data_parallelism={parallelism}")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = valid_rows(plateau[0]), valid_rows(out)
    assert sorted(two) == sorted(one) == [2, 4, 6]
    for step in one:
        assert two[step]["Eval Examples"] == 16
        for key in ("Accuracy", "Macro F1", "F1 yes", "F1 no"):
            assert two[step][key] == one[step][key], (step, key)
        assert two[step]["NLL Loss"] == pytest.approx(one[step]["NLL Loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode,sign", [("auto", -1), ("min", -1), ("max", 1)])
def test_the_direction_of_the_metric_orders_the_checkpoints(data: Path, tmp_path: Path, mode: str, sign: int) -> None:
    """fairseq2 ranks checkpoints by a score where higher is better: the loss is negated, unless mode=max."""
    out = tmp_path / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), *common(data, *PLATEAU, "max_num_steps=2", "early_stopping.metric=valid.loss", f"early_stopping.mode={mode}"))
    assert r.returncode == 0, r.stderr[-3000:]
    loss = valid_rows(out)[2]["NLL Loss"]
    assert float((out / "checkpoints/scores/step_2.txt").read_text()) == pytest.approx(sign * loss, rel=1e-6)
