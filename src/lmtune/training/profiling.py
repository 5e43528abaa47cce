"""``profiler.enabled=true``: PyTorch's profiler over a window of training steps.

The window is fairseq2's (``common.profilers.torch``): skip ``skip_n_steps``, then ``repeat``
cycles of ``wait_n_steps`` idle, ``num_warmup_steps`` recorded and dropped, ``num_active_steps``
recorded. Each cycle writes ``OUT/profile/rank_R.cycle_C.pt.trace.json``, a Chrome trace that
Perfetto (ui.perfetto.dev), chrome://tracing and TensorBoard's profiler plugin
(``tensorboard --logdir OUT/profile``) open, and rank 0 prints the operators that took the most
time in it. fairseq2's trainer marks each step and its forward, backward, clipping and optimizer
parts (``step_N_0_forward`` ...), so they show in the trace.

lmtune's profiler joins fairseq2's profilers through the recipe's container (a ``Profiler``
the trainer starts, steps and stops) instead of fairseq2's own torch profiler, which writes gzip
traces with Python stacks into OUT/tb and prints nothing. Off, nothing is created: no cost.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairseq2.profilers import Profiler

if TYPE_CHECKING:
    from fairseq2.recipe.config import TorchProfilerConfig
    from fairseq2.runtime.dependency import DependencyContainer, DependencyResolver

    from lmtune.training.console import RunConsole

TOP_OPERATORS = 10


def top_operators_table(events: Any, device_type: str, rows: int = TOP_OPERATORS) -> str:
    """The operators with the most self time (on the GPU when there is one), as a short table."""
    on_gpu = device_type == "cuda"

    def self_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) if on_gpu else e.self_cpu_time_total)

    # fairseq2's step markers (step_N_0_forward ...) are ranges, not operators
    ops = sorted((e for e in events if not re.match(r"step_\d+", e.key)), key=self_us, reverse=True)
    total = sum(self_us(e) for e in ops) or 1.0
    width = max([len("operator")] + [len(e.key[:60]) for e in ops[:rows]])
    lines = [f"  {'operator':<{width}}  {'self ms':>9}  {'share':>6}  {'calls':>6}"]
    for e in ops[:rows]:
        lines.append(f"  {e.key[:60]:<{width}}  {self_us(e) / 1000:>9.2f}  {self_us(e) / total:>6.1%}  {e.count:>6d}")
    return "\n".join(lines)


class StepProfiler(Profiler):
    """fairseq2's ``Profiler`` interface (start / stop / step) around ``torch.profiler.profile``."""

    def __init__(self, config: TorchProfilerConfig, out_dir: Path, rank: int, device_type: str, show: Callable[[str], None] | None) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self._out, self._rank, self._device_type, self._show = out_dir, rank, device_type, show
        self._cycle = 0
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
        window = schedule(
            skip_first=config.skip_n_steps, wait=config.wait_n_steps, warmup=config.num_warmup_steps,
            active=config.num_active_steps, repeat=config.repeat,
        )  # fmt: skip
        self._profile = profile(activities=activities, schedule=window, on_trace_ready=self._trace_ready, profile_memory=True)

    def start(self) -> None:
        self._profile.start()

    def stop(self) -> None:
        self._profile.stop()

    def step(self) -> None:
        self._profile.step()

    def _trace_ready(self, prof: Any) -> None:
        self._cycle += 1
        self._out.mkdir(parents=True, exist_ok=True)
        path = self._out / f"rank_{self._rank}.cycle_{self._cycle}.pt.trace.json"
        tmp = path.with_name(f".{path.name}.tmp")
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, path)  # a trace file is whole or absent
        if self._rank == 0:
            title = f"profiler: cycle {self._cycle} traced into {path}; top operators by self {'GPU' if self._device_type == 'cuda' else 'CPU'} time:"
            text = title + "\n" + top_operators_table(prof.key_averages(), self._device_type)
            if self._show is not None:
                self._show(text)
            else:
                print(text, file=sys.stderr, flush=True)


def register_profiler(container: DependencyContainer, config_kls: type, console: RunConsole | None) -> None:
    """From a recipe's ``register``: adds the profiler to fairseq2's when the config's
    ``instrument.profiler.enabled`` is set."""
    from fairseq2.recipe import RecipeContext

    from lmtune.run_dir import PROFILE

    def create(resolver: DependencyResolver) -> Profiler | None:
        context = RecipeContext(resolver)
        config: TorchProfilerConfig = context.get_config_as(config_kls).instrument.profiler
        if not config.enabled:
            return None
        show = console.write if console is not None else None
        return StepProfiler(config, context.output_dir / PROFILE, context.gangs.root.rank, context.gangs.device.type, show)

    container.collection.register(Profiler, create, singleton=True)
