"""Batches of examples on fairseq2's data pipeline.

Packing (the default, ``lmtune.data.packing``) or length batching (fairseq2's strategy).

Length batching (fairseq2's strategy): examples of similar length share a batch
of at most ``max_num_tokens`` tokens, or a fixed ``batch_size`` of examples.
Everything is a fairseq2 DataPipeline, so the reading position is saved in each
checkpoint and a resumed run sees exactly the batches an uninterrupted run sees.
The pipeline walks example indices; an example's tensors are made from the flat
arrays (``lmtune.data.encoded_examples``) only when its batch is collated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from lmtune.data.encoded_examples import EncodedExamples
from lmtune.data.encoding import Example
from lmtune.data.packing import collate_packed, group_rows, pack_examples
from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.datasets import SequenceBatch


def bucket_sizes(max_seq_len: int, max_num_tokens: int) -> list[tuple[int, int]]:
    if max_num_tokens < max_seq_len:
        raise UserError(f"max_num_tokens={max_num_tokens} is smaller than max_seq_len={max_seq_len}; a batch must fit at least one full-length example.")
    sizes = []
    for seq_len in range(8, max_seq_len + 8, 8):
        seq_len = min(seq_len, max_seq_len)
        sizes.append((max_num_tokens // seq_len, seq_len))
        if seq_len == max_seq_len:
            break
    return sizes


def collate_padded(items: list[dict[str, torch.Tensor]], pad_idx: int) -> SequenceBatch:
    from fairseq2.datasets import SequenceBatch

    seq_lens = [len(x["tokens"]) for x in items]
    width = max(seq_lens)
    seqs = torch.full((len(items), width), pad_idx, dtype=torch.int64)
    mask = torch.zeros((len(items), width), dtype=torch.bool)
    for i, x in enumerate(items):
        n = seq_lens[i]
        seqs[i, :n] = x["tokens"]
        mask[i, :n] = x["target_mask"]
    return SequenceBatch(seqs, seq_lens, target_mask=mask)


def build_pipeline(
    examples: EncodedExamples | Sequence[Example],
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    dp_rank: int,
    dp_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    batch_size: int | None,
    pad_idx: int,
    shuffle_seed: int | None,
    packing: bool = False,
):
    """Batches of the examples at ``indices`` (default: all), in that order before shuffling."""
    from fairseq2.data.data_pipeline import read_sequence

    if not isinstance(examples, EncodedExamples):
        examples = EncodedExamples.from_examples(examples)
    kept = np.arange(len(examples)) if indices is None else np.asarray(indices, dtype=np.int64)

    def item(k: int) -> dict[str, torch.Tensor]:
        return examples.item(int(kept[k]))

    if packing:
        # Rows and batches are fixed up front (deterministic for the seed); the pipeline
        # then only walks through them, so its saved position is all a resume needs.
        lengths = examples.lengths[kept].tolist()
        rows = pack_examples(lengths, max_seq_len, shuffle_seed or 0)
        builder = read_sequence(group_rows(rows, lengths, max_num_tokens))
        if shuffle_seed is not None:
            builder = builder.shuffle(0, seed=shuffle_seed)  # a new batch order each epoch
        if dp_size > 1:
            builder = builder.shard(dp_rank, dp_size, allow_uneven=True)
        return builder.map(lambda b: collate_packed([item(k) for k in b])).and_return()

    builder = read_sequence(list(range(len(kept))))
    if shuffle_seed is not None:
        builder = builder.shuffle(0, seed=shuffle_seed)
    if dp_size > 1:
        builder = builder.shard(dp_rank, dp_size, allow_uneven=True)
    builder = builder.map(item)
    if batch_size is not None:
        builder = builder.bucket(batch_size)
    else:
        builder = builder.bucket_by_length(bucket_sizes(max_seq_len, max_num_tokens), selector="tokens")
    return builder.map(lambda items: collate_padded(items, pad_idx)).and_return()
