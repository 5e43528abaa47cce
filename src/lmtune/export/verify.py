"""``--verify``: transformers' logits on the export against lmtune's own model, on fixed inputs.

Both run in float32. When the export is bfloat16/float16, lmtune's weights are
rounded to that dtype first, so the check measures the conversion, not the rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmtune.catalog.specs import ModelSpec
from lmtune.errors import UserError

TOLERANCE = 1e-4
BATCH, LENGTH, SEED = 2, 32, 0


def fixed_inputs(vocab_size: int, bos: int | None, max_len: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab_size, (BATCH, min(LENGTH, max_len)), generator=gen)
    if bos is not None:
        ids[:, 0] = bos
    return ids


def lmtune_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from fairseq2.nn import BatchLayout

    with torch.inference_mode():
        return model(ids, BatchLayout.of(ids)).float()


def hf_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, trust_remote_code=False)
    model.eval()
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def verify_export(spec: ModelSpec, hf_dir: Path, export_dtype: str) -> str:
    """A one-line report; raises UserError when the logits differ by more than TOLERANCE."""
    import json

    from lmtune.adapters.build import load_any_model

    config = json.loads((hf_dir / "config.json").read_text())
    model = load_any_model(spec, dtype=torch.float32)
    if export_dtype != "float32":
        rounded = getattr(torch, export_dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(rounded).float())
    max_len = config["n_positions"] if "n_positions" in config else config["max_position_embeddings"]  # GPT-2 names it n_positions
    ids = fixed_inputs(config["vocab_size"], config.get("bos_token_id"), max_len)
    ours = lmtune_logits(model, ids)
    del model
    theirs = hf_logits(hf_dir, ids)
    diff = float((ours - theirs).abs().max())
    same = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    total = ours.shape[0] * ours.shape[1]
    report = f"lmtune: verify: max abs logit difference {diff:.3g} between lmtune's model and transformers on the export ({total} positions, argmax identical at {same}); tolerance {TOLERANCE:g}"
    if not diff <= TOLERANCE:  # also catches NaN
        raise UserError(f"the export does not reproduce lmtune's model: max abs logit difference {diff:.3g} exceeds {TOLERANCE:g} (argmax identical at {same}/{total} positions); the export was not written.")
    return report
