"""Plain-text corpora for pretraining: files -> each rank's share -> documents.

What a document is:

- ``*.jsonl``: one document per line, its ``"text"`` field (other fields are ignored;
  blank lines and empty texts are skipped).
- any other file (``*.txt``): UTF-8 text, one document per paragraph: consecutive
  non-blank lines, ended by a blank (empty or whitespace-only) line or the end of
  the file. Its lines keep their newlines between them (``\\r\\n`` becomes ``\\n``).

How ranks share the corpus: with at least as many files as ranks, each rank reads
whole files (largest first to the rank with the fewest bytes so far; each rank reads
its files in corpus order). With fewer files than ranks, the files are laid end to
end and cut into equal byte ranges, one per rank; a range owns the documents whose
first line starts inside it (a document crossing the cut is read whole by the range
it starts in), so every document is read by exactly one rank.

A position in a rank's stream is (piece, byte offset of a document, tokens of it
already read): three integers, all a checkpoint needs to resume mid-document.

Nothing here imports torch or fairseq2: the checks run before training starts.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmtune.errors import UserError

TEXT, JSONL = "text", "jsonl"
CORPUS_SUFFIXES = (".txt", ".jsonl")
SNIFF_BYTES = 8192  # git's heuristic: a NUL byte among the first 8 KiB means binary
_BLANK = b" \t\r\n\x0b\x0c"


class CorpusError(UserError):
    """A corpus line or file lmtune cannot read as text (one sentence naming FILE:LINE)."""


@dataclass(frozen=True, kw_only=True)
class CorpusFile:
    path: Path
    size: int

    @property
    def format(self) -> str:
        return JSONL if self.path.suffix == ".jsonl" else TEXT


@dataclass(frozen=True, kw_only=True)
class Piece:
    """The bytes [start, end) of a file that one rank reads documents from."""

    path: Path
    format: str
    start: int
    end: int


# ---------------------------------------------------------------- the files


def list_corpus(refs: str | Sequence[str], key: str, resolve_card: Callable[[str], Path | None] = lambda ref: None) -> list[CorpusFile]:
    """The files ``dataset=`` names: files, directories (their *.txt and *.jsonl, recursively), globs or dataset cards."""
    paths: list[Path] = []
    for ref in [refs] if isinstance(refs, str) else list(refs):
        ref = str(ref)
        path = Path(ref).expanduser()
        if any(c in ref for c in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"{key}={ref}: the pattern matches no file.")
            paths += matches
            continue
        if not path.exists():
            card_path = resolve_card(ref)
            if card_path is None:
                raise UserError(f"{key}={ref}: no such file or directory (give a .txt or .jsonl file, a directory of them, a glob or a dataset card).")
            path = card_path
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UserError(f"{key}={ref}: the directory holds no .txt or .jsonl file.")
            paths += found
        elif path.suffix == ".json":
            raise UserError(f"{key}={ref}: a .json file; lmtune reads JSON Lines ({{\"text\": ...}} per line) from files named .jsonl, so rename it if it is one.")
        else:
            paths.append(path)
    seen: set[Path] = set()
    files = []
    for p in paths:
        real = p.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            files.append(CorpusFile(path=p, size=p.stat().st_size))
        except OSError as ex:
            raise UserError(f"{p}: cannot be read ({ex.strerror}).") from None
    return files


def binary_offset(path: Path) -> int | None:
    """The offset of a NUL byte among the file's first bytes (a binary file), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as ex:
        raise UserError(f"{path}: cannot be read ({ex.strerror}).") from None
    at = head.find(b"\0")
    return at if at >= 0 else None


def binary_file_error(path: Path, at: int) -> CorpusError:
    return CorpusError(f"{path} is a binary file, not text (a NUL byte at offset {at}); lmtune reads UTF-8 .txt and .jsonl files, so remove it (or decompress or convert it), or set skip_invalid=true to skip it.")


def shares(files: Sequence[CorpusFile], num_ranks: int) -> list[list[Piece]]:
    """Each rank's pieces of the corpus; together they hold every byte exactly once."""
    files = [f for f in files if f.size > 0]
    if len(files) >= num_ranks:
        loads, owned = [0] * num_ranks, [[] for _ in range(num_ranks)]  # type: list[int], list[list[int]]
        for i in sorted(range(len(files)), key=lambda i: (-files[i].size, i)):
            rank = min(range(num_ranks), key=lambda r: (loads[r], r))
            owned[rank].append(i)
            loads[rank] += files[i].size
        return [[Piece(path=files[i].path, format=files[i].format, start=0, end=files[i].size) for i in sorted(o)] for o in owned]
    total = sum(f.size for f in files)
    bounds = [total * r // num_ranks for r in range(num_ranks + 1)]
    out = []
    for rank in range(num_ranks):
        lo, hi, base, pieces = bounds[rank], bounds[rank + 1], 0, []
        for f in files:
            a, b = max(lo, base), min(hi, base + f.size)
            if a < b:
                pieces.append(Piece(path=f.path, format=f.format, start=a - base, end=b - base))
            base += f.size
        out.append(pieces)
    return out


def describe_share(pieces: Sequence[Piece]) -> str:
    """'a.txt, b.txt (1,234 bytes)' or 'c.txt bytes 0-5,000'."""
    parts = []
    for p in pieces:
        whole = p.start == 0 and p.end == p.path.stat().st_size
        parts.append(p.path.name if whole else f"{p.path.name} bytes {p.start:,}-{p.end:,}")
    return ", ".join(parts) + f" ({sum(p.end - p.start for p in pieces):,} bytes)"


# ---------------------------------------------------------------- documents

# Called for each skipped line with (path, offset of the line, why); None: raise instead.
OnSkip = Callable[[Path, int, str], None] | None


def line_number(path: Path, offset: int) -> int:
    """The 1-based number of the line starting at byte ``offset`` (error messages only)."""
    count, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 20, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count


def _decode(line: bytes, path: Path, offset: int, on_skip: OnSkip) -> str | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as ex:
        why = f"invalid UTF-8 (byte 0x{line[ex.start]:02x} at column {ex.start + 1})"
        if on_skip is None:
            raise CorpusError(f"{path}:{line_number(path, offset)}: {why}; fix or remove the line, or set skip_invalid=true to skip such lines (they are counted).") from None
        on_skip(path, offset, why)
        return None
    return text[1:] if offset == 0 and text.startswith("\ufeff") else text  # a byte-order mark


def _jsonl_text(line: bytes, path: Path, offset: int, on_skip: OnSkip) -> str | None:
    decoded = _decode(line, path, offset, on_skip)
    if decoded is None:
        return None
    try:
        record = json.loads(decoded)
        why = None if isinstance(record, dict) and isinstance(record.get("text"), str) else 'not a JSON object with a string "text" field'
    except json.JSONDecodeError as ex:
        why = f"not valid JSON ({ex.msg} at column {ex.colno})"
    if why is not None:
        if on_skip is None:
            raise CorpusError(f"{path}:{line_number(path, offset)}: {why}; each line must be like {{\"text\": \"...\"}}, or set skip_invalid=true to skip such lines (they are counted).")
        on_skip(path, offset, why)
        return None
    return record["text"]


def _previous_line_blank(f: BinaryIO, line_start: int) -> bool:
    """Whether the line ending just before ``line_start`` is blank (scans back to its first non-blank byte)."""
    at = line_start - 1  # the previous line's "\n"
    while at > 0:
        lo = max(0, at - 4096)
        f.seek(lo)
        block = f.read(at - lo)
        for byte in reversed(block):
            if byte == 0x0A:
                return True
            if byte not in _BLANK:
                return False
        at = lo
    return True


def _first_document(f: BinaryIO, piece: Piece) -> int:
    """The offset from which the piece's own documents are read: past a document begun before it."""
    if piece.start == 0:
        return 0
    f.seek(piece.start - 1)
    if f.read(1) != b"\n":
        f.readline()
    start = f.tell()
    if piece.format == JSONL or _previous_line_blank(f, start):
        return start
    f.seek(start)
    offset = start
    for line in iter(f.readline, b""):
        offset += len(line)
        if not line.strip(_BLANK):
            break
    return offset


def _piece_documents(piece: Piece, offset: int | None, on_skip: OnSkip) -> Iterator[tuple[int, str]]:
    """(byte offset, text) of each document the piece owns, from ``offset`` (a document's start) or the piece's start."""
    with open(piece.path, "rb") as f:
        pos = _first_document(f, piece) if offset is None else offset
        f.seek(pos)
        if piece.format == JSONL:
            while pos < piece.end:
                line = f.readline()
                if not line:
                    return
                start, pos = pos, pos + len(line)
                if line.strip(_BLANK):
                    text = _jsonl_text(line, piece.path, start, on_skip)
                    if text and not text.isspace():
                        yield start, text
            return
        doc_start: int | None = None
        lines: list[str] = []
        for line in iter(f.readline, b""):
            start, pos = pos, pos + len(line)
            if not line.strip(_BLANK):  # a blank line ends the paragraph
                if lines:
                    yield doc_start, "\n".join(lines)  # type: ignore[misc]
                doc_start, lines = None, []
                continue
            if doc_start is None:
                if start >= piece.end:
                    return  # the next paragraph belongs to the next piece
                doc_start = start
            text = _decode(line, piece.path, start, on_skip)
            if text is not None:
                lines.append(text.rstrip("\r\n"))
        if lines:
            yield doc_start, "\n".join(lines)  # type: ignore[misc]


def read_documents(pieces: Sequence[Piece], piece: int = 0, offset: int | None = None, on_skip: OnSkip = None) -> Iterator[tuple[int, int, str]]:
    """(piece index, byte offset, text) of each document of a share, from a position on."""
    for p in range(piece, len(pieces)):
        for start, text in _piece_documents(pieces[p], offset if p == piece else None, on_skip):
            yield p, start, text


# ---------------------------------------------------------------- the check before training


@dataclass(kw_only=True)
class CorpusCheck:
    files: list[CorpusFile]
    """The files read, in corpus order (binary files skipped with skip_invalid are left out)."""
    documents: list[int]
    """Documents per rank."""
    num_bytes: int
    skipped_lines: int = 0
    skipped_files: int = 0
    first_skipped: str | None = None

    def summary(self, what: str) -> str:
        ranks = f" over {len(self.documents)} ranks ({', '.join(f'{n:,}' for n in self.documents)})" if len(self.documents) > 1 else ""
        return f"{what}: {len(self.files)} file(s), {self.num_bytes:,} bytes, {sum(self.documents):,} documents{ranks}"

    def skipped(self, what: str) -> str | None:
        if not (self.skipped_lines or self.skipped_files):
            return None
        parts = ([f"{self.skipped_lines:,} invalid line(s)"] if self.skipped_lines else []) + ([f"{self.skipped_files} binary file(s)"] if self.skipped_files else [])
        return f"{what}: skipping {' and '.join(parts)} (skip_invalid=true; the first: {self.first_skipped})"


def check_corpus(files: Sequence[CorpusFile], num_ranks: int, *, skip_invalid: bool, what: str, every_rank: bool = True) -> CorpusCheck:
    """Reads every document once, as training will: each bad file or line is one CorpusError
    (or, with ``skip_invalid``, counted); with ``every_rank``, each rank must get a document
    (training; a rank may validate on none)."""
    kept, skipped_files, first = [], 0, None
    for f in files:
        at = binary_offset(f.path)
        if at is None:
            kept.append(f)
        elif not skip_invalid:
            raise binary_file_error(f.path, at)
        else:
            skipped_files += 1
            first = first or f"{f.path} (binary)"
    check = CorpusCheck(files=kept, documents=[0] * num_ranks, num_bytes=sum(f.size for f in kept), skipped_lines=0, skipped_files=skipped_files, first_skipped=first)

    def on_skip(path: Path, offset: int, why: str) -> None:
        check.skipped_lines += 1
        if check.first_skipped is None:
            check.first_skipped = f"{path}:{line_number(path, offset)}: {why}"

    all_shares = shares(kept, num_ranks)
    for rank, share in enumerate(all_shares):
        for _ in read_documents(share, on_skip=on_skip if skip_invalid else None):
            check.documents[rank] += 1
    if sum(check.documents) == 0:
        if not files:
            raise UserError(f"{what}: names no file.")
        detail = "" if check.first_skipped is None else f" (every line was skipped as invalid; the first: {check.first_skipped})"
        raise UserError(f"{what}: no readable text in {len(files)} file(s): every file is empty or blank{detail}.")
    for rank, n in enumerate(check.documents):
        if n == 0 and every_rank:
            raise UserError(f"{what}: rank {rank} of {num_ranks} would read no document (its share: {describe_share(all_shares[rank]) if all_shares[rank] else 'nothing'}); the text is too short to share over {num_ranks} ranks, so add text or use fewer ranks.")
    return check
