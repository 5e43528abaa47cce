"""The memory figures every training run publishes with its train metrics (rank 0's process):

- ``memory/peak_rss_bytes``: the process's peak resident set size so far (Linux ``ru_maxrss``,
  the same as VmHWM in /proc/self/status); it never goes down.
- on GPU, ``memory/gpu_max_allocated_bytes`` and ``memory/gpu_max_reserved_bytes``: the most
  memory PyTorch's CUDA allocator held for tensors, and reserved from the device, within the
  publish interval (fairseq2 resets the allocator's peaks after each publish).

Reading them costs a system call at each publish, nothing per step.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def publish_memory(values: MutableMapping[str, object], device: torch.device) -> None:
    values["memory/peak_rss_bytes"] = peak_rss_bytes()
    if getattr(device, "type", None) == "cuda":
        import torch

        values["memory/gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        values["memory/gpu_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
