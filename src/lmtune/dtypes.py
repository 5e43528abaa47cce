"""The floating-point types lmtune trains, generates and exports in, by name (which one a run
computes in: lmtune.precision)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
DtypeName = Literal["float32", "bfloat16", "float16"]


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

