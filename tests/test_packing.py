"""Packing: best-fit bins, and a packed batch computes exactly what the examples do one by one."""

from __future__ import annotations

import random

import pytest
import torch

from lmtune.adapters.build import load_any_model
from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import resolve_model
from lmtune.data.packing import best_fit_bins, collate_packed, group_rows, pack_examples


def test_best_fit_fills_bins_and_keeps_every_example_once() -> None:
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(5, 40), rng.randint(40, 400)]) for _ in range(500)]
    bins = best_fit_bins(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    used = sum(lengths)
    assert used / (len(bins) * 512) > 0.97  # under 3% of the bins left empty


def test_best_fit_decreasing_by_hand() -> None:
    # Longest first. 6 opens bin A (4 free); 5 does not fit A, opens B (5 free); 4 fits A exactly
    # (the fullest bin it fits); 3 goes to B (2 free); 2 fills B.
    assert best_fit_bins([3, 6, 4, 5, 2], 10) == [[1, 2], [3, 0, 4]]


def test_packing_is_deterministic_for_a_seed() -> None:
    lengths = [random.Random(1).randint(1, 100) for _ in range(300)]
    assert pack_examples(lengths, 256, seed=5) == pack_examples(lengths, 256, seed=5)
    assert pack_examples(lengths, 256, seed=5) != pack_examples(lengths, 256, seed=6)


def test_rows_are_grouped_into_batches_in_order_by_hand() -> None:
    lengths = [50, 30, 60, 10, 90]
    rows = [[0, 1], [2], [3], [4]]  # 80, 60, 10, 90 tokens
    assert group_rows(rows, lengths, 150) == [[0, 1, 2, 3], [4]]
    assert group_rows(rows, lengths, 80) == [[0, 1], [2, 3], [4]]


def _tiny_model(sdpa: str, card: str = "tiny_llama") -> torch.nn.Module:
    from fairseq2.models.transformer import (
        TorchSDPA,
        get_default_sdpa_factory,
        set_default_sdpa_factory,
    )

    from lmtune.models.document_attention import DocumentSDPA

    before = get_default_sdpa_factory()
    set_default_sdpa_factory(DocumentSDPA if sdpa == "document" else TorchSDPA)
    try:
        torch.manual_seed(0)
        spec = resolve_model(CardStore(), card, None)
        model = load_any_model(spec)
    finally:
        set_default_sdpa_factory(before)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("DocumentSDPA" in kinds) == (sdpa == "document")
    model.train()
    return model


def _example(rng: random.Random, n: int) -> dict[str, torch.Tensor]:
    tokens = torch.tensor([0] + [rng.randint(6, 470) for _ in range(n - 1)])
    prompt = rng.randint(1, n - 2)
    mask = torch.tensor([False] * prompt + [True] * (n - prompt))
    return {"tokens": tokens, "target_mask": mask}


# "document": lmtune's per-example attention (what instruction_finetune uses);
# "torch": fairseq2's block-diagonal mask over the whole pack (the reference).
# tiny_gpt2: learned positions, which must restart at 0 for each packed example as rotary ones do.
@pytest.mark.parametrize("card", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("sdpa", ["document", "torch"])
def test_packed_loss_gradients_and_logits_equal_one_by_one(sdpa: str, card: str) -> None:
    from fairseq2.datasets import SequenceBatch

    from lmtune.training.nll_unit import target_nll as response_nll

    model = _tiny_model(sdpa, card)
    rng = random.Random(3)
    items = [_example(rng, n) for n in (17, 5, 33, 9, 24)]

    packed_loss, packed_targets = response_nll(model, collate_packed(items))
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))

    total = torch.zeros(())
    n_targets = 0
    for x in items:
        batch = SequenceBatch(x["tokens"].unsqueeze(0), None, target_mask=x["target_mask"].unsqueeze(0))
        loss, targets = response_nll(model, batch)
        total = total + loss
        n_targets += targets.num_target_elements
    single_grads = torch.autograd.grad(total, list(model.parameters()))

    assert packed_targets.num_target_elements == n_targets
    torch.testing.assert_close(packed_loss, total, rtol=1e-5, atol=1e-5)
    for g_packed, g_single in zip(packed_grads, single_grads):
        torch.testing.assert_close(g_packed, g_single, rtol=1e-4, atol=1e-5)

    # Per-example logits: the packed forward equals each example's own forward.
    model.eval()
    with torch.no_grad():
        batch = collate_packed(items)
        seqs, layout = batch.as_input()
        packed_logits = model(seqs, layout)
        start = 0
        for x in items:
            single = SequenceBatch(x["tokens"].unsqueeze(0), None)
            s, l = single.as_input()
            expected = model(s, l)[0]
            torch.testing.assert_close(packed_logits[start : start + len(x["tokens"])], expected, rtol=1e-5, atol=1e-5)
            start += len(x["tokens"])


def test_packed_pipeline_keeps_its_batches_and_reorders_them_each_epoch() -> None:
    from lmtune.data.batching import build_pipeline
    from lmtune.data.encoding import Example

    rng = random.Random(4)
    lengths = [rng.randint(3, 60) for _ in range(300)]
    examples = [Example(tokens=[rng.randint(6, 400) for _ in range(n)], target_mask=[True] * n) for n in lengths]

    def epoch(pipeline) -> list[tuple[int, ...]]:  # type: ignore[no-untyped-def]
        return [tuple(b.seqs.tolist()) for b in pipeline]

    kwargs = dict(dp_rank=0, dp_size=1, max_seq_len=64, max_num_tokens=256, batch_size=None, pad_idx=0, packing=True)
    pipeline = build_pipeline(examples, shuffle_seed=3, **kwargs)  # type: ignore[arg-type]
    first = epoch(pipeline)
    pipeline.reset()
    second = epoch(pipeline)
    assert sorted(first) == sorted(second) and first != second
    assert all(len(b) <= 256 for b in first)
    assert epoch(build_pipeline(examples, shuffle_seed=3, **kwargs)) == first  # type: ignore[arg-type]


def _best_fit_by_scanning(lengths: list[int], capacity: int) -> list[list[int]]:
    """The textbook best-fit decreasing: scan every row for the fullest one the example fits."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda b: (free[b], b))
            bins[best].append(i)
            free[best] -= lengths[i]
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def test_best_fit_equals_the_scanning_algorithm_row_for_row() -> None:
    rng = random.Random(7)
    for capacity in (64, 512):
        lengths = [max(1, min(capacity, int(rng.lognormvariate(3.5, 0.9)))) for _ in range(3000)]
        assert best_fit_bins(lengths, capacity) == _best_fit_by_scanning(lengths, capacity)


# Lengths for the fused CPU path: all distinct (one kernel call each, in place), a few repeated next to
# each other (runs in place), and many repeated apart (sorted by length, one call per length).
@pytest.mark.parametrize(
    ("lengths", "sorted_runs"),
    [((17, 5, 33, 9, 24, 3, 120), False), ((17, 17, 5, 33, 33, 33, 9, 24), False), ((17, 5, 17, 5, 17, 5, 33, 9, 33, 9, 17, 40, 5, 40), True)],
)
def test_fused_packed_attention_is_bit_identical_to_the_per_example_loop(
    lengths: tuple[int, ...], sorted_runs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PackedCausalAttention (one autograd node, examples of one length in one kernel call) against
    DocumentSDPA's plain loop of one SDPA per example (what packing ran before): loss, every gradient
    and the eval logits equal to the bit."""
    from lmtune.models import document_attention
    from lmtune.training.nll_unit import target_nll

    plan = document_attention.equal_length_runs(lengths)
    assert (plan.order is not None) == sorted_runs
    assert sum(m for _, _, m in plan.runs) == len(lengths)

    model = _tiny_model("document")
    rng = random.Random(5)
    items = [_example(rng, n) for n in lengths]
    calls = []
    fused = document_attention._fused_cpu_kernel_applies
    results = {}
    for name in ("loop", "fused"):
        if name == "loop":
            monkeypatch.setattr(document_attention, "_fused_cpu_kernel_applies", lambda *args: False)
        else:
            monkeypatch.setattr(document_attention, "_fused_cpu_kernel_applies", lambda *args: calls.append(1) or fused(*args))
        model.train()
        loss, _ = target_nll(model, collate_packed(items))
        grads = torch.autograd.grad(loss, list(model.parameters()))
        model.eval()
        with torch.no_grad():
            logits = model(*collate_packed(items).as_input())
        results[name] = (loss.detach(), grads, logits)
    assert calls and fused(*[torch.zeros(4, 2, 8)] * 3, 0.0, None)  # the fused path was asked and taken
    (loss_a, grads_a, logits_a), (loss_b, grads_b, logits_b) = results["loop"], results["fused"]
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert torch.equal(logits_a, logits_b)


def test_packed_attention_under_cpu_autocast_runs_in_float32_as_one_node() -> None:
    """Under bf16 autocast, DocumentSDPA runs the packed examples in float32 through PackedCausalAttention
    (SDPA would run them one call per example in bf16, whose CPU backward took twice float32's time): the output
    and gradients equal the per-example float32 SDPA on the same (upcast) inputs to the bit."""
    from fairseq2.models.transformer.attention_bias import (
        AttentionBiasCache,
        CausalAttentionBias,
    )
    from fairseq2.nn import BatchLayout
    from torch.nn.functional import scaled_dot_product_attention

    from lmtune.models.document_attention import DocumentSDPA

    lens = [7, 3, 7, 12, 3]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lens), 4, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    layout = BatchLayout((sum(lens),), lens, packed=True)
    sdpa = DocumentSDPA(CausalAttentionBias())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa(q, layout, k, layout, v, AttentionBiasCache())
    assert out.dtype == torch.float32 and out.grad_fn is not None
    assert type(out.grad_fn).__name__ == "PackedCausalAttentionBackward"  # one node, not a loop of SDPA calls
    weights = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))

    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    expected = torch.cat([
        scaled_dot_product_attention(*(x.transpose(0, 1).unsqueeze(0) for x in xs), is_causal=True).squeeze(0).transpose(0, 1)
        for xs in zip(q32.split(lens), k32.split(lens), v32.split(lens))
    ])  # fmt: skip
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q32, k32, v32))
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b.bfloat16()) for a, b in zip(grads, expected_grads))


def test_equal_length_runs_by_hand() -> None:
    from lmtune.models.document_attention import equal_length_runs

    assert equal_length_runs((3, 3, 5, 2, 2)).runs == ((0, 3, 2), (6, 5, 1), (11, 2, 2))  # in place
    plan = equal_length_runs((2, 3, 2, 3, 2, 3))  # sorting turns 6 calls into 2
    assert plan.runs == ((0, 2, 3), (6, 3, 3))
    assert plan.order is not None and plan.inverse is not None
    assert plan.order.tolist() == [0, 1, 5, 6, 10, 11, 2, 3, 4, 7, 8, 9, 12, 13, 14]
    assert plan.order[plan.inverse].tolist() == list(range(15))


def test_the_recipe_gives_packed_batches_per_example_attention(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """fairseq2 builds the model before the recipe's create_task, so lmtune swaps its attention in setup_model:
    before, packed batches of a real run went to TorchSDPA, which attends across the whole pack (issue 23)."""
    from fairseq2.models.transformer.sdpa.torch import TorchSDPA

    from helpers import run_lmtune_in_process
    from lmtune.models.document_attention import DocumentSDPA

    packed_calls: list[str] = []

    def counting(cls, real):  # type: ignore[no-untyped-def]
        def forward(self, q, q_layout, *args, **kwargs):  # type: ignore[no-untyped-def]
            if q_layout.packed:
                packed_calls.append(cls)
            return real(self, q, q_layout, *args, **kwargs)

        return forward

    monkeypatch.setattr(DocumentSDPA, "forward", counting("DocumentSDPA", DocumentSDPA.forward))
    monkeypatch.setattr(TorchSDPA, "forward", counting("TorchSDPA", TorchSDPA.forward))
    result = run_lmtune_in_process("instruction_finetune", str(tmp_path / "out"), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert packed_calls and set(packed_calls) == {"DocumentSDPA"}, packed_calls[:4]  # 2 layers a step, none through TorchSDPA
