"""Reading preference pairs from JSONL, with file:line errors.

Two forms, one pair a line:
- fairseq2's (``lm preference_finetune``, v0.3-v0.4): ``{"src": prompt, "tgt_chosen": response,
  "tgt_rejected": response}``;
- the conversational one: ``{"prompt": [messages], "chosen": [assistant message],
  "rejected": [assistant message]}``, rendered with the tokenizer's chat template.
Either may carry ``reference_score_chosen`` and ``reference_score_rejected`` (both or neither):
the reference model's summed log-probs of the two responses, used instead of computing them.
A pair whose chosen response equals its rejected one teaches nothing and is skipped, counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lmtune.data.records import Record, check_messages, json_object
from lmtune.errors import UserError

FORMS = "'src'/'tgt_chosen'/'tgt_rejected' or 'prompt'/'chosen'/'rejected'"


@dataclass(kw_only=True)
class PreferencePair:
    file: Path
    line: int
    src: str | None = None
    tgt_chosen: str | None = None
    tgt_rejected: str | None = None
    prompt: list[dict[str, str]] | None = None
    chosen: list[dict[str, str]] | None = None
    rejected: list[dict[str, str]] | None = None
    reference_score_chosen: float | None = None
    reference_score_rejected: float | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def halves(self) -> tuple[Record, Record]:
        """The chosen and the rejected example as SFT records sharing one prompt."""
        if self.prompt is None:
            return (Record(file=self.file, line=self.line, src=self.src, tgt=self.tgt_chosen), Record(file=self.file, line=self.line, src=self.src, tgt=self.tgt_rejected))
        assert self.chosen is not None and self.rejected is not None
        return (Record(file=self.file, line=self.line, messages=self.prompt + self.chosen), Record(file=self.file, line=self.line, messages=self.prompt + self.rejected))


@dataclass(kw_only=True)
class PreferenceRecords:
    pairs: list[PreferencePair]
    identical: int
    """Pairs skipped because the chosen response equals the rejected one."""


def read_preference_pairs(path: Path) -> PreferenceRecords:
    if not path.is_file():
        raise UserError(f"{path}: dataset file does not exist.")
    pairs, identical = [], 0
    with path.open(encoding="utf-8") as fp:
        for line_nr, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            pair = parse_pair(path, line_nr, line)
            if _same_responses(pair):
                identical += 1
            else:
                pairs.append(pair)
    if not pairs:
        why = f"all {identical} have the chosen response equal to the rejected one" if identical else "it has no records"
        raise UserError(f"{path}: no preference pairs to train on ({why}); each line should be a JSON object with {FORMS}.")
    return PreferenceRecords(pairs=pairs, identical=identical)


def _same_responses(pair: PreferencePair) -> bool:
    return pair.tgt_chosen == pair.tgt_rejected if pair.prompt is None else pair.chosen == pair.rejected


def parse_pair(path: Path, line_nr: int, line: str) -> PreferencePair:
    where = f"{path}:{line_nr}"
    obj = json_object(where, line, FORMS)
    ref_chosen, ref_rejected = _reference_scores(where, obj)
    if "src" in obj:
        for key in ("src", "tgt_chosen", "tgt_rejected"):
            if key not in obj:
                raise UserError(f"{where}: record has 'src' but no {key!r}; a preference pair needs 'src', 'tgt_chosen' and 'tgt_rejected'.")
            if not isinstance(obj[key], str) or not obj[key]:
                raise UserError(f"{where}: {key!r} must be a non-empty string.")
        return PreferencePair(file=path, line=line_nr, src=obj["src"], tgt_chosen=obj["tgt_chosen"], tgt_rejected=obj["tgt_rejected"], reference_score_chosen=ref_chosen, reference_score_rejected=ref_rejected)
    if "prompt" in obj or "chosen" in obj or "rejected" in obj:
        for key in ("prompt", "chosen", "rejected"):
            if key not in obj:
                raise UserError(f"{where}: record has no {key!r}; a conversational preference pair needs 'prompt', 'chosen' and 'rejected' lists of messages.")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(obj[key], list) or not obj[key]:
                raise UserError(f"{where}: {key!r} must be a non-empty list of {{'role', 'content'}} messages.")
        prompt = check_messages(f"{where} in 'prompt'", obj["prompt"], need_target=False)
        if prompt[-1]["role"] == "assistant":
            raise UserError(f"{where}: 'prompt' ends with an assistant message; the response belongs in 'chosen' and 'rejected'.")
        responses = [check_messages(f"{where} in {key!r}", obj[key], need_target=False) for key in ("chosen", "rejected")]
        for key, messages in zip(("chosen", "rejected"), responses):
            if messages[-1]["role"] != "assistant":
                raise UserError(f"{where}: {key!r} must end with an assistant message, the response trained on.")
        return PreferencePair(file=path, line=line_nr, prompt=prompt, chosen=responses[0], rejected=responses[1], reference_score_chosen=ref_chosen, reference_score_rejected=ref_rejected)
    raise UserError(f"{where}: record is neither of the preference forms, {FORMS} (keys: {', '.join(sorted(obj)) or 'none'}).")


def _reference_scores(where: str, obj: dict[str, object]) -> tuple[float | None, float | None]:
    keys = ("reference_score_chosen", "reference_score_rejected")
    present = [k for k in keys if k in obj]
    if len(present) == 1:
        missing = next(k for k in keys if k not in obj)
        raise UserError(f"{where}: record has {present[0]!r} but no {missing!r}; give both reference scores or neither.")
    if not present:
        return None, None
    for key in keys:
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value > 0:
            raise UserError(f"{where}: {key!r} must be a log-probability, a finite number <= 0, not {value!r}.")
    return float(obj[keys[0]]), float(obj[keys[1]])  # type: ignore[arg-type]
