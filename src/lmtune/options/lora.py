"""The settings of a run's LoRA adapters: the ``lora.*`` keys a user writes, and what every later
stage carries (the resolved spec in ``lmtune.catalog.specs``, the recipe's section, ``lora.yaml``).

One type for all of them, so a setting is added or renamed in one place. As a user's key
``rank`` may be null (no LoRA) and ``targets`` may be ``all_linear``; once a run is planned
(``lmtune.adapters.plan``) ``rank`` is set and ``targets`` is the list of projection names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ALL_LINEAR = "all_linear"
"""``lora.targets``' value for every projection (a transformers-backed model: every linear layer but the head)."""


@dataclass(kw_only=True)
class LoraSettings:
    """Low-rank adapters (LoRA) on the attention and MLP projections; the base weights stay frozen."""

    rank: int | None = None
    """The adapters' rank r; null: no LoRA, every weight is trained."""
    alpha: float = 16.0
    """The adapters' output is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training."""
    targets: list[str] | str = ALL_LINEAR
    """Hugging Face projection names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or all_linear; the output head never.
    A transformers-backed model: its own linear layers' names, as PEFT's target_modules (GPT-NeoX: query_key_value, dense, ...)."""
    quantize: Literal["none", "nf4"] = "none"
    """nf4: keep the frozen base weights in 4-bit NormalFloat (QLoRA); the adapters stay float32."""

    def adapter_rank(self) -> int:
        """``rank``, for code that adds adapters (a planned run's settings always have one)."""
        if self.rank is None:
            raise ValueError("LoRA settings without a rank add no adapters")
        return self.rank

    def target_list(self) -> list[str]:
        """``targets`` as planned: a list of projection names."""
        if isinstance(self.targets, str):
            raise ValueError(f"LoRA targets {self.targets!r} are not resolved to projection names yet")
        return self.targets
