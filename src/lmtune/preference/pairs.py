"""Preference pairs as token sequences: each pair's chosen and rejected example, one prompt.

A pair becomes two SFT examples (``lmtune.data.encoding.ExampleEncoder``): the prompt's tokens
followed by the chosen, or the rejected, response, with the loss mask on the response alone
(in a conversation, on the final assistant turn only, not on assistant turns of the prompt).
They are held as one ``EncodedExamples`` with the two halves interleaved: sequence ``2 i`` is
pair ``i``'s chosen example and ``2 i + 1`` its rejected one, so the pairing needs no table.
Beside them: each pair's line in the data file (for errors) and the reference scores the
data gave (NaN where it gave none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmtune.data.encoded_examples import FILES, EncodedExamples
from lmtune.data.encoding import Example, ExampleEncoder
from lmtune.errors import UserError
from lmtune.preference.records import PreferencePair, read_preference_pairs

PAIR_FILES = ("lines", "reference_scores", "identical")


@dataclass(kw_only=True)
class EncodedPairs:
    file: Path
    examples: EncodedExamples
    """2 N sequences: chosen of pair i at 2 i, rejected at 2 i + 1."""
    lines: np.ndarray
    """int64 (N,): each pair's line in ``file``."""
    reference_scores: np.ndarray
    """float64 (N, 2): the data's reference_score_chosen/rejected, NaN where absent."""
    identical: int = 0
    """Records skipped because their chosen response equals the rejected one."""

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def num_tokens(self) -> int:
        return self.examples.num_tokens

    def where(self, pair: int) -> str:
        return f"{self.file}:{int(self.lines[pair])}"

    def save(self, directory: Path) -> None:
        for name in FILES:
            np.save(directory / f"{name}.npy", getattr(self.examples, name))
        np.save(directory / "lines.npy", self.lines)
        np.save(directory / "reference_scores.npy", self.reference_scores)
        np.save(directory / "identical.npy", np.array(self.identical, dtype=np.int64))

    @classmethod
    def load(cls, directory: Path, file: Path) -> EncodedPairs:
        extra = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in PAIR_FILES}
        return cls(file=file, examples=EncodedExamples.load(directory), lines=extra["lines"], reference_scores=extra["reference_scores"], identical=int(extra["identical"]))

    def prompt_lengths(self) -> np.ndarray:
        """The tokens before each sequence's first loss token (int64, 2 N)."""
        offsets = np.asarray(self.examples.offsets)
        targets = np.flatnonzero(self.examples.target_mask)
        sequence = np.searchsorted(offsets, targets, side="right") - 1
        first = np.asarray(self.examples.lengths, dtype=np.int64).copy()  # no loss token: all prompt
        seqs, at = np.unique(sequence, return_index=True)  # each sequence's first loss token
        first[seqs] = targets[at] - offsets[seqs]
        return first

    def trainable(self, max_seq_len: int) -> np.ndarray:
        """Indices of the pairs whose two sequences both fit ``max_seq_len`` tokens; a pair whose
        prompt alone does not fit is an error, as no response length could make it fit."""
        prompts = self.prompt_lengths()[0::2]
        too_long = np.flatnonzero(prompts >= max_seq_len)
        if len(too_long):
            i = int(too_long[0])
            more = f" ({len(too_long) - 1} more pairs too)" if len(too_long) > 1 else ""
            raise UserError(f"{self.where(i)}: the prompt alone is {int(prompts[i])} tokens, leaving no room for a response within max_seq_len={max_seq_len}{more}; raise max_seq_len or shorten the prompt.")
        lengths = self.examples.lengths
        return np.flatnonzero((lengths[0::2] <= max_seq_len) & (lengths[1::2] <= max_seq_len))


def encode_pair(encoder: ExampleEncoder, pair: PreferencePair) -> tuple[Example, Example]:
    chosen, rejected = pair.halves()
    return encoder.encode(chosen, last_turn_only=True), encoder.encode(rejected, last_turn_only=True)


def encode_pair_file(encoder: ExampleEncoder, file: Path, directory: Path | None = None) -> EncodedPairs:
    """Reads, encodes and (into ``directory``, when given) saves every pair of ``file``: the
    ``encode`` that ``lmtune.data.encoded_cache.build_cache`` calls for a preference file."""
    read = read_preference_pairs(file)
    pairs = encode_pairs(encoder, read.pairs, file, identical=read.identical)
    if directory is not None:
        pairs.save(directory)
    return pairs


def encode_pairs(encoder: ExampleEncoder, pairs: list[PreferencePair], file: Path, *, identical: int = 0) -> EncodedPairs:
    """Both halves of every pair; prompt/response pairs in one batched tokenizer call
    (``ExampleEncoder.encode_all``), conversations one by one."""
    halves = [r for p in pairs if p.prompt is None for r in p.halves()]
    batched = iter(encoder.encode_all(halves))
    examples: list[Example] = []
    for p in pairs:
        examples.extend((next(batched), next(batched)) if p.prompt is None else encode_pair(encoder, p))
    nan = float("nan")
    scores = [(nan if p.reference_score_chosen is None else p.reference_score_chosen, nan if p.reference_score_rejected is None else p.reference_score_rejected) for p in pairs]
    return EncodedPairs(
        file=file,
        examples=EncodedExamples.from_examples(examples),
        lines=np.array([p.line for p in pairs], dtype=np.int64),
        reference_scores=np.array(scores, dtype=np.float64).reshape(len(pairs), 2),
        identical=identical,
    )
