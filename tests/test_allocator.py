"""How glibc treats the memory a CPU training step frees (lmtune.training.allocator), counted in page faults.

A "step" here is the forward and backward of two 128 -> 512 -> 128 feed-forward blocks on 4,096 rows (8 MiB
activations, the tiny default's kind of tensors), one thread. With ``return_large_blocks_when_freed``
(``release_freed_memory=true``) every block is unmapped when freed, so each step faults in all of its pages: the
scale. Under glibc's own settings the freed heap top is often given back and faulted in again (measured: 5.5-13% of
that scale a step over 21 fresh processes); once training has called ``keep_freed_blocks_for_reuse`` a step reuses
the last one's pages (0-1%). Each case runs in a fresh interpreter: the settings are the process's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from lmtune.training import allocator
if sys.argv[1] == "reuse":
    assert allocator.keep_freed_blocks_for_reuse()
elif sys.argv[1] == "release":
    assert allocator.return_large_blocks_when_freed()
torch.manual_seed(0)
torch.set_num_threads(1)
block = lambda: torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.SiLU(), torch.nn.Linear(512, 128))
model = torch.nn.Sequential(block(), block())
x = torch.randn(4096, 128)
def step():
    model(x).square().sum().backward()
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
    every_page = faults_per_step("release")  # release_freed_memory=true: every block faulted in at each step
    assert every_page > 15_000  # 4,096 x 512 float32 activations and their gradients: ~20,000 pages a step
    assert faults_per_step("default") > 0.03 * every_page  # what the setting is for: glibc alone refaults
    assert faults_per_step("reuse") < 0.03 * every_page
