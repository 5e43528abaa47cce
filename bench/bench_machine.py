"""What a benchmark row was measured on, and the reference rates its MFU is read against.

The machine line names the CPU and its matrix-unit flags through lmtune.precision's own reader (the
flags dtype=auto decides by), the load average (other people's jobs share the machine), torch and the
git commit. ``matmul_rates`` measures torch.mm in float32 and bfloat16 at the benchmark's thread count,
so each row's MFU is against the rate of the precision that row computes in.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench/RESULTS.md"
MATRIX_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx512_vnni", "avx2", "fma")


def cpu_line() -> str:
    """"AMD EPYC ... (flags: avx512_bf16, avx512f, ...; no amx_bf16)", from /proc/cpuinfo via lmtune."""
    from lmtune.precision import this_cpu

    name, flags = this_cpu()
    if flags is None:
        return f"{name or platform.processor() or platform.machine()} (CPU flags not readable)"
    have = [f for f in MATRIX_FLAGS if f in flags]
    return f"{name} (flags: {', '.join(have) or 'none of ' + ', '.join(MATRIX_FLAGS)}{'' if 'amx_bf16' in flags else '; no amx_bf16'})"


def load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return sha + (" (uncommitted changes)" if dirty else "")


def machine(threads: int) -> str:
    import torch

    return f"{cpu_line()}, {os.cpu_count()} CPUs, {threads} thread(s), torch {torch.__version__}, git {commit()}; {load()}"


def matmul_rates(threads: int, size: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of a ``size`` x ``size`` torch.mm in float32 and bfloat16, best of ``reps``."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        torch.mm(a, b)
        best = math.inf
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        rates[str(dtype).removeprefix("torch.")] = 2 * size**3 / best / 1e9
    return rates


def best_rates(*measured: dict[str, float]) -> dict[str, float]:
    """The higher of several measurements per dtype (the load only ever slows a measurement down)."""
    return {k: max(m[k] for m in measured) for k in measured[0]}


def record(text: str, marker: str, placeholder: str = "") -> None:
    """Newest results first, right under ``marker`` in bench/RESULTS.md (at the end when it is missing)."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if marker in current:
        head, tail = current.split(marker, 1)
        rest = (tail.replace(placeholder, "", 1) if placeholder else tail).lstrip("\n")
        RESULTS.write_text(f"{head}{marker}\n\n{text.rstrip()}\n" + (f"\n{rest}" if rest else ""))
    else:
        RESULTS.write_text(current.rstrip() + f"\n\n{text.rstrip()}\n")
