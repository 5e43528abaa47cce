"""W&B: a run with wandb.enabled=true ends cleanly and W&B holds the losses lmtune wrote to OUT/metrics.

Offline (WANDB_MODE=offline): nothing leaves the machine; the run's records are read back from the
``.wandb`` file that fairseq2's recorder leaves under OUT/wandb. fairseq2 0.8.1's recorder calls
``wandb.util.generate_id``, which wandb 0.28.2 and later no longer have (pyproject.toml pins wandb).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_lmtune

pytestmark = pytest.mark.slow  # trains a run with W&B offline


def _wandb_losses(run_file: Path) -> dict[int, float]:
    """Step -> train/NLL Loss from the history records of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(run_file))
    losses = {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        if "train/NLL Loss" in items:
            losses[int(items["_step"])] = items["train/NLL Loss"]
    return losses


def test_wandb_run_records_the_losses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }
    result = run_lmtune(
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=3",
        "publish_metrics_every_n_steps=1", "checkpoint_every_n_steps=3", "wandb.enabled=true", "wandb.project=lmtune-test",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.wandb"))
    expected = {m["Step"]: m["NLL Loss"] for m in map(json.loads, (out / "metrics/train.jsonl").read_text().splitlines())}
    assert sorted(expected) == [1, 2, 3]
    assert _wandb_losses(runs[0]) == expected
