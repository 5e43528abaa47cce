"""Encoded examples as flat arrays instead of Python lists.

One flat int32 token array, one flat uint8 loss-mask array, int64 offsets (example i is
``tokens[offsets[i]:offsets[i + 1]]``) and the number of loss tokens per example (int32),
about 5 bytes per token against ~36 for lists of Python ints and bools. On disk they are
numpy ``.npy`` files in one directory, memory-mapped when read: a rank touches the pages of
the batches it reads, and ranks on one machine share them through the page cache.
Tensors are made per batch, never for the whole dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lmtune.data.encoding import Example
from lmtune.errors import UserError
from lmtune.safe_load import UnsafeCheckpointFile

FILES = ("tokens", "target_mask", "offsets", "num_targets")
DTYPES = {"tokens": np.int32, "target_mask": np.uint8, "offsets": np.int64, "num_targets": np.int32}


class EncodedExamples:
    def __init__(self, tokens: np.ndarray, target_mask: np.ndarray, offsets: np.ndarray, num_targets: np.ndarray) -> None:
        self.tokens = tokens
        self.target_mask = target_mask
        self.offsets = offsets
        self.num_targets = num_targets

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> EncodedExamples:
        lengths = np.fromiter((len(e.tokens) for e in examples), dtype=np.int64, count=len(examples))
        offsets = np.zeros(len(examples) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for e in examples for t in e.tokens), dtype=np.int32, count=int(offsets[-1]))
        mask = np.fromiter((m for e in examples for m in e.target_mask), dtype=np.uint8, count=int(offsets[-1]))
        num_targets = np.fromiter((sum(e.target_mask) for e in examples), dtype=np.int32, count=len(examples))
        return cls(tokens, mask, offsets, num_targets)

    @classmethod
    def load(cls, directory: Path) -> EncodedExamples:
        """Memory-maps the arrays written by ``lmtune.data.parallel_encoding``."""
        arrays = {}
        for name in FILES:
            file = directory / f"{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r")  # allow_pickle=False: an object array is refused, never unpickled
            except ValueError as ex:
                if "Python objects" in str(ex) or "Object arrays" in str(ex):
                    raise UnsafeCheckpointFile(file, "an array of Python objects") from None
                raise
        return cls(arrays["tokens"], arrays["target_mask"], arrays["offsets"], arrays["num_targets"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def item(self, i: int) -> dict[str, torch.Tensor]:
        """Example ``i`` as the tensors a batch is collated from."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return {
            "tokens": torch.from_numpy(self.tokens[start:end].astype(np.int64)),
            "target_mask": torch.from_numpy(self.target_mask[start:end].astype(np.bool_)),
        }

    def trainable(self, max_seq_len: int, what: str) -> np.ndarray:
        """Indices of the examples training keeps: at most ``max_seq_len`` tokens and some loss."""
        lengths = self.lengths
        kept = np.flatnonzero((lengths <= max_seq_len) & (self.num_targets > 0))
        if len(kept) == 0:
            raise UserError(f"{what}: every example is longer than max_seq_len={max_seq_len} tokens (the shortest has {int(lengths.min())}); raise max_seq_len or shorten the data.")
        return kept
