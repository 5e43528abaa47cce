"""The entries of the shared encoded-data cache, as ``lmtune cache list`` shows them and ``clear`` frees them.

An entry is cleared only while its lock is free (``lmtune.data.encoded_cache.entry_lock``), so a
build in progress is never pulled from under its builder; it is first renamed to a hidden name,
so no run ever finds half of one. A run that has already mapped an entry keeps reading it: on a
local disk its files live on until the run closes them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lmtune.data.encoded_cache import NO_FLOCK, damage, lock_path, read_record


@dataclass(kw_only=True)
class CacheEntry:
    directory: Path
    data_file: str
    tokenizer: str
    examples: int | None
    tokens: int | None
    bytes_on_disk: int
    last_used: float
    """The directory's modification time: set when it was built and at every reuse."""
    problem: str | None
    """None for a whole entry; else what is wrong with it (a run rebuilds it)."""

    @property
    def name(self) -> str:
        return self.directory.name


def disk_usage(directory: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in directory.rglob("*")) + directory.lstat().st_blocks * 512


def read_entry(directory: Path) -> CacheEntry:
    try:
        record = read_record(directory)
        problem = damage(directory, record)
    except ValueError as ex:
        record, problem = {}, str(ex)
    fingerprint = record.get("fingerprint") or {}
    data = fingerprint.get("data") if isinstance(fingerprint, dict) else None
    tokenizer = fingerprint.get("tokenizer") if isinstance(fingerprint, dict) else None
    family = tokenizer.get("family", "?") if isinstance(tokenizer, dict) else "?"
    name = record.get("tokenizer")
    return CacheEntry(
        directory=directory,
        data_file=str(data.get("path", "?")) if isinstance(data, dict) else "?",
        tokenizer=f"{name} ({family})" if name else str(family),
        examples=record.get("examples"),  # type: ignore[arg-type]
        tokens=record.get("tokens"),  # type: ignore[arg-type]
        bytes_on_disk=disk_usage(directory),
        last_used=directory.stat().st_mtime,
        problem=problem,
    )


def list_entries(root: Path) -> list[CacheEntry]:
    """Every entry under ``root``, the most recently used first (hidden builds and locks are not entries)."""
    if not root.is_dir():
        return []
    entries = [read_entry(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(entries, key=lambda e: -e.last_used)


def leftover_names(root: Path) -> set[str]:
    """Entries that exist only as what a build leaves beside them (a lock, a killed build's directory)."""
    names = set()
    for p in root.glob(".*"):
        name, dot, kind = p.name[1:].rpartition(".")
        if dot and (kind == "lock" or kind.startswith(("tmp-", "replaced-", "cleared-"))) and not (root / name).exists():
            names.add(name)
    return names


def _try_lock(directory: Path) -> tuple[bool, IO[str] | None]:
    """(free, the held lock file): (False, None) while a build holds it; (True, None) without flock."""
    fp = open(lock_path(directory), "a+")  # noqa: SIM115  # held open: the flock lives as long as the file
    try:
        fcntl.flock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fp.close()
        return False, None
    except OSError as ex:
        fp.close()
        if ex.errno not in NO_FLOCK:
            raise
        return True, None
    return True, fp


def clear_entry(directory: Path) -> bool:
    """Removes the entry at ``directory`` (whole or not) and what killed builds of it left; False while it is being built."""
    root = directory.parent
    free, fp = _try_lock(directory)
    if not free:
        return False
    try:
        if directory.exists():
            doomed = root / f".{directory.name}.cleared-{os.getpid()}"
            directory.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        for leftover in root.glob(f".{directory.name}.*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        if fp is not None:  # a waiter that held the old file checks the path again (entry_lock)
            try:
                lock_path(directory).unlink()
            except OSError as ex:
                if ex.errno != errno.ENOENT:
                    raise
    finally:
        if fp is not None:
            fp.close()
    return True


def older_than(entries: list[CacheEntry], days: float) -> list[CacheEntry]:
    cutoff = time.time() - days * 86400
    return [e for e in entries if e.last_used < cutoff]
