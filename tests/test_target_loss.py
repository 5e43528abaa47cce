"""The LM head on target rows only (lmtune.models.target_loss) gives fairseq2's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from lmtune.models.target_loss import use_target_only_loss
from tiny_builders import float64_model, tiny_llama, tiny_qwen25


def loss_and_grads(model, seqs, layout, targets, mask, reduction):  # type: ignore[no-untyped-def]
    model.zero_grad(set_to_none=True)
    loss = model(seqs, layout, targets=targets, target_mask=mask, reduction=reduction)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("builder,kw", [(tiny_llama, {"tied": True}), (tiny_llama, {}), (tiny_qwen25, {})])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_and_gradients_match_the_full_head(builder, kw, reduction) -> None:  # type: ignore[no-untyped-def]
    from fairseq2.nn import BatchLayout

    model = float64_model(builder, **kw)
    gen = torch.Generator().manual_seed(0)
    seqs = torch.randint(3, 256, (3, 12), generator=gen)
    targets = torch.randint(3, 256, (3, 12), generator=gen)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 7:] = True  # a response at the end
    mask[1, 2:5] = True  # one in the middle
    # row 2: no target at all (a prompt longer than the packed row's budget)
    layout = BatchLayout.of(seqs)

    full_loss, full_grads = loss_and_grads(model, seqs, layout, targets, mask, reduction)
    use_target_only_loss(model)
    loss, grads = loss_and_grads(model, seqs, layout, targets, mask, reduction)

    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-6)  # float32 log-softmax
    # by hand: the negative log-probability of each target under the full softmax
    logits = model(seqs, layout).detach()
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = nll[mask].sum() if reduction == "sum" else nll[mask].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(grads) == set(full_grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, full_grads[name], rtol=1e-5, atol=1e-8, msg=name)


def test_batches_without_a_mask_keep_fairseq2s_loss() -> None:
    """Pretraining batches carry no target mask: every position is a target, as before."""
    from fairseq2.nn import BatchLayout

    model = float64_model(tiny_llama)
    seqs = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    layout = BatchLayout.of(seqs)
    before = model(seqs, layout, targets=seqs, reduction="sum").item()
    use_target_only_loss(model)
    assert model(seqs, layout, targets=seqs, reduction="sum").item() == before


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("tied", [True, False])
def test_a_frozen_head_in_chunks_gives_the_same_loss_and_gradients(monkeypatch: pytest.MonkeyPatch, tied: bool, reduction: str) -> None:
    """A LoRA run's head is frozen: the chunked loss (lmtune.models.frozen_head_loss) takes over."""
    from fairseq2.nn import BatchLayout

    import lmtune.models.frozen_head_loss as frozen_head_loss

    monkeypatch.setattr(frozen_head_loss, "CHUNK_ROWS", 4)  # 13 target rows: four chunks, the last short
    model = float64_model(tiny_llama, tied=tied)
    model.final_proj.weight.requires_grad_(False)
    model.decoder_frontend.embed.weight.requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    seqs = torch.randint(3, 256, (2, 12), generator=gen)
    targets = torch.randint(3, 256, (2, 12), generator=gen)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 8:] = True
    layout = BatchLayout.of(seqs)

    full_loss, full_grads = loss_and_grads(model, seqs, layout, targets, mask, reduction)
    calls = []
    real = frozen_head_loss._FrozenHeadNll.forward
    monkeypatch.setattr(frozen_head_loss._FrozenHeadNll, "forward", staticmethod(lambda *a: calls.append(1) or real(*a)))
    use_target_only_loss(model)
    loss, grads = loss_and_grads(model, seqs, layout, targets, mask, reduction)

    assert calls  # the chunked path ran
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-6)
    assert set(grads) == set(full_grads) and "final_proj.weight" not in grads
    for name, g in grads.items():
        # both take the softmax in float32, in another order: equal to float32 rounding
        assert (g - full_grads[name]).abs().max() <= 1e-6 * full_grads[name].abs().max(), name


def test_a_frozen_head_under_cpu_autocast_casts_its_weight_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast the chunked loss casts the (vocab x dim) head once, not in both products of every
    chunk (0.6 s of a Llama-3.2-1B LoRA step on CPU), and gives autocast's loss and gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import lmtune.models.frozen_head_loss as frozen_head_loss

    monkeypatch.setattr(frozen_head_loss, "CHUNK_ROWS", 4)  # 13 rows: four chunks
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 32, generator=gen) * 0.3
    hidden = torch.randn(13, 32, generator=gen, requires_grad=True)
    targets = torch.randint(0, 300, (13,), generator=gen)
    targets[5] = -100

    class WeightCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.ops.aten._to_copy.default and args[0].shape == weight.shape:
                WeightCasts.count += 1
            return func(*args, **(kwargs or {}))

    with torch.autocast("cpu", dtype=torch.bfloat16), WeightCasts():
        loss = frozen_head_loss.frozen_head_nll(hidden, weight, targets, -100)
    loss.backward()
    assert WeightCasts.count == 1
    got = hidden.grad.clone()

    hidden.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.functional.linear(hidden, weight).float()
    expected = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the same bf16 logits, softmax in float32
    # the gradient's product in bf16 (autocast's), against autograd's float32 one: bf16's 2^-8
    assert (got - hidden.grad).abs().max() <= 2**-7 * hidden.grad.abs().max()
