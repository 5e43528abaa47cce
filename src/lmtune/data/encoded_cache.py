"""The encoded dataset cache, shared by every run of one user: encode once, memory-map everywhere.

One entry per data file and tokenizer, ``<cache dir>/encoded/<file stem>-<hash>/`` (the cache
directory is ``lmtune.run_dir.encoded_cache_root``: ``$LMTUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/lmtune``, else ``~/.cache/lmtune``), holds the arrays of
``lmtune.data.encoded_examples`` and ``fingerprint.json``: what the arrays were made from (the
data file's path, size and modification time; the tokenizer's family, settings and the hashes
of its files, chat template included; fairseq2's and lmtune's versions and the cache format),
each array file's size, and who built it. The hash is of that fingerprint less the data file's
size and time, so every run, sweep point and stage on the same data and tokenizer finds the one
entry, and an edited data file rebuilds its entry in place. An entry is used only when its
fingerprint equals the run's and every file has the size it was written with (a file cut short
would otherwise end the run in numpy's mmap); else it is rebuilt, with one line saying why.

Builds are serialised per entry by ``fcntl.flock`` on ``.<entry>.lock`` beside it: concurrent runs
on one machine (a sweep, several srun tasks, two commands started at once) build it once, the
others wait and then map it. The kernel drops the lock when its holder dies, so a killed run
never blocks the next. An entry is written into a hidden temporary directory and swapped in
when complete (``lmtune.files.replace_dir``), so nobody ever maps a half-written one.
``max_seq_len`` is not part of the key: every example is cached and the too-long ones are
skipped when the arrays are read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.catalog.specs import TokenizerSpec
from lmtune.errors import UserError
from lmtune.files import replace_dir

if TYPE_CHECKING:
    from lmtune.data.encoded_examples import EncodedExamples

CACHE_FORMAT = 2  # 2: per-user entries keyed by data file and tokenizer, file sizes recorded
FINGERPRINT = "fingerprint.json"
# lmtune.data.encoded_examples.FILES as files (not imported: it brings torch, and `lmtune cache` stays light)
ARRAYS = ("tokens.npy", "target_mask.npy", "offsets.npy", "num_targets.npy")
# The files of a tokenizer directory that change what it encodes (not a model directory's weights).
TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# flock is not offered by every network file system (Lustre without -o flock): build unlocked there.
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


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
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def tokenizer_fingerprint(tokenizer: TokenizerSpec) -> dict[str, object]:
    """What decides the ids a tokenizer gives: its family, settings and files' hashes (not its path)."""
    return {
        "family": tokenizer.family,
        "config": json.loads(json.dumps(tokenizer.config, sort_keys=True, default=str)),
        "files": {p.name: _sha256(p) for p in tokenizer_files(tokenizer)},
    }


def cache_dir(root: Path, data_file: Path, expected: dict[str, object]) -> Path:
    """The entry of ``data_file`` as ``expected`` (its fingerprint) encodes it, under ``root``."""
    key = {**expected, "data": {"path": str(data_file.resolve())}}  # not its size and time: an edit rebuilds in place
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"{data_file.stem}-{digest}"


def lock_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.lock"


def read_record(directory: Path) -> dict[str, object]:
    """The entry's fingerprint.json; ValueError (saying what is wrong with it) when it is not a record."""
    path = directory / FINGERPRINT
    if not path.is_file():
        raise ValueError(f"{FINGERPRINT} is missing")
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise ValueError(f"{FINGERPRINT} is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), dict):
        raise ValueError(f"{FINGERPRINT} holds no fingerprint")
    return record


def damage(directory: Path, record: dict[str, object]) -> str | None:
    """None when every array file has the size the build recorded; else the first that does not."""
    sizes = record.get("files")
    if not isinstance(sizes, dict):
        return f"{FINGERPRINT} records no file sizes"
    for name in ARRAYS:
        if name not in sizes:
            return f"{FINGERPRINT} records no size for {name}"
        try:
            size = (directory / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if size != sizes[name]:
            return f"{name} has {size:,} bytes where {sizes[name]:,} were written"
    return None


def out_of_date(found: dict[str, object], expected: dict[str, object]) -> str | None:
    if (found.get("cache_format"), found.get("lmtune")) != (expected["cache_format"], expected["lmtune"]):
        return f"it was written by lmtune {found.get('lmtune')} (cache format {found.get('cache_format')}), this is lmtune {expected['lmtune']} (format {expected['cache_format']})"
    if found.get("fairseq2") != expected["fairseq2"]:
        return f"it was encoded with fairseq2 {found.get('fairseq2')}, this is fairseq2 {expected['fairseq2']}"
    if found.get("tokenizer") != expected["tokenizer"]:
        return "it was encoded with another tokenizer (its files or settings differ)"
    if found.get("data") != expected["data"]:
        return "the data file changed since (its size or modification time differ)"
    return None if found == expected else "its fingerprint differs"


@dataclass(kw_only=True)
class CachePlan:
    data_file: Path
    directory: Path
    fingerprint: dict[str, object]
    stale: str | None
    """None: the entry is there, current and whole; "none": there is none; else why it must be rebuilt."""
    damaged: bool = False
    tokenizer: str = ""
    """The tokenizer's card name, for ``lmtune cache list``."""


def check_entry(directory: Path, expected: dict[str, object]) -> tuple[str, bool] | None:
    """None when the entry in ``directory`` is current and whole; else (why not, whether it is damaged)."""
    try:
        record = read_record(directory)
    except ValueError as ex:
        return str(ex), True
    reason = out_of_date(record["fingerprint"], expected)  # type: ignore[arg-type]
    if reason is not None:
        return reason, False
    broken = damage(directory, record)
    return (broken, True) if broken is not None else None


def plan_cache(root: Path, data_file: Path, tokenizer: TokenizerSpec) -> CachePlan:
    expected = fingerprint(data_file, tokenizer)
    directory = cache_dir(root, data_file, expected)
    if not directory.is_dir():
        return CachePlan(data_file=data_file, directory=directory, fingerprint=expected, stale="none", tokenizer=tokenizer.name)
    problem = check_entry(directory, expected)
    stale, damaged = problem if problem is not None else (None, False)
    return CachePlan(data_file=data_file, directory=directory, fingerprint=expected, stale=stale, damaged=damaged, tokenizer=tokenizer.name)


@contextlib.contextmanager
def entry_lock(directory: Path, waiting: Callable[[str], None] = lambda holder: None) -> Iterator[bool]:
    """Holds the entry's lock (True), or yields False where the file system offers no flock.
    ``waiting(holder)`` is called once when another process holds it."""
    path = lock_path(directory)
    while True:
        fp = open(path, "a+")  # noqa: SIM115  # held open: the flock lives as long as the file
        try:
            try:
                fcntl.flock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fp.seek(0)
                waiting(fp.read().strip() or "another process")
                fcntl.flock(fp, fcntl.LOCK_EX)
        except OSError as ex:
            fp.close()
            if ex.errno not in NO_FLOCK:
                raise
            yield False
            return
        try:  # `lmtune cache clear` may have removed the file while we waited: hold the one at the path
            current = os.fstat(fp.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        fp.close()
    try:
        fp.seek(0)
        fp.truncate()
        fp.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        fp.flush()
        yield True
    finally:
        fp.close()  # releases the lock


def _no_room(root: Path, plan: CachePlan, ex: OSError) -> UserError:
    return UserError(f"{root}: no room left on the disk to write the encoded {plan.data_file} ({os.strerror(ex.errno or 0)}); free some space (`lmtune cache clear`), or set data_cache=false to encode it in memory instead.")


def ensure_cache(plan: CachePlan, encode: Callable[[Path], object], say: Say = _stderr) -> None:
    """Makes ``plan.directory`` a current, whole entry: reuses it, or builds it once while others wait.
    ``encode(tmp_dir)`` writes the arrays into ``tmp_dir`` and returns the EncodedExamples."""
    root = plan.directory.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_path(plan.directory).touch()
    except OSError as ex:
        if ex.errno in NO_ROOM:
            raise _no_room(root, plan, ex) from None
        raise UserError(f"{root}: cannot write the encoded data cache there ({ex.strerror}); set LMTUNE_CACHE_DIR to a writable directory, or data_cache=false.") from None
    waiting = lambda holder: say(f"lmtune: waiting for {holder}, which is encoding {plan.data_file.name} into {plan.directory}")  # noqa: E731
    with entry_lock(plan.directory, waiting) as held:
        # Checked again under the lock: the process we waited for has just built it.
        problem = check_entry(plan.directory, plan.fingerprint) if plan.directory.is_dir() else ("none", False)
        if problem is None:
            with contextlib.suppress(OSError):
                os.utime(plan.directory)  # its last use, for `lmtune cache list` and `clear --older-than`
            say(reuse_message(plan))
            return
        plan.stale, plan.damaged = problem
        build_cache(plan, encode, say, remove_leftovers=held)


def build_cache(plan: CachePlan, encode: Callable[[Path], object], say: Say = _stderr, *, remove_leftovers: bool = True) -> None:
    """Encodes ``plan.data_file`` into ``plan.directory``, replacing a stale or damaged entry. The
    caller holds the entry's lock (``ensure_cache``); ``remove_leftovers``: clear what killed builds left."""
    final = plan.directory
    root = final.parent
    if plan.stale not in (None, "none"):
        say(f"lmtune: re-encoding {plan.data_file.name}: the cache in {final} is {'damaged' if plan.damaged else 'out of date'} ({plan.stale}).")
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if remove_leftovers:
            for leftover in root.glob(f".{final.name}.*"):  # of a killed build
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        examples = encode(tmp)
        record = {
            "fingerprint": plan.fingerprint,
            "examples": len(examples),  # type: ignore[arg-type]
            "tokens": examples.num_tokens,  # type: ignore[attr-defined]
            "files": {name: (tmp / name).stat().st_size for name in ARRAYS},
            "tokenizer": plan.tokenizer,
            "built": {"by": f"pid {os.getpid()} on {os.uname().nodename}", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 3)},
        }
        (tmp / FINGERPRINT).write_text(json.dumps(record, indent=2) + "\n")  # written last: the entry is whole
        try:
            replace_dir(tmp, final)
        except OSError as ex:  # unlocked (no flock): another process swapped in the same entry first
            if ex.errno not in (errno.ENOTEMPTY, errno.EEXIST) or check_entry(final, plan.fingerprint) is not None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as ex:
        shutil.rmtree(tmp, ignore_errors=True)
        if ex.errno in NO_ROOM:
            raise _no_room(root, plan, ex) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    say(f"lmtune: encoded {plan.data_file.name}: {record['examples']:,} examples, {record['tokens']:,} tokens in {seconds:.1f} s -> {final}")


def reuse_message(plan: CachePlan) -> str:
    return f"lmtune: reusing the encoded {plan.data_file.name} in {plan.directory} (`lmtune cache clear` to re-encode)"


def load_encoded(directory: Path) -> EncodedExamples:
    """Every rank, inside fairseq2: the entry's arrays, memory-mapped, once their sizes are checked."""
    from lmtune.data.encoded_examples import EncodedExamples

    try:
        problem = damage(directory, read_record(directory))
    except ValueError as ex:
        problem = str(ex)
    if problem is not None:
        raise UserError(
            f"{directory}: the encoded data is not whole on {os.uname().nodename} ({problem}); rerun to rebuild it. A run over "
            "several nodes needs LMTUNE_CACHE_DIR on a file system they all see (as OUT is), or data_cache=false."
        )  # fmt: skip
    return EncodedExamples.load(directory)
