"""The output directory of a run: one run at a time, and reruns that resume safely.

``OUT/.lmtune.lock`` is held (flock) for the life of the run's first process, so
a second run on the same OUT is refused instead of writing beside the first.
``OUT/lmtune.yaml`` records the effective config; a rerun that changes what the
checkpoints were trained on (model, tokenizer, data, sequence length) is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from lmtune.errors import UserError

# Keys a rerun may change and still resume the same run.
RESUMABLE_CHANGES = {
    "max_num_steps", "max_num_data_epochs", "checkpoint_every_n_steps", "keep_last_n_checkpoints",
    "keep_last_n_models", "validate_every_n_steps", "publish_metrics_every_n_steps", "tensorboard",
    "wandb", "compile", "activation_checkpointing", "data_parallelism", "distributed_timeout_minutes", "export_hf",
}

_held: list[Any] = []  # keeps the lock file open until the process exits


def is_main_process() -> bool:
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var] == "0"
    return True


def lock_output_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = open(out_dir / ".lmtune.lock", "a+")
    try:
        fcntl.flock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fp.seek(0)
        holder = fp.read().strip() or "another process"
        fp.close()
        raise UserError(f"{out_dir} is in use by another lmtune run ({holder}); wait for it to finish or choose another output directory.") from None
    fp.seek(0)
    fp.truncate()
    fp.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    fp.flush()
    _held.append(fp)


def check_rerun(out_dir: Path, flat: dict[str, Any], has_checkpoint: bool) -> dict[str, Any] | None:
    """Refuses a rerun whose changes would not match the saved checkpoints; returns the old config."""
    import yaml

    path = out_dir / "lmtune.yaml"
    if not path.is_file():
        return None
    old = yaml.safe_load(path.read_text()) or {}
    if not has_checkpoint:
        return old
    for key, value in flat.items():
        if key in RESUMABLE_CHANGES or key not in old:
            continue
        if old[key] != value:
            raise UserError(f"{out_dir} holds a run with {key}={old[key]!r}, and resuming it with {key}={value!r} would not match its checkpoints; use a new output directory (for a new stage: model=last_checkpoint resume_checkpoint_dir={out_dir}/checkpoints).")
    return old


def save_config(out_dir: Path, text: str) -> None:
    tmp = out_dir / "lmtune.yaml.tmp"
    tmp.write_text(text)
    tmp.replace(out_dir / "lmtune.yaml")
