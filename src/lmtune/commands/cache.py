"""``lmtune cache list | clear``: the encoded data that runs share (``lmtune.data.encoded_cache``).

Entries live in ``$LMTUNE_CACHE_DIR/encoded`` (default ``$XDG_CACHE_HOME/lmtune``, else
``~/.cache/lmtune``); a run rebuilds whatever was cleared.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lmtune.errors import UserError

SUMMARY = "list and clear the encoded data that runs share"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    actions.add_parser("list", help="the entries: data file, tokenizer, examples, tokens, size on disk, last used")
    a = actions.add_parser("clear", help="free entries: all of them, those unused for DAYS, or one")
    a.add_argument("entry", nargs="?", help="an entry's name as `lmtune cache list` shows it, or a data file (all its entries)")
    a.add_argument("--older-than", type=float, metavar="DAYS", help="only entries last used more than DAYS days ago")


def size_text(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def list_cache(root: Path) -> str:
    from lmtune.data.cache_entries import list_entries

    entries = list_entries(root)
    if not entries:
        return f"lmtune: no encoded data in {root}"
    total = sum(e.bytes_on_disk for e in entries)
    rows = [("ENTRY", "EXAMPLES", "TOKENS", "SIZE", "LAST USED", "TOKENIZER", "DATA FILE")]
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        data = e.data_file if e.problem is None else f"{e.data_file} (damaged: {e.problem}; a run rebuilds it)"
        rows.append((e.name, _count(e.examples), _count(e.tokens), size_text(e.bytes_on_disk), used, e.tokenizer, data))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"lmtune: {len(entries)} encoded data file(s) in {root}, {size_text(total)} on disk"]
    for r in rows:
        cells = [c.rjust(w) if i in (1, 2, 3) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells) + "  " + r[-1])
    return "\n".join(lines)


def clear_cache(root: Path, entry: str | None, older_than: float | None) -> str:
    from lmtune.data.cache_entries import clear_entry, leftover_names, list_entries
    from lmtune.data.cache_entries import older_than as unused_for

    entries = list_entries(root)
    chosen = entries
    if entry is not None:
        data = str(Path(entry).expanduser().resolve()) if Path(entry).expanduser().is_file() else None
        chosen = [e for e in entries if e.name == entry or (data is not None and e.data_file == data)]
        if not chosen:
            from lmtune.errors import did_you_mean

            names = [e.name for e in entries]
            raise UserError(f"no encoded data '{entry}' in {root}; " + (did_you_mean(entry, names) if names else "the cache is empty."))
    if older_than is not None:
        if older_than < 0:
            raise UserError(f"--older-than takes a number of days, 0 or more, got {older_than}.")
        chosen = unused_for(chosen, older_than)
    freed, busy = 0, []
    for e in chosen:
        if clear_entry(e.directory):
            freed += e.bytes_on_disk
        else:
            busy.append(e.name)
    if entry is None and older_than is None and root.is_dir():
        for name in leftover_names(root):  # what killed builds left
            clear_entry(root / name)
    lines = [f"lmtune: freed {len(chosen) - len(busy)} encoded data file(s), {size_text(freed)}, in {root}"]
    if busy:
        lines.append(f"lmtune: kept {', '.join(busy)}: being built by a run now")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    from lmtune.run_dir import encoded_cache_root

    root = encoded_cache_root()
    if args.cache_command == "list":
        print(list_cache(root))
    else:
        print(clear_cache(root, args.entry, args.older_than))
