"""Pairs packed into batches: whole pairs, and each sequence's response log-prob from a packed
batch equal to that sequence run alone on a real (tiny) fairseq2 model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmtune.data.encoded_examples import EncodedExamples
from lmtune.data.encoding import Example
from lmtune.errors import UserError
from lmtune.preference.pairs import EncodedPairs


def _pairs(rng: random.Random, lengths: list[tuple[int, int, int]]) -> EncodedPairs:
    """(prompt, chosen, rejected) lengths -> pairs of random tokens sharing each prompt."""
    examples = []
    for p, c, r in lengths:
        prompt = [0] + [rng.randint(6, 250) for _ in range(p - 1)]
        for n in (c, r):
            examples.append(Example(tokens=prompt + [rng.randint(6, 250) for _ in range(n)], target_mask=[False] * p + [True] * n))
    n = len(lengths)
    return EncodedPairs(file=Path("pairs.jsonl"), examples=EncodedExamples.from_examples(examples), lines=np.arange(1, n + 1), reference_scores=np.full((n, 2), np.nan))


def test_batches_hold_whole_pairs_within_max_num_tokens() -> None:
    from lmtune.preference.packing import collate_pairs, pack_pairs

    rng = random.Random(0)
    shapes = [(rng.randint(2, 20), rng.randint(1, 20), rng.randint(1, 20)) for _ in range(40)]
    pairs = _pairs(rng, shapes)
    assert pairs.prompt_lengths().tolist() == [p for p, _, _ in shapes for _ in (0, 1)]
    lengths = pairs.examples.lengths
    ids = [i for i in range(40) if i % 7]  # a subset, as after dropping too-long pairs
    batches = pack_pairs(pairs, ids, 100, seed=3)
    assert sorted(p for b in batches for p in b) == ids
    assert all(sum(lengths[2 * p] + lengths[2 * p + 1] for p in b) <= 100 for b in batches)
    assert batches == pack_pairs(pairs, ids, 100, seed=3)

    reference = np.arange(80, dtype=np.float64).reshape(40, 2)
    batch = collate_pairs(pairs, batches[0], reference)
    assert batch.pair_ids.tolist() == batches[0]
    assert batch.reference.tolist() == [[2.0 * p, 2.0 * p + 1] for p in batches[0]]  # type: ignore[union-attr]
    assert batch.batch.seq_lens == [int(lengths[2 * p + h]) for p in batches[0] for h in (0, 1)]
    first = pairs.examples.item(2 * batches[0][0] + 1)["tokens"]  # the first pair's rejected sequence
    start = batch.batch.seq_lens[0]
    assert batch.batch.seqs[start : start + len(first)].tolist() == first.tolist()

    with pytest.raises(UserError, match=r"pairs.jsonl:\d+: the pair's chosen and rejected sequences are \d+ tokens together, more than max_num_tokens=30"):
        pack_pairs(pairs, range(40), 30, seed=0)


def _tiny_model(sdpa: str) -> torch.nn.Module:
    from fairseq2.models.transformer import (
        TorchSDPA,
        get_default_sdpa_factory,
        set_default_sdpa_factory,
    )

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.document_attention import DocumentSDPA

    before = get_default_sdpa_factory()
    set_default_sdpa_factory(DocumentSDPA if sdpa == "document" else TorchSDPA)
    try:
        torch.manual_seed(0)
        model = load_any_model(resolve_model(CardStore(), "tiny_llama", None))
    finally:
        set_default_sdpa_factory(before)
    assert ("DocumentSDPA" in {type(m).__name__ for m in model.modules()}) == (sdpa == "document")
    return model.train()


def _alone(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One sequence, unpacked: the sum over its loss tokens t of log p(tokens[t] | tokens[:t])."""
    from fairseq2.datasets import SequenceBatch

    seqs, layout = SequenceBatch(tokens.unsqueeze(0), None).as_input()
    logp = torch.log_softmax(model(seqs, layout)[0], dim=-1)
    total, count = torch.zeros(()), 0
    for t in range(1, len(tokens)):
        if mask[t]:
            total = total + logp[t - 1, tokens[t]]
            count += 1
    return total, count


# "document": lmtune's per-sequence attention (what training uses); "torch": fairseq2's block-diagonal mask.
# "rows": the LM head on the response positions alone (lmtune.models.row_logps, what training uses); "full": every position.
@pytest.mark.parametrize("head", ["rows", "full"])
@pytest.mark.parametrize("sdpa", ["document", "torch"])
def test_packed_log_probs_and_gradients_equal_each_sequence_alone(sdpa: str, head: str) -> None:
    from lmtune.models.row_logps import has_row_logps, use_row_logps
    from lmtune.preference.packing import collate_pairs, pair_logps

    model = _tiny_model(sdpa)
    if head == "rows":
        use_row_logps(model)
    assert has_row_logps(model) == (head == "rows")
    params = list(model.parameters())
    rng = random.Random(5)
    pairs = _pairs(rng, [(9, 7, 12), (3, 1, 20), (15, 4, 4), (6, 10, 2)])
    batch = collate_pairs(pairs, [2, 0, 3, 1])

    head_rows: list[int] = []
    hook = model.final_proj.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[0]))
    packed = pair_logps(model, batch)
    hook.remove()
    packed_grads = torch.autograd.grad((packed.chosen - 0.5 * packed.rejected).sum(), params)
    # The head saw the 60 loss positions alone, or every one of the batch's 126 positions.
    assert head_rows == [60 if head == "rows" else 126]

    alone_sums, alone_counts = [], []
    for p in [2, 0, 3, 1]:
        for half in (0, 1):
            x = pairs.examples.item(2 * p + half)
            s, n = _alone(model, x["tokens"], x["target_mask"])
            alone_sums.append(s)
            alone_counts.append(n)
    alone = torch.stack(alone_sums)
    alone_grads = torch.autograd.grad((alone[0::2] - 0.5 * alone[1::2]).sum(), params)

    assert packed.chosen_tokens.tolist() == alone_counts[0::2] == [4, 7, 10, 1]
    assert packed.rejected_tokens.tolist() == alone_counts[1::2] == [4, 12, 2, 20]
    torch.testing.assert_close(packed.chosen, alone[0::2].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.rejected, alone[1::2].detach(), rtol=1e-5, atol=1e-5)
    for g_packed, g_alone in zip(packed_grads, alone_grads):
        torch.testing.assert_close(g_packed, g_alone, rtol=1e-4, atol=1e-5)


def test_the_pipeline_gives_the_packed_batches_split_over_ranks() -> None:
    from lmtune.preference.packing import pack_pairs, pair_pipeline

    rng = random.Random(1)
    pairs = _pairs(rng, [(rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 9)) for _ in range(30)])
    reference = np.arange(60, dtype=np.float64).reshape(30, 2)
    expected = pack_pairs(pairs, range(30), 60, seed=0)
    alone = [b.pair_ids.tolist() for b in pair_pipeline(pairs, range(30), max_num_tokens=60, dp_rank=0, dp_size=1, shuffle_seed=None, reference=reference)]
    assert alone == expected
    ranks = [[b.pair_ids.tolist() for b in pair_pipeline(pairs, range(30), max_num_tokens=60, dp_rank=r, dp_size=2, shuffle_seed=None)] for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(expected) and not set(map(tuple, ranks[0])) & set(map(tuple, ranks[1]))
    shuffled = [b.pair_ids.tolist() for b in pair_pipeline(pairs, range(30), max_num_tokens=60, dp_rank=0, dp_size=1, shuffle_seed=7)]
    assert sorted(p for b in shuffled for p in b) == list(range(30))
