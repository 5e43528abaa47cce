"""Which precision a run computes in: ``dtype=auto`` picks bf16 where the device does bf16 fast.

bf16 here is mixed precision for training (float32 weights and optimizer state, bf16 autocast)
and bf16 weights for generation. Where it pays differs by machine and by model:

- GPUs with bf16 support: always.
- CPUs: bf16 matrix products are fast only with AMX-BF16 or AVX512-BF16 (``/proc/cpuinfo``
  flags ``amx_bf16`` / ``avx512_bf16``); on an AVX2-only CPU (November 2026) a 2048x2048 bf16
  ``torch.mm`` ran at ~0.3 GFLOP/s against ~137 for float32. Where the flags are not known (no
  /proc/cpuinfo, another architecture), a short bf16 against float32 matmul timing decides.
- Small models on CPU: bf16 pays on a CPU with a bf16 unit from 128 wide up in training, once
  packed attention runs in float32 (``lmtune.models.document_attention``; before, under autocast
  it ran one bf16 attention call per example, and bf16 measured 0.65-1.3x float32 at 64-128 wide).
  Measured on an AMD EPYC with avx512_bf16 (no AMX, idle, December 2026; float32 / bf16 autocast):
  the tiny default (128 wide, 2 layers, its 2048-token packed batches, 2 threads) 83 / 68 ms a step
  (1.22x); bench/skewed_packing_bench.py's epoch of 400 skewed examples, packed, 2 threads: 2.55 /
  1.89 s at 128 wide (1.35x), 1.55 / 1.29 s at 64 wide (1.20x); 300 examples at 128 wide, 1 thread:
  3.29 / 2.32 s (1.42x); model_dim 256, 4 layers, 2048 tokens 1082 / 631 ms (1.7x); model_dim 512,
  8 layers (~25M weights) 1.3x and more. Greedy generation of the 200 tiny_gsm8k test prompts (bf16
  weights): 1.0x at 128 wide (1.8 / 1.8 s), 2.2x at 256 wide (11.7 / 5.3 s), 1.6x at 512 wide (32.0 /
  19.9 s). So ``auto`` on such a CPU trains in bf16 from ``CPU_BF16_MIN_MODEL_DIM`` (128, the tiny
  default) and generates in bf16 from ``CPU_BF16_MIN_MODEL_DIM_GENERATION`` (256); narrower models
  (the tests' 64-wide ones) run in float32, as they do on every CPU without a bf16 unit.

An explicit dtype is honoured; a slow explicit choice says so once, with the measured rates.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CPU_BF16_MIN_MODEL_DIM = 128
"""On a CPU, ``auto`` trains in bf16 only for models at least this wide (see the figures above)."""
CPU_BF16_MIN_MODEL_DIM_GENERATION = 256
"""On a CPU, ``auto`` generates with bf16 weights only for models at least this wide (1.0x at 128 wide)."""

FAST_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MATMUL_SIZE = 512  # big enough to time the matrix unit, small enough to take milliseconds (seconds where bf16 is emulated)


@dataclass(kw_only=True, frozen=True)
class DeviceFacts:
    """What decides the precision: the device, its bf16 support, and (CPU) flags and measured rates."""

    type: str
    """torch's device type: cpu, cuda, ..."""
    name: str = ""
    """The CPU's model name or the GPU's name, for the console."""
    gpu_bf16: bool = False
    """A GPU that supports bf16 (torch.cuda.is_bf16_supported())."""
    cpu_flags: frozenset[str] | None = None
    """/proc/cpuinfo's flags; None where not known (another OS or architecture)."""
    cpu_capability: str = ""
    """torch.backends.cpu.get_cpu_capability(): AVX512, AVX2, DEFAULT, ..."""
    rates: dict[str, float] = field(default_factory=dict)
    """Measured matmul GFLOP/s by dtype name (float32, bfloat16, float16); empty where not measured."""


@dataclass(kw_only=True, frozen=True)
class Precision:
    dtype: str
    """What forward and backward compute in: float32, bfloat16 or float16 (weights stay float32 in training)."""
    reason: str
    """Why, in a few words, for the console header."""
    slow: bool = False
    """An explicit choice this device computes slowly."""

    @property
    def line(self) -> str:
        what = "float32" if self.dtype == "float32" else f"{_short(self.dtype)} autocast over float32 weights"
        return f"precision: {what} ({self.reason})"


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype]


def _rates(facts: DeviceFacts, dtype: str) -> str:
    if dtype not in facts.rates or "float32" not in facts.rates:
        return ""
    return f", {_short(dtype)} matmul {_gflops(facts.rates[dtype])} vs fp32 {_gflops(facts.rates['float32'])} GFLOP/s"


def _gflops(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"  # an emulated dtype's 0.3 stays 0.3


def fast_cpu_dtype(facts: DeviceFacts, dtype: str) -> tuple[bool, str]:
    """(whether this CPU computes ``dtype`` fast, the evidence in words)."""
    flags = facts.cpu_flags
    if dtype == "bfloat16" and flags is not None:
        found = [f for f in FAST_CPU_BF16_FLAGS if f in flags]
        if found:
            return True, f"{facts.name}: {', '.join(found)}{_rates(facts, dtype)}"
        if "avx2" in flags or "avx512f" in flags:  # an x86 CPU we know: no bf16 unit
            return False, f"{facts.name}: no amx_bf16 or avx512_bf16{_rates(facts, dtype)}"
    if dtype == "float16" and flags is not None and "amx_fp16" in flags:
        return True, f"{facts.name}: amx_fp16{_rates(facts, dtype)}"
    # In doubt (flags unknown, or float16 without AMX-FP16): the measured rates decide.
    if dtype in facts.rates and "float32" in facts.rates:
        fast = facts.rates[dtype] > 1.2 * facts.rates["float32"]
        return fast, f"{facts.name or facts.cpu_capability or 'CPU'}:{_rates(facts, dtype).removeprefix(',')}"
    return False, f"{facts.name or 'CPU'}: no fast {dtype} detected"


def decide_precision(requested: str, facts: DeviceFacts, *, model_dim: int | None, generation: bool = False) -> Precision:
    """The precision for ``requested`` (auto, float32, bfloat16, float16) on the device ``facts``
    describes, for a model ``model_dim`` wide (None: not known), to train it or (``generation``) to
    generate with it. Pure: the same inputs, the same answer."""
    if requested == "float32":
        return Precision(dtype="float32", reason="dtype=float32")
    if facts.type == "cpu":
        dtype = "bfloat16" if requested == "auto" else requested
        fast, evidence = fast_cpu_dtype(facts, dtype)
        if requested != "auto":
            return Precision(dtype=dtype, reason=f"dtype={dtype}; {evidence}", slow=not fast)
        if not fast:
            return Precision(dtype="float32", reason=f"dtype=auto; {evidence}")
        min_dim = CPU_BF16_MIN_MODEL_DIM_GENERATION if generation else CPU_BF16_MIN_MODEL_DIM
        if model_dim is not None and model_dim < min_dim:
            return Precision(
                dtype="float32",
                reason=f"dtype=auto; model_dim {model_dim} < {min_dim}: bf16 casts cost more than they save on matrices this small on a CPU ({evidence})",
            )
        return Precision(dtype="bfloat16", reason=f"dtype=auto; {evidence}")
    # A GPU (or another accelerator torch reports bf16 support for).
    if requested == "auto":
        if facts.gpu_bf16:
            return Precision(dtype="bfloat16", reason=f"dtype=auto; {facts.name or facts.type} supports bf16")
        return Precision(dtype="float32", reason=f"dtype=auto; {facts.name or facts.type} does not support bf16")
    slow = requested == "bfloat16" and not facts.gpu_bf16
    return Precision(dtype=requested, reason=f"dtype={requested}; {facts.name or facts.type}" + (" does not support bf16" if slow else ""), slow=slow)


# ---------------------------------------------------------------- the machine at hand


def cpu_info(text: str) -> tuple[str, frozenset[str] | None]:
    """(model name, flags) from /proc/cpuinfo's text; flags None where it has none (ARM calls them Features)."""
    name, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = frozenset(value.split())
    if flags is not None and "avx2" not in flags and "avx512f" not in flags and not any(f in flags for f in FAST_CPU_BF16_FLAGS):
        flags = None  # not an x86 flag list we can read (an ARM Features line): measure instead
    return name, flags


def matmul_gflops(dtype_name: str, size: int = MATMUL_SIZE, budget_s: float = 0.05) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype_name`` on the CPU, the best of a few
    tries within about ``budget_s`` (one try where the dtype is emulated and slow). 0.05 s gives the rates 0.3 s gave
    (within 2% on an AMD EPYC, 512x512: ~20 tries), and the start of every run waits for it."""
    import torch

    from lmtune.dtypes import torch_dtype

    a = torch.randn(size, size).to(torch_dtype(dtype_name))
    b = torch.randn(size, size).to(torch_dtype(dtype_name))
    torch.mm(a[:64, :64], b[:64, :64])  # first call: kernel selection
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        start = time.perf_counter()
        torch.mm(a, b)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if took > budget_s / 3:
            break
    return 2 * size**3 / best / 1e9


@functools.cache
def this_cpu() -> tuple[str, frozenset[str] | None]:
    cpuinfo = Path("/proc/cpuinfo")
    return cpu_info(cpuinfo.read_text()) if cpuinfo.exists() else ("", None)


@functools.cache
def device_facts(device_type: str, measure: tuple[str, ...] = ()) -> DeviceFacts:
    """The facts for ``device_type`` on this machine; on a CPU, the matmul rates of ``measure``
    (and float32) measured once per process."""
    import torch

    if device_type != "cpu":
        gpu = torch.cuda.is_available() and device_type == "cuda"
        return DeviceFacts(
            type=device_type,
            name=torch.cuda.get_device_name() if gpu else device_type,
            gpu_bf16=bool(gpu and torch.cuda.is_bf16_supported(including_emulation=False)),
        )
    name, flags = this_cpu()
    rates = {d: matmul_gflops(d) for d in sorted({"float32", *measure})} if measure else {}
    return DeviceFacts(type="cpu", name=name, cpu_flags=flags, cpu_capability=torch.backends.cpu.get_cpu_capability(), rates=rates)


_warned: set[tuple[str, str]] = set()


@functools.cache
def choose_precision(requested: str, device_type: str, model_dim: int | None, *, warn: bool = True, generation: bool = False) -> Precision:
    """``decide_precision`` on this machine, once per process for the same arguments, so a slow
    explicit choice is said once on the console (when ``warn``)."""
    measure: tuple[str, ...] = ()
    if device_type == "cpu" and requested != "float32":
        flags = this_cpu()[1]
        known_slow = requested == "auto" and flags is not None and not any(f in flags for f in FAST_CPU_BF16_FLAGS)
        if not known_slow:  # no bf16 timing where the flags already say no (seconds on an AVX2-only CPU)
            measure = ("bfloat16",) if requested == "auto" else (requested,)
    precision = decide_precision(requested, device_facts(device_type, measure), model_dim=model_dim, generation=generation)
    if precision.slow and warn and (requested, device_type) not in _warned:
        _warned.add((requested, device_type))
        print(f"lmtune: warning: dtype={requested} is slow on this machine and runs as asked ({precision.reason}); dtype=auto picks what is fast here.", file=sys.stderr)
    return precision
