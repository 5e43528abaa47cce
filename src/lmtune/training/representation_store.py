"""OUT/representations/: the hidden states a run saves for ``lmtune drift`` (numpy and JSON only).

    step_N.npy    float16, shape (layers, examples, model_dim): each example's hidden states at
                  step N, mean-pooled over its tokens; memory-mapped when read
    index.json    the layers (0: embedding output, i: decoder layer i's output), the number of
                  examples, the validation file they are the first of, the steps saved so far

Each file is written whole under a hidden name and renamed into place (``lmtune.files``), so a
run killed mid-write leaves the previous step files and index intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.errors import UserError
from lmtune.files import atomic_write, atomic_write_text
from lmtune.run_dir import representations_dir

INDEX = "index.json"


def step_file(out_dir: Path, step: int) -> Path:
    return representations_dir(out_dir) / f"step_{step}.npy"


def saved_steps(out_dir: Path) -> list[int]:
    steps = []
    for p in representations_dir(out_dir).glob("step_*.npy"):
        number = p.stem.removeprefix("step_")
        if number.isdigit():
            steps.append(int(number))
    return sorted(steps)


def save_step(out_dir: Path, step: int, states: np.ndarray, info: dict[str, Any]) -> Path:
    """Writes step N's (layers, examples, dim) array as float16, then the index with every saved step."""
    directory = representations_dir(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = step_file(out_dir, step)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to the staging name
            np.save(f, states.astype(np.float16))

    atomic_write(path, write)
    index = {**info, "shape": list(states.shape), "dtype": "float16", "steps": saved_steps(out_dir)}
    atomic_write_text(directory / INDEX, json.dumps(index, indent=2) + "\n")
    return path


def read_index(out_dir: Path) -> dict[str, Any]:
    """The index; a run that saved none is one sentence."""
    path = representations_dir(out_dir) / INDEX
    if not path.is_file() or not saved_steps(out_dir):
        raise UserError(f"{out_dir} holds no saved representations ({path} is missing); train with representations.every_n_steps=N (and a validation split) to save them.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as ex:
        raise UserError(f"{path} is damaged ({ex.msg} at line {ex.lineno}); it is rewritten at the next saved step.") from None


def load_step(out_dir: Path, step: int) -> np.ndarray:
    """Step N's array, memory-mapped (float16)."""
    path = step_file(out_dir, step)
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as ex:
        raise UserError(f"{path} cannot be read as a numpy array ({ex}); delete it to leave step {step} out.") from None
