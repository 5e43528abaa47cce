"""Sequence packing: many short examples in one batch, each attending only to itself.

Fine-tuning data is mostly short examples of very different lengths, and padded
batches spend much of their compute on padding. lmtune packs examples into rows
of up to ``max_seq_len`` tokens, best fit first (longest examples first, each
into the fullest row it still fits), so rows are nearly full, then groups rows
into batches of up to ``max_num_tokens`` tokens. A batch becomes one fairseq2
*packed* SequenceBatch: a flat token sequence plus the examples' lengths, with
no padding at all. fairseq2 gives each example its own positions (they restart
at 0) and attention stays within each example (``lmtune.models.document_attention``,
or flash attention's variable-length kernel), so examples never see each other;
the loss mask is unchanged, and loss is normalised by the target-token count.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from fairseq2.datasets import SequenceBatch


def best_fit_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of examples grouped into rows of at most ``capacity`` tokens (best-fit decreasing).

    Each example goes to the row with the least free space it still fits (the oldest row on
    a tie). Rows are indexed by their free space (a sorted list of the sizes in use, a heap of
    rows per size), so a dataset of millions of examples packs in seconds, not hours.
    """
    # Longest first, ties in index order (a stable sort).
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    bins: list[list[int]] = []
    sizes: list[int] = []  # the distinct free spaces some row has, ascending
    rows_with: dict[int, list[int]] = {}  # free space -> heap of row indices
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(sizes, n)
        if k == len(sizes):
            row, space = len(bins), capacity - n
            bins.append([i])
        else:
            fitting = rows_with[sizes[k]]
            row = heapq.heappop(fitting)
            space = sizes[k] - n
            if not fitting:
                del rows_with[sizes[k]]
                del sizes[k]
            bins[row].append(i)
        if space in rows_with:
            heapq.heappush(rows_with[space], row)
        else:
            rows_with[space] = [row]
            bisect.insort(sizes, space)
    return bins


def pack_examples(lengths: Sequence[int], capacity: int, seed: int, window: int = 4096) -> list[list[int]]:
    """Rows of at most ``capacity`` tokens for one pass over the data, deterministic for a seed.

    Examples are shuffled, then packed window by window, so rows mix examples
    from across the dataset without one giant sort that would order them by length.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bins: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        for b in best_fit_bins([lengths[i] for i in chunk], capacity):
            bins.append(sorted(chunk[j] for j in b))
    rng.shuffle(bins)
    return bins


def group_rows(rows: Sequence[Sequence[int]], lengths: Sequence[int], max_num_tokens: int) -> list[list[int]]:
    """Consecutive rows joined into batches of at most ``max_num_tokens`` tokens."""
    batches: list[list[int]] = []
    batch: list[int] = []
    size = 0
    for row in rows:
        n = sum(lengths[i] for i in row)
        if batch and size + n > max_num_tokens:
            batches.append(batch)
            batch, size = [], 0
        batch.extend(row)
        size += n
    if batch:
        batches.append(batch)
    return batches


def collate_packed(items: list[dict[str, torch.Tensor]]) -> SequenceBatch:
    from fairseq2.datasets import SequenceBatch

    seqs = torch.cat([x["tokens"] for x in items])
    mask = torch.cat([x["target_mask"] for x in items])
    return SequenceBatch(seqs, [len(x["tokens"]) for x in items], packed=True, target_mask=mask)
