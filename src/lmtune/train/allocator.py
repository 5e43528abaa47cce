"""Giving freed activation memory back to the system between steps (glibc malloc).

glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it
when freed, but each such free raises the threshold (up to 32 MiB), after which blocks of
that size come from the heap, are kept when freed, and fragment it. A training step frees
and reallocates hundreds of activation tensors of 1-32 MiB, so the process's RSS settles
well above its live memory: 1.3 GiB above it for a Llama-3.2-1B-shaped LoRA run on CPU
(bench/lora_bench.py). Fixing the threshold (which also stops its adjustment) keeps every
such block in its own mapping, given back when the tensor dies.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def return_large_blocks_when_freed() -> bool:
    """Fixes glibc's mmap threshold; False (and nothing done) on another C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
