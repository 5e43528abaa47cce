"""Writing files and directories so that a reader, or a run killed half-way, never sees them half-written.

Every file lmtune writes into OUT, a sweep or a cache goes through here: the new content is written
beside the old under a hidden name, then renamed over it (a rename within one directory is atomic).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _staging_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Calls ``write(tmp)`` to produce the new file at a staging path, then renames it to ``path``;
    on any failure the staging file is removed and ``path`` keeps what it held."""
    tmp = _staging_path(path)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def replace_dir(staging: Path, output: Path) -> None:
    """Puts a finished ``staging`` directory at ``output``; an existing one is moved aside first and
    removed last, so an interrupted swap never leaves ``output`` missing or half-written."""
    if output.exists():
        old = output.parent / f".{output.name}.replaced-{os.getpid()}"
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = deep_merge(old, value) if isinstance(value, Mapping) and isinstance(old, Mapping) else value
    return out
