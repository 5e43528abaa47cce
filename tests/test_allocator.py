"""How glibc treats the memory a CPU training step frees (lmtune.training.allocator), counted in page faults.

A "step" here writes four 12 MiB tensors and frees them: 12,288 pages. Under glibc's own settings the
freed heap top is given back and the next step faults every page in again; once training has called
``keep_freed_blocks_for_reuse`` the next step reuses them (no fault); ``return_large_blocks_when_freed``
(``release_freed_memory=true``) unmaps each block when freed, so every step faults them all.
Each case runs in a fresh interpreter: the settings are the process's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PAGES_PER_STEP = 4 * 12 * 1024 * 1024 // 4096

SCRIPT = """
import resource, sys, torch
from lmtune.training import allocator
if sys.argv[1] == "reuse":
    assert allocator.keep_freed_blocks_for_reuse()
elif sys.argv[1] == "release":
    assert allocator.return_large_blocks_when_freed()
def step():
    tensors = [torch.ones(3 * 1024 * 1024) for _ in range(4)]
    del tensors
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_on_cpu_reuses_freed_pages_where_glibc_gives_them_back() -> None:
    assert faults_per_step("default") > 0.5 * PAGES_PER_STEP  # what the setting is for: glibc alone refaults them
    # (a step may still find the heap's free space cut up by small allocations and grow it once: a few % over 20 steps)
    assert faults_per_step("reuse") < 0.1 * PAGES_PER_STEP
    assert faults_per_step("release") > 0.9 * PAGES_PER_STEP  # release_freed_memory=true: each block unmapped when freed
