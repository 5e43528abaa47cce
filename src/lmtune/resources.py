"""Where an installed lmtune keeps its shipped folders (assets/, configs/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lmtune.errors import UserError


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"lmtune is installed without its {package} folder; reinstall lmtune.")
    return Path(next(iter(spec.submodule_search_locations)))


def assets_dir() -> Path:
    return package_dir("lmtune.assets")


def configs_dir() -> Path:
    return package_dir("lmtune.configs")
