"""The encoded dataset cache in OUT/cache/encoded: encode once, memory-map on every rank and rerun.

One directory per data file, ``OUT/cache/encoded/<file stem>-<hash of its path>/``, holds the
arrays of ``lmtune.data.encoded_examples`` and ``fingerprint.json``: what the arrays were made
from (the data file's path, size and modification time; the tokenizer's family, settings and
the hashes of its files, chat template included; fairseq2's and lmtune's versions and the
cache format). A cache is used only when its fingerprint equals the run's; otherwise it is
rebuilt, with one line saying why. It is written into a hidden temporary directory that is
renamed when complete, so a killed run never leaves a half-written cache that looks whole.
``max_seq_len`` is not part of the key: every example is cached and the too-long ones are
skipped when the arrays are read, so a new ``max_seq_len`` reuses the cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from lmtune.catalog.specs import TokenizerSpec
from lmtune.errors import UserError
from lmtune.files import replace_dir

CACHE_FORMAT = 1
FINGERPRINT = "fingerprint.json"
# The files of a tokenizer directory that change what it encodes (not a model directory's weights).
TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_files(spec: TokenizerSpec) -> list[Path]:
    files = [spec.path] if spec.path.is_file() else []
    directory = spec.path if spec.path.is_dir() else spec.hf_dir
    if directory is not None:
        files += [p for p in sorted(directory.iterdir()) if p.is_file() and p.name.startswith(TOKENIZER_FILES) and p not in files]
    return files


def fingerprint(data_file: Path, tokenizer: TokenizerSpec) -> dict[str, object]:
    import lmtune

    stat = data_file.stat()
    return {
        "cache_format": CACHE_FORMAT,
        "lmtune": lmtune.__version__,
        "fairseq2": version("fairseq2"),
        "data": {"path": str(data_file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "tokenizer": {
            "family": tokenizer.family,
            "config": json.loads(json.dumps(tokenizer.config, sort_keys=True, default=str)),
            "files": {p.name: _sha256(p) for p in tokenizer_files(tokenizer)},
        },
    }


def cache_dir(root: Path, data_file: Path) -> Path:
    """``root`` is OUT/cache/encoded; one directory per data file."""
    key = hashlib.sha256(str(data_file.resolve()).encode()).hexdigest()[:12]
    return root / f"{data_file.stem}-{key}"


def stale_reason(directory: Path, expected: dict[str, object]) -> str | None:
    """None when the cache in ``directory`` was made from what ``expected`` describes; else why not."""
    try:
        found = json.loads((directory / FINGERPRINT).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it is unreadable"
    if (found.get("cache_format"), found.get("lmtune")) != (expected["cache_format"], expected["lmtune"]):
        return f"it was written by lmtune {found.get('lmtune')} (cache format {found.get('cache_format')}), this is lmtune {expected['lmtune']} (format {expected['cache_format']})"
    if found.get("fairseq2") != expected["fairseq2"]:
        return f"it was encoded with fairseq2 {found.get('fairseq2')}, this is fairseq2 {expected['fairseq2']}"
    if found.get("tokenizer") != expected["tokenizer"]:
        return "it was encoded with another tokenizer (its files or settings differ)"
    if found.get("data") != expected["data"]:
        return "the data file changed since (its size or modification time differ)"
    return None if found == expected else "its fingerprint differs"


@dataclass
class CachePlan:
    data_file: Path
    directory: Path
    fingerprint: dict[str, object]
    stale: str | None
    """None: the cache is there and current; else why it must be (re)built."""


def plan_cache(root: Path, data_file: Path, tokenizer: TokenizerSpec) -> CachePlan:
    directory = cache_dir(root, data_file)
    expected = fingerprint(data_file, tokenizer)
    stale = stale_reason(directory, expected) if directory.is_dir() else "none"
    return CachePlan(data_file, directory, expected, stale)


def build_cache(plan: CachePlan, encode: Callable[[Path], object], say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
    """Encodes ``plan.data_file`` into ``plan.directory`` (``encode(tmp_dir)`` writes the arrays
    and returns the EncodedExamples), replacing a stale cache. One process at a time: the caller
    holds OUT's lock."""
    final = plan.directory
    root = final.parent
    if plan.stale not in (None, "none"):
        say(f"lmtune: re-encoding {plan.data_file.name}: the cache in {final} is out of date ({plan.stale}).")
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f".{final.name}.*"):  # of a killed run
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        examples = encode(tmp)
        record = {"fingerprint": plan.fingerprint, "examples": len(examples), "tokens": examples.num_tokens}  # type: ignore[attr-defined]
        (tmp / FINGERPRINT).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(tmp, final)
    except OSError as ex:
        shutil.rmtree(tmp, ignore_errors=True)
        if ex.errno in NO_ROOM:
            raise UserError(f"{root}: no room left on the disk to write the encoded {plan.data_file} ({os.strerror(ex.errno)}); free some space, or set data_cache=false to encode it in memory instead.") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    say(f"lmtune: encoded {plan.data_file.name}: {record['examples']:,} examples, {record['tokens']:,} tokens in {seconds:.1f} s -> {final}")


def reuse_message(plan: CachePlan) -> str:
    return f"lmtune: reusing the encoded {plan.data_file.name} in {plan.directory} (delete it to re-encode)"
