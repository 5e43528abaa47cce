"""The two-tensor SwiGLU (lmtune.models.swiglu): fairseq2's values and gradients, one activation fewer kept."""

from __future__ import annotations

import torch

from lmtune.models.swiglu import use_lean_swiglu
from tiny_builders import float64_model, tiny_llama


def saved_bytes(fn) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the tensors autograd keeps for backward while ``fn`` runs (parameters excluded)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_values_gradients_and_kept_memory() -> None:
    from fairseq2.nn import BatchLayout

    model = float64_model(tiny_llama)  # float64, train mode
    seqs = torch.randint(3, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    layout = BatchLayout.of(seqs)
    ffn = model.decoder.layers[0].ffn
    x = torch.randn(2, 11, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        model.zero_grad(set_to_none=True)
        kept = saved_bytes(lambda: ffn(x))
        loss = model(seqs, layout, targets=seqs, reduction="sum")
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, kept

    loss, grads, kept = run()
    assert use_lean_swiglu(model) == 2  # both layers
    lean_loss, lean_grads, lean_kept = run()

    assert lean_loss.item() == loss.item()
    for name, g in grads.items():
        torch.testing.assert_close(lean_grads[name], g, rtol=1e-12, atol=1e-14, msg=name)
    inner = ffn.gate_proj.weight.shape[0]
    assert kept - lean_kept == 2 * 11 * inner * 8  # one (2, 11, inner) float64 tensor fewer
