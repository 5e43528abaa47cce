"""Preference pairs packed into batches, and each sequence's log-prob of its response.

A batch holds whole pairs: pair ``k`` of a batch is its sequences ``2 k`` (chosen) and
``2 k + 1`` (rejected), so the loss finds both halves of every pair on the same rank. Pairs
are packed best fit into batches of at most ``max_num_tokens`` tokens (``lmtune.data.packing``)
as one fairseq2 packed SequenceBatch, no padding: each sequence gets its own positions and
attends only to itself (``lmtune.models.document_attention``), as SFT's packed examples do.

``sequence_logps`` runs the model once over a packed batch and sums, per sequence, the
log-probs of its loss tokens, each predicted from the positions before it in the same
sequence (never from the end of the sequence before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from fairseq2.device import Device, SupportsDeviceTransfer
from torch import Tensor
from torch.nn import Module

from lmtune.data.packing import collate_packed, pack_examples
from lmtune.errors import UserError
from lmtune.models.row_logps import has_row_logps
from lmtune.preference.losses import SequenceLogps
from lmtune.preference.pairs import EncodedPairs


@dataclass(kw_only=True)
class PreferenceBatch(SupportsDeviceTransfer):
    batch: object
    """fairseq2 packed SequenceBatch: chosen, rejected, chosen, rejected, ..."""
    pair_ids: Tensor
    """int64 (P,): the pairs' indices in their EncodedPairs."""
    reference: Tensor | None
    """float64 (P, 2): the reference's summed log-probs of chosen and rejected, when known."""

    @property
    def num_pairs(self) -> int:
        return len(self.pair_ids)

    def to(self, device: Device, *, non_blocking: bool = False) -> None:
        """What fairseq2's trainer calls on every batch (``SupportsDeviceTransfer``)."""
        self.batch.to(device, non_blocking=non_blocking)  # type: ignore[attr-defined]
        if self.reference is not None:
            self.reference = self.reference.to(device, non_blocking=non_blocking)


def pack_pairs(pairs: EncodedPairs, pair_ids: Sequence[int] | np.ndarray, max_num_tokens: int, seed: int) -> list[list[int]]:
    """Batches of pair indices (from ``pair_ids``), each of at most ``max_num_tokens`` tokens."""
    ids = np.asarray(pair_ids, dtype=np.int64)
    lengths = pairs.examples.lengths
    pair_lengths = (lengths[2 * ids] + lengths[2 * ids + 1]).tolist()
    if pair_lengths and max(pair_lengths) > max_num_tokens:
        k = int(np.argmax(pair_lengths))
        raise UserError(f"{pairs.where(int(ids[k]))}: the pair's chosen and rejected sequences are {pair_lengths[k]} tokens together, more than max_num_tokens={max_num_tokens}; a batch holds whole pairs, so raise max_num_tokens to at least twice max_seq_len.")
    return [[int(ids[i]) for i in batch] for batch in pack_examples(pair_lengths, max_num_tokens, seed)]


def collate_pairs(pairs: EncodedPairs, pair_ids: Sequence[int], reference: np.ndarray | None = None) -> PreferenceBatch:
    """``reference``: (N, 2) log-probs of every pair of ``pairs``, or None."""
    items = [pairs.examples.item(2 * p + half) for p in pair_ids for half in (0, 1)]
    ids = torch.tensor(list(pair_ids), dtype=torch.int64)
    ref = None if reference is None else torch.from_numpy(np.asarray(reference[ids.numpy()], dtype=np.float64))
    return PreferenceBatch(batch=collate_packed(items), pair_ids=ids, reference=ref)


def sequence_logps(model: Module, batch) -> tuple[Tensor, Tensor]:
    """Per sequence of a packed SequenceBatch: the summed log-prob of its loss tokens (float32)
    and their number (int64). One call of the model's forward (so DDP and FSDP see a normal
    call); with ``lmtune.models.row_logps`` installed the LM head runs on the loss positions
    alone, otherwise the full logits are made and the softmax runs on those positions."""
    if not batch.packed:
        raise ValueError("sequence_logps takes a packed batch")
    seqs, layout = batch.as_input()
    lens = torch.tensor(list(batch.seq_lens), device=seqs.device)
    seq_of = torch.repeat_interleave(torch.arange(len(lens), device=seqs.device), lens)
    starts = torch.zeros(len(seqs), dtype=torch.bool, device=seqs.device)
    starts[torch.cumsum(lens, 0)[:-1]] = True
    # Position p predicts token p + 1 when p + 1 is a loss token of the same sequence.
    predicts = torch.zeros_like(starts)
    predicts[:-1] = batch.target_mask[1:] & ~starts[1:]
    rows = torch.nonzero(predicts).squeeze(1)
    if has_row_logps(model):
        targets = torch.roll(seqs, -1)  # position p's target, seqs[p + 1]
        logps = model(seqs, layout, targets=targets, target_mask=predicts)
    else:
        logits = model(seqs, layout)  # (S, V)
        logps = torch.log_softmax(logits[rows].float(), dim=-1).gather(1, seqs[rows + 1].unsqueeze(1)).squeeze(1)
    sums = torch.zeros(len(lens), dtype=logps.dtype, device=logps.device).index_add(0, seq_of[rows], logps)
    counts = torch.bincount(seq_of[rows], minlength=len(lens))
    return sums, counts


def pair_logps(model: Module, batch: PreferenceBatch) -> SequenceLogps:
    """The policy's (or reference's) log-probs of each pair's chosen and rejected response."""
    sums, counts = sequence_logps(model, batch.batch)
    counts = counts.to(sums.dtype)
    return SequenceLogps(chosen=sums[0::2], rejected=sums[1::2], chosen_tokens=counts[0::2], rejected_tokens=counts[1::2])


def pair_pipeline(
    pairs: EncodedPairs,
    pair_ids: Sequence[int] | np.ndarray,
    *,
    max_num_tokens: int,
    dp_rank: int,
    dp_size: int,
    shuffle_seed: int | None,
    reference: np.ndarray | None = None,
):
    """A fairseq2 DataPipeline of PreferenceBatches; batches fixed up front (deterministic for
    the seed), so the pipeline's saved position is all a resume needs, as SFT's packing."""
    from fairseq2.data.data_pipeline import read_sequence

    builder = read_sequence(pack_pairs(pairs, pair_ids, max_num_tokens, shuffle_seed or 0))
    if shuffle_seed is not None:
        builder = builder.shuffle(0, seed=shuffle_seed)
    if dp_size > 1:
        builder = builder.shard(dp_rank, dp_size, allow_uneven=True)
    return builder.map(lambda ids: collate_pairs(pairs, ids, reference)).and_return()
