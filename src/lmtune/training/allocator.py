"""Giving freed activation memory back to the system at once (glibc malloc), on request.

glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it
when freed, but each such free raises the threshold (up to 32 MiB), after which blocks of
that size come from the heap, are kept when freed, and fragment it. A training step frees
and reallocates hundreds of activation tensors of 1-32 MiB, so on CPU the process's peak RSS
settles above its live memory: 0.9-1.25 GiB above it for a Llama-3.2-1B-shaped LoRA run
(bench/RESULTS.md). Fixing the threshold (which also stops its adjustment) keeps every such
block in its own mapping, given back when the tensor dies. The price is a page fault for
every page of every new block: that run's steps took 6-20% longer. So it is a config key
(``release_freed_memory``), off by default; on GPU, activations are not in this heap at all.
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
