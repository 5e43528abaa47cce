"""Iterative stages: a new run starts from exactly an earlier run's weights.

Stage 2 warms its learning rate up linearly from 0, so its first update changes
nothing: the model it saves after step 1 is, bit for bit, the model it started
from, which must be stage 1's chosen checkpoint. (Its step 2 then trains.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import metric_rows, run_lmtune_in_process

pytestmark = pytest.mark.slow  # trains two stages

STAGE1 = ["--config-file", "tiny_gsm8k", "--config", "max_num_steps=4", "checkpoint_every_n_steps=2",
          "publish_metrics_every_n_steps=2", "tensorboard=false", "max_num_tokens=1024", "lr_scheduler.num_warmup_steps=1"]


def _weights(step_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((step_dir / "model").rglob("*.pt"))
    assert len(files) == 1, files
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    return state.get("model", state)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    r = run_lmtune_in_process("instruction_finetune", str(out), *STAGE1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_2", "step_4"]
    return out


def _stage2_data(tmp_path: Path) -> Path:
    """New data for the new stage: 8 records, one batch."""
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps({"src": f"Ivo has {n} eggs. Ivo gets 1 more. How many eggs does Ivo have?\n", "tgt": f"#### {n + 1}"}) + "\n" for n in range(8)))
    return path


@pytest.mark.parametrize("model,step", [("last_checkpoint", 4), ("checkpoint_step_2", 2)])
def test_stage2_starts_from_stage1_weights(stage1: Path, tmp_path: Path, model: str, step: int) -> None:
    out2 = tmp_path / "stage2"
    r = run_lmtune_in_process(
        "instruction_finetune", str(out2), "--config", f"resume_checkpoint_dir={stage1}/checkpoints", f"model={model}",
        f"dataset={_stage2_data(tmp_path)}", "learning_rate=5e-6", "max_num_steps=2", "checkpoint_every_n_steps=1",
        "publish_metrics_every_n_steps=1", "lr_scheduler.num_warmup_steps=1", "keep_last_n_models=2", "batch_size=8", "max_seq_len=128", "dtype=float32",
        "tensorboard=false",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = metric_rows(out2)[0]
    # A new run: step 1 of a fresh schedule (warmup from 0) on the new data.
    assert (metrics["Step"], metrics["Learning Rate"], metrics["Number of Examples"]) == (1, 0.0, 8.0)
    started = _weights(out2 / "checkpoints/step_1")
    assert _equal(started, _weights(stage1 / f"checkpoints/step_{step}"))
    other = 2 if step == 4 else 4
    assert not _equal(started, _weights(stage1 / f"checkpoints/step_{other}"))
    assert not _equal(_weights(out2 / "checkpoints/step_2"), started)  # and then it trains
    # Stage 2 keeps stage 1's tokenizer, so stage 3 can start from stage 2 alike.
    assert (out2 / "checkpoints/tokenizer.yaml").read_text() == (stage1 / "checkpoints/tokenizer.yaml").read_text()


def test_generate_as_in_the_tutorial(stage1: Path, tmp_path: Path) -> None:
    """`lmtune generate $SAVE_DIR --config checkpoint_dir=$CKPT_DIR model=checkpoint_step_N
    generator_config.temperature=0.1 dataset=$DATASET`, as written; the same weights
    reached through a stage-2 run generate the same samples."""
    dataset = tmp_path / "test.jsonl"
    lines = (Path(__file__).resolve().parent.parent / "assets/tiny/gsm8k/test/test.jsonl").read_text().splitlines()[:12]
    dataset.write_text("\n".join(lines) + "\n")
    save = tmp_path / "save"
    r = run_lmtune_in_process("generate", str(save), "--config", f"checkpoint_dir={stage1}/checkpoints", "model=checkpoint_step_4",
                   "generator_config.temperature=0.1", f"dataset={dataset}", "generator_config.max_gen_len=16")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (save / "generations.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows] == [json.loads(line)["src"] for line in lines]
    assert all(row["reference"] == json.loads(line)["tgt"] for row, line in zip(rows, lines))
    assert all(1 <= len(row["token_ids"]) <= 16 for row in rows)

    r = run_lmtune_in_process("generate", str(tmp_path / "again"), "--config", f"checkpoint_dir={stage1}/checkpoints", "model=last_checkpoint",
                   "generator_config.temperature=0.1", f"dataset={dataset}", "generator_config.max_gen_len=16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "again/generations.jsonl").read_text() == (save / "generations.jsonl").read_text()
