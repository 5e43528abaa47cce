"""Preference pairs from the tiny GSM8K task and the SFT checkpoint the preference tests start from.

Pairs: a tiny GSM8K question, its right answer chosen and the same working with a wrong final answer
rejected. The SFT checkpoint is trained once per pytest session (tiny_builders.shared_tiny_checkpoint):
test_preference_finetune.py and test_preference_processes.py only read it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import REPO
from tiny_builders import shared_tiny_checkpoint

TRAIN = REPO / "assets/tiny/gsm8k/sft/train.jsonl"


def _wrong(target: str, rng: random.Random) -> str:
    answer = int(target.rsplit("#### ", 1)[1])
    return target.replace(f"#### {answer}", f"#### {answer + rng.choice([-3, -2, -1, 1, 2, 3])}")


def write_pairs(directory: Path, num_train: int, num_valid: int) -> Path:
    rng = random.Random(0)
    records = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", records[:num_train]), ("valid", records[-num_valid:])):
        lines = [json.dumps({"src": r["src"], "tgt_chosen": r["tgt"], "tgt_rejected": _wrong(r["tgt"], rng)}) for r in part]
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def sft_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/checkpoints of a tiny GSM8K SFT run: the policy's (and dpo's reference's) start."""
    return shared_tiny_checkpoint(tmp_path_factory, steps=400, every=400)  # greedy accuracy about 0.34


def preference_args(sft: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--config", "model=last_checkpoint", f"resume_checkpoint_dir={sft}", f"dataset={data}", "max_seq_len=128",
        "max_num_tokens=1024", "dtype=float32", "tensorboard=false", "learning_rate=1e-3", "publish_metrics_every_n_steps=1",
        "lr_scheduler.num_warmup_steps=0", *extra,
    ]  # fmt: skip


def metrics(out: Path, split: str = "train") -> dict[int, dict]:  # type: ignore[type-arg]
    """Step -> metrics; a resumed run re-logs the steps after its checkpoint, and the later line wins."""
    return {m["Step"]: m for m in map(json.loads, (out / f"metrics/{split}.jsonl").read_text().splitlines())}
