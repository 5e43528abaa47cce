"""The output directory of a sweep, OUT:

    OUT/sweep.yaml          the definition: the verb each point runs, config file, base overrides, grid, and each point's name and overrides
    OUT/runs/<name>/        one point: an ordinary run directory (lmtune.yaml, checkpoints/, metrics/, ...)
    OUT/sweep.sbatch        the SLURM job array (``--slurm``), one array task per point
    OUT/slurm/              the array tasks' logs

A rerun may change the base config (each point's run then applies its verb's own rules for
resuming), but not the grid or the verb: other points belong in another OUT. A definition
without a ``recipe`` (written before sweeps ran preference_finetune) is instruction_finetune's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.files import atomic_write_text
from lmtune.sweep.grid import Point, grid_points

DEFINITION = "sweep.yaml"
RUNS = "runs"
SBATCH_SCRIPT = "sweep.sbatch"
SLURM_LOGS = "slurm"


def run_dir(out: Path, point: Point) -> Path:
    return out / RUNS / point.name


def is_sweep_dir(path: Path) -> bool:
    return (path / DEFINITION).is_file()


def save_definition(out: Path, config_file: str | None, config: list[str], grid: dict[str, list[str]], options: Sequence[object], recipe: str = "instruction_finetune") -> list[Point]:
    """Writes OUT/sweep.yaml (refusing another grid or verb than the ones already there); returns the points.
    ``options`` are the points' effective options, whose typed values the definition records."""
    import yaml

    from lmtune.options.load import to_dict

    path = out / DEFINITION
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        if old.get("grid") != grid:
            raise UserError(f"{out} holds a sweep over {_describe(old.get('grid') or {})}, not {_describe(grid)}; use a new OUT for another grid.")
        if old.get("recipe", "instruction_finetune") != recipe:
            raise UserError(f"{out} holds a sweep of {old.get('recipe', 'instruction_finetune')}, not {recipe}; use a new OUT for another --recipe.")
    points = grid_points(grid)
    definition = {
        "recipe": recipe,
        "config_file": config_file,
        "config": config,
        "grid": grid,
        "runs": [{"name": p.name, "overrides": {k: _value(to_dict(o), k) for k in grid}} for p, o in zip(points, options)],
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(definition, sort_keys=False))
    return points


def load_definition(out: Path) -> tuple[str, str | None, list[str], list[Point]]:
    """The verb, the config file, the base overrides and the points."""
    import yaml

    path = out / DEFINITION
    if not path.is_file():
        raise UserError(f"{out} is not a sweep's directory (no {DEFINITION}); start the sweep with `lmtune sweep {out} --grid ...` first.")
    d: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return str(d.get("recipe") or "instruction_finetune"), d.get("config_file"), list(d.get("config") or []), grid_points(d["grid"])


def _value(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _describe(grid: dict[str, list[str]]) -> str:
    return " x ".join(f"{k}={','.join(map(str, v))}" for k, v in grid.items()) or "nothing"
