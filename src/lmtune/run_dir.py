"""The output directory of a run, OUT: the one module that knows its layout.

    OUT/.lmtune.lock                 held (flock) by the run's first process: one run at a time
    OUT/lmtune.yaml                  the effective config; a rerun may change only RESUMABLE_CHANGES
    OUT/checkpoints/model.yaml       fairseq2's card of the model being trained
    OUT/checkpoints/tokenizer.yaml   lmtune's card of the tokenizer it was trained with
    OUT/checkpoints/lora.yaml        a LoRA run's settings and base model (its checkpoints hold only adapters)
    OUT/checkpoints/hf_export.yaml   the HF model_type a model built as another family exports as (Mistral as Llama)
    OUT/checkpoints/step_N/model     a complete checkpoint (fairseq2 writes step_N.tmp, then renames it)
    OUT/checkpoints/step_N/hf        its Hugging Face export
    OUT/checkpoints/scores/step_N.txt   fairseq2's score of checkpoint N (early_stopping.metric, higher is better)
    OUT/checkpoints/early_stopping.jsonl  every scheduled validation's score, replayed on resume
    OUT/early_stop.json              why the run stopped early, when it did
    OUT/representations/step_N.npy   hidden states of fixed validation examples at step N (lmtune.training.representation_store)
    OUT/representations/index.json   which layers, examples and steps they hold

Outside OUT, shared by every run of the user (``encoded_cache_root``):

    $LMTUNE_CACHE_DIR/encoded/NAME-HASH/   a data file encoded into arrays (lmtune.data.encoded_cache); `lmtune cache`
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.files import atomic_write_text

CHECKPOINTS = "checkpoints"
CONFIG_FILE = "lmtune.yaml"
MODEL_CARD = "model.yaml"  # written by fairseq2
TOKENIZER_CARD = "tokenizer.yaml"
LORA_CARD = "lora.yaml"
HF_EXPORT_CARD = "hf_export.yaml"
HF_EXPORT = "hf"
SCORES = "scores"  # written by fairseq2
EARLY_STOP_HISTORY = "early_stopping.jsonl"
EARLY_STOP_FILE = "early_stop.json"
ENCODED_CACHE = "encoded"
PROFILE = "profile"  # the profiler's traces (lmtune.training.profiling)
REPRESENTATIONS = "representations"

# Keys a rerun may change and still resume the same run. dtype: weights and optimizer state are
# float32 in every precision (lmtune.precision), so a checkpoint resumes under any; runs from before
# dtype=auto became the default saved dtype: bfloat16 or float32 and would otherwise be refused.
RESUMABLE_CHANGES = {
    "dtype",
    "max_num_steps", "max_num_data_epochs", "checkpoint_every_n_steps", "keep_last_n_checkpoints",
    "keep_last_n_models", "validate_every_n_steps", "publish_metrics_every_n_steps", "tensorboard",
    "wandb", "compile", "activation_checkpointing", "data_parallelism", "distributed_timeout_minutes", "export_hf",
    "early_stopping", "keep_best_n_checkpoints", "data_cache", "release_freed_memory",
    "grad_stats", "profiler",
}

_held: list[Any] = []  # keeps the lock file open until the process exits


def is_main_process() -> bool:
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var] == "0"
    return True


def lock_output_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = open(out_dir / ".lmtune.lock", "a+")  # noqa: SIM115  # held open for the run: the flock lives as long as the file
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

    path = out_dir / CONFIG_FILE
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
    atomic_write_text(out_dir / CONFIG_FILE, text)


def cache_home() -> Path:
    """The user's lmtune cache: $LMTUNE_CACHE_DIR, else $XDG_CACHE_HOME/lmtune, else ~/.cache/lmtune."""
    if os.environ.get("LMTUNE_CACHE_DIR"):
        return Path(os.environ["LMTUNE_CACHE_DIR"]).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser().absolute() if xdg else Path.home() / ".cache") / "lmtune"


def encoded_cache_root() -> Path:
    """Where the encoded data lives, shared by every run, sweep point and stage of this user."""
    return cache_home() / ENCODED_CACHE


def representations_dir(out_dir: Path) -> Path:
    return out_dir / REPRESENTATIONS


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / CHECKPOINTS


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step}"


def step_model_dir(checkpoints: Path, step: int) -> Path:
    return step_dir(checkpoints, step) / "model"


def hf_export_dir(checkpoints: Path, step: int) -> Path:
    return step_dir(checkpoints, step) / HF_EXPORT


def step_of(path: Path) -> int | None:
    """N for a directory named step_N, else None."""
    number = path.name.removeprefix("step_")
    return int(number) if path.name.startswith("step_") and number.isdigit() else None


def is_unfinished_step(path: Path) -> bool:
    return path.name.startswith("step_") and path.name.endswith(".tmp")


def is_checkpoint_dir(path: Path) -> bool:
    """OUT/checkpoints of a training run."""
    return path.is_dir() and (path / MODEL_CARD).is_file()


def checkpoint_steps(checkpoints: Path) -> list[int]:
    """The steps of complete checkpoints, oldest first."""
    steps = []
    for p in checkpoints.glob("step_*"):
        step = step_of(p)
        if step is not None and p.is_dir() and (p / "model").is_dir():
            steps.append(step)
    return sorted(steps)


def damaged_file(step: Path) -> Path | None:
    """The first file of checkpoint ``step`` that is not a whole torch.save archive (a zip whose
    directory sits at its end, so a file cut short has none); reads only the directories."""
    import zipfile

    for path in sorted(p for p in step.rglob("*.pt") if HF_EXPORT not in p.relative_to(step).parts):
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError, EOFError):
            return path
    return None


def check_resume_checkpoint(checkpoints: Path) -> None:
    """Before a run resumes: the checkpoint fairseq2 resumes from (the last one with trainer state)
    is whole, else one sentence naming the damaged file and the whole checkpoint before it."""
    resumable = [s for s in checkpoint_steps(checkpoints) if (step_dir(checkpoints, s) / "trainer").is_dir()]
    if not resumable:
        return
    damaged = damaged_file(step_dir(checkpoints, resumable[-1]))
    if damaged is None:
        return
    last = resumable[-1]
    whole = [s for s in checkpoint_steps(checkpoints) if s < last and damaged_file(step_dir(checkpoints, s)) is None]
    if not whole:
        what = "no whole checkpoint precedes it, so start the run afresh in a new OUT"
    elif (step_dir(checkpoints, whole[-1]) / "trainer").is_dir():
        what = f"the whole checkpoint before it is step_{whole[-1]}: delete {step_dir(checkpoints, last)} to resume from there"
    else:
        what = (f"the whole checkpoint before it, step_{whole[-1]}, holds only the model: start a new OUT from it "
                f"with model=checkpoint_step_{whole[-1]} resume_checkpoint_dir={checkpoints}")
    raise UserError(f"{damaged} is damaged (cut short: not a whole torch.save archive), so the run cannot resume from step {last}; {what}.")


def write_tokenizer_card(checkpoints: Path, card: dict[str, object]) -> None:
    import yaml

    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / TOKENIZER_CARD).write_text(yaml.safe_dump(card, sort_keys=False))


def write_hf_export_card(checkpoints: Path, card: dict[str, object]) -> None:
    import yaml

    checkpoints.mkdir(parents=True, exist_ok=True)
    atomic_write_text(checkpoints / HF_EXPORT_CARD, yaml.safe_dump(card, sort_keys=False))


def read_hf_export_card(checkpoints: Path) -> dict[str, object] | None:
    import yaml

    path = checkpoints / HF_EXPORT_CARD
    card = yaml.safe_load(path.read_text()) if path.is_file() else None
    return card if isinstance(card, dict) else None


def write_lora_card(checkpoints: Path, card: dict[str, object]) -> None:
    import yaml

    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / LORA_CARD).write_text(yaml.safe_dump(card, sort_keys=False))


def read_lora_card(checkpoints: Path) -> dict[str, object] | None:
    """A LoRA run's settings and base model; None for a full fine-tuning run."""
    import yaml

    path = checkpoints / LORA_CARD
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_cards(checkpoints: Path) -> tuple[dict[str, object], dict[str, object] | None]:
    """The run's model card and its tokenizer card (None for runs that wrote none)."""
    import yaml

    model = yaml.safe_load((checkpoints / MODEL_CARD).read_text()) or {}
    tok_file = checkpoints / TOKENIZER_CARD
    return model, (yaml.safe_load(tok_file.read_text()) if tok_file.is_file() else None)


def best_step(checkpoints: Path) -> int | None:
    """The complete checkpoint with the best score (the later one on a tie, as fairseq2 ranks
    them); None when no checkpoint has a score."""
    steps = set(checkpoint_steps(checkpoints))
    scored = []
    for p in (checkpoints / SCORES).glob("step_*.txt"):
        step = step_of(p.with_suffix(""))
        if step in steps:
            scored.append((float(p.read_text().strip()), step))
    return max(scored)[1] if scored else None


# ---------------------------------------------------------------- early stopping


def early_stop_history(checkpoints: Path) -> Path:
    return checkpoints / EARLY_STOP_HISTORY


def read_early_stop(out_dir: Path) -> dict[str, Any] | None:
    import json

    path = out_dir / EARLY_STOP_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())  # plain JSON, never unpickled
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not an early-stop record (a JSON object); delete it to let the run go on.")
    return record


def write_early_stop(out_dir: Path, record: dict[str, Any]) -> None:
    import json

    atomic_write_text(out_dir / EARLY_STOP_FILE, json.dumps(record, indent=2) + "\n")


def clear_early_stop(out_dir: Path) -> None:
    (out_dir / EARLY_STOP_FILE).unlink(missing_ok=True)
