"""Reading instruction-tuning records from JSONL, with file:line errors.

A record is either ``{"src": ..., "tgt": ...}`` (prompt/response) or
``{"messages": [{"role": ..., "content": ...}, ...]}`` (chat). Either may carry ``answers``
(a list of strings, or SQuAD's ``{"text": [...]}``), the reference answers that score=qa reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.score.qa import answer_list

ROLES = ("system", "user", "assistant", "tool")


@dataclass(kw_only=True)
class Record:
    file: Path
    line: int
    src: str | None = None
    tgt: str | None = None
    messages: list[dict[str, str]] | None = None
    answers: list[str] | None = None
    """Reference answers for score=qa; an empty list: an unanswerable question."""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def iter_records(path: Path, *, need_target: bool = True) -> Iterator[Record]:
    """Reads and checks every line of a JSONL file, one at a time; blank lines are skipped."""
    if not path.is_file():
        raise UserError(f"{path}: dataset file does not exist.")
    found = False
    with path.open(encoding="utf-8") as fp:
        for line_nr, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            found = True
            yield parse_line(path, line_nr, line, need_target)
    if not found:
        raise UserError(f"{path}: the dataset file has no records; each line should be a JSON object with 'src'/'tgt' or 'messages'.")


def read_records(path: Path, *, need_target: bool = True) -> list[Record]:
    return list(iter_records(path, need_target=need_target))


def check_records(path: Path) -> int:
    """Checks every record without keeping them (a large file costs no memory); returns the count."""
    return sum(1 for _ in iter_records(path))


def json_object(where: str, line: str, expected: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; ``expected`` names the fields a valid one has."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as ex:
        raise UserError(f"{where}: not valid JSON ({ex.msg} at column {ex.colno}); each line must be one JSON object.") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with {expected}, got {type(obj).__name__}.")
    return obj


def parse_line(path: Path, line_nr: int, line: str, need_target: bool) -> Record:
    where = f"{path}:{line_nr}"
    obj = json_object(where, line, "'src'/'tgt' or 'messages'")
    answers = answer_list(obj["answers"], where) if "answers" in obj else None
    if "messages" in obj:
        return Record(file=path, line=line_nr, messages=check_messages(where, obj["messages"], need_target), answers=answers)
    if "src" not in obj:
        raise UserError(f"{where}: record has neither 'src' nor 'messages' (keys: {', '.join(sorted(obj)) or 'none'}).")
    src, tgt = obj["src"], obj.get("tgt")
    if not isinstance(src, str) or not src:
        raise UserError(f"{where}: 'src' must be a non-empty string.")
    if tgt is None and need_target:
        raise UserError(f"{where}: record has 'src' but no 'tgt'; training needs the response in 'tgt'.")
    if tgt is not None and (not isinstance(tgt, str) or not tgt):
        raise UserError(f"{where}: 'tgt' must be a non-empty string.")
    return Record(file=path, line=line_nr, src=src, tgt=tgt, answers=answers)


def check_messages(where: str, messages: object, need_target: bool) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'.")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: messages[{i}] has role {m['role']!r}; valid roles: {', '.join(ROLES)}.")
    if need_target and not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: chat record has no assistant message to train on.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
