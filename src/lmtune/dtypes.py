"""The floating-point types lmtune trains, generates and exports in, by name."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
DtypeName = Literal["float32", "bfloat16", "float16"]


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def compute_dtype(name: str, device_type: str, *, warn: bool = True) -> str:
    """``name``, or float32 on CPU: bfloat16/float16 matrix products run hundreds of times slower there."""
    if device_type == "cpu" and name != "float32":
        if warn:
            print(f"lmtune: warning: dtype={name} runs as float32 on CPU ({name} matrix products are hundreds of times slower there).", file=sys.stderr)
        return "float32"
    return name
