"""How glibc malloc treats the activation memory a CPU training step frees: kept for reuse (the
default), or given back to the system at once (``release_freed_memory``).

glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it when
freed; each such free raises the threshold (up to 32 MiB) and the heap's trim threshold to twice
it, and the heap's free top above the trim threshold goes back to the system. A training step
frees and reallocates hundreds of activation tensors of 1-32 MiB, so under glibc's own settings the
process keeps faulting pages in: on the tiny default (a 128-wide Llama, 2,048-token batches) about
3,500 page faults a step, and 200 steps took 24-25 s instead of 20.5 (bench/RESULTS.md, "The tiny
default and the demo").

``keep_freed_blocks_for_reuse`` (what training on CPU does unless asked otherwise) fixes the
mmap threshold at its 32 MiB ceiling and never trims the heap: blocks up to 32 MiB come from
the heap and are reused step after step, so the pages are faulted in once. Freed memory is not
given back between steps: the RSS stays at its peak.

``return_large_blocks_when_freed`` (``release_freed_memory=true``) fixes the threshold at glibc's
starting 128 KiB instead, keeping every block in its own mapping, given back when the tensor dies:
the process's peak RSS follows its live memory (0.9-1.25 GiB lower for a Llama-3.2-1B-shaped
LoRA run), for a page fault on every page of every new block (that run's steps took 6-20% longer).
Fixing either threshold also stops glibc's own adjustment. On GPU, activations are not in this heap.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value
MMAP_THRESHOLD_MAX_BYTES = 32 * 1024 * 1024  # the most mallopt accepts on 64-bit (HEAP_MAX_SIZE / 2)
NEVER_TRIM_BYTES = 2**31 - 1  # mallopt takes an int


def keep_freed_blocks_for_reuse() -> bool:
    """Blocks up to 32 MiB from the heap, the heap never trimmed; False (and nothing done) on another C library."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM_BYTES))


def return_large_blocks_when_freed() -> bool:
    """Fixes glibc's mmap threshold at 128 KiB; False (and nothing done) on another C library."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def _mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
