"""--config-file: a YAML file, or the name of a preset in lmtune's shipped configs/."""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import UserError, did_you_mean
from lmtune.resources import configs_dir


def resolve_config_file(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return path
    for candidate in (configs_dir() / value, configs_dir() / f"{value}.yaml"):
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in configs_dir().glob("*.yaml"))
    raise UserError(f"--config-file {value} is neither a file nor a preset; {did_you_mean(value, presets)}")
