"""What a training run shows on the console.

fairseq2 prints its whole log on stderr: the config, the model's module tree, 12-line
metric blocks. A run shows instead one header line (model, data, OUT); a live progress
bar on a terminal, or one compact line per publish interval otherwise::

    step 50/600  loss 1.234  lr 3.0e-04  tok/s 12,345  eta 0:41

one line per validation, checkpoint and resume; and a summary. Warnings and errors
still show, one line each. fairseq2's full log still goes to ``OUT/logs/rank_N.log``;
``--verbose`` shows it on the console too (and this module then adds only the header,
the resume line and the summary). Only rank 0 prints.

How it plugs into fairseq2 0.8.1's ``fairseq2.recipe.run.run``:

- ``run()`` first puts a console handler on the root logger (``configure_logging``) and
  later a file handler on the ``fairseq2`` logger (``OUT/logs``). Between the two the
  ``fairseq2`` logger is held at WARNING (nothing is lost: the file does not exist yet);
  ``attach`` then swaps the console handler for ``_ConsoleWarnings``, leaving the file
  handler every record.
- the recipe's ``register`` calls ``attach``, which adds a metric recorder to the
  container's collection, beside fairseq2's log, JSONL and TensorBoard recorders.
- the recipe reports each step (the train unit's ``set_step_nr``), saved checkpoints
  (``Trainer.register_checkpoint_save_hook``) and the step it resumes from.
- ``run()`` turns on fairseq2's DeprecationWarnings; those raised from fairseq2's own
  code (``hg_exporter`` is deprecated ...) are dropped: a user cannot act on them.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from lmtune.options.finetune import FinetuneOptions
from lmtune.options.pretrain import PretrainOptions
from lmtune.run_dir import is_main_process
from lmtune.training.validation_plan import ValidationPlan


def clock(seconds: float) -> str:
    """0:41, 12:05, 1:02:03."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def took(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else clock(seconds)


def step_stats(values: Mapping[str, object]) -> str:
    """loss, learning rate and tokens/s from fairseq2's train metric values."""
    parts = []
    if "nll_loss" in values:
        parts.append(f"loss {_number(values['nll_loss']):.3f}")
    if "preference_loss" in values:  # preference tuning (lmtune.training.preference_unit)
        parts.append(f"loss {_number(values['preference_loss']):.3f}")
        for name, label in (("reward_accuracy", "acc"), ("reward_margin", "margin"), ("chosen_logps", "logp+"), ("rejected_logps", "logp-")):
            if name in values:
                parts.append(f"{label} {_number(values[name]):.3f}")
    if "lr" in values:
        lr = values["lr"]
        parts.append(f"lr {_number(lr[0] if isinstance(lr, (list, tuple)) else lr):.1e}")
    if "elements_per_second" in values:
        parts.append(f"tok/s {_number(values['elements_per_second']):,.0f}")
    if "grad_norm/total" in values:  # grad_stats=true (lmtune.training.grad_stats)
        parts.append(f"gnorm {_number(values['grad_norm/total']):.3g}")
        if "memory/peak_rss_bytes" in values:
            parts.append(f"rss {gib(values['memory/peak_rss_bytes'])}")
        if "memory/gpu_max_allocated_bytes" in values:
            parts.append(f"gpu {gib(values['memory/gpu_max_allocated_bytes'])}")
    return "  ".join(parts)


def gib(value: object) -> str:
    return f"{_number(value) / 2**30:.2f} GiB"


def peak_memory(values: Mapping[str, object]) -> str:
    """The run's peak memory from its last train metrics (lmtune.training.memory_stats), or ''."""
    parts = []
    if "memory/peak_rss_bytes" in values:
        parts.append(f"peak RSS {gib(values['memory/peak_rss_bytes'])}")
    if "memory/gpu_max_allocated_bytes" in values:
        parts.append(f"GPU max allocated {gib(values['memory/gpu_max_allocated_bytes'])} (last interval)")
    return ", ".join(parts)


def _number(value: object) -> float:
    number = value.item() if hasattr(value, "item") else value  # fairseq2 hands over numbers and 0-d tensors
    assert isinstance(number, (int, float)), f"metric value {value!r} is not a number"
    return float(number)


class RunConsole:
    """The console of one training run; a no-op on ranks other than 0."""

    def __init__(self, verbose: bool = False, *, max_step_lines: int | None = None, stream: TextIO | None = None) -> None:
        """``max_step_lines``: at most about this many compact lines (a multiple of the publish
        interval apart), for a caller that prints a curve of its own afterwards (``lmtune demo``)."""
        self.verbose = verbose
        self.main = is_main_process()
        self._max_step_lines = max_step_lines
        self._stream = stream
        self._bar: Any = None  # rich.progress.Progress while a terminal shows it
        self._bar_task: Any = None
        self._start = time.monotonic()
        self._out = Path(".")
        self._total: int | None = None
        self._every = 1
        self._valid_names: list[tuple[str, str]] = [("nll_loss", "loss")]
        self._resumed: int | None = None
        self._first_step: tuple[int, float] | None = None  # (step, when it started) of this session's first step
        self._last_step = 0
        self._losses: list[tuple[int, float]] = []
        self._memory = ""  # the last published peak memory, for the summary
        self._after_step: list[str] = []
        self._saved_handlers: list[logging.Handler] = []
        self._handler: logging.Handler | None = None

    # ------------------------------------------------------------ the run's lines

    def header(self, o: FinetuneOptions | PretrainOptions, out_dir: Path, plan: ValidationPlan, publish_every: int, *, validates: bool) -> None:
        self._out, self._total, self._every = out_dir, o.max_num_steps, publish_every
        if self._max_step_lines and o.max_num_steps:
            per_line = math.ceil(o.max_num_steps / self._max_step_lines)
            self._every = publish_every * math.ceil(per_line / publish_every)
        # The loss and the headline scores; a per-label F1 only when it is the early-stopping metric.
        scores = [m for m in plan.metrics if m.name != "nll_loss" and (not m.name.startswith("f1_") or m == plan.metric)]
        self._valid_names = [("nll_loss", "loss")] + [(m.name, m.user_name.removeprefix("valid.")) for m in scores]
        length = " and ".join(
            ([steps(o.max_num_steps)] if o.max_num_steps else []) + ([f"{o.max_num_data_epochs} epoch(s)"] if o.max_num_data_epochs else [])
        )
        valid = f", validating on {o.valid_dataset or 'its validation split'} every {steps(o.validate_every_n_steps or 0)}" if validates else ""
        self.write(f"lmtune: fine-tuning {o.model} on {o.dataset} for {length}{valid}, into {out_dir} (fairseq2's full log: {out_dir / 'logs'})")

    def resuming(self, step_nr: int) -> None:
        self._resumed = step_nr
        self.write(f"resuming from step {step_nr} ({self._out / 'checkpoints' / f'step_{step_nr}'})")

    def step(self, step_nr: int) -> None:
        """A step starts (every rank calls this)."""
        if not self.main:
            return
        if self._first_step is None:
            self._first_step = (step_nr, time.monotonic())
            if self._is_terminal() and not self.verbose:
                self._start_bar(step_nr)
        self._last_step = step_nr
        if self._bar is not None:
            self._bar.update(self._bar_task, completed=step_nr)

    def record(self, category: str, values: Mapping[str, object], step_nr: int | None) -> None:
        """fairseq2's metric values (rank 0 only): train at each publish interval, valid at each validation."""
        if category == "train" and step_nr is not None:
            loss = next((name for name in ("nll_loss", "preference_loss") if name in values), None)
            if loss is not None:
                self._losses.append((step_nr, _number(values[loss])))
            self._memory = peak_memory(values) or self._memory
            if self._bar is not None:
                self._bar.update(self._bar_task, stats=step_stats(values))
            elif not self.verbose and step_nr % self._every == 0:
                self.write(self.step_line(step_nr, values))
            self._flush_after_step()
        elif category == "valid" and not self.verbose:
            shown = [f"{label} {_number(values[name]):.3f}" for name, label in self._valid_names if name in values]
            self.write(f"validation at step {step_nr}: " + "  ".join(shown))

    def step_line(self, step_nr: int, values: Mapping[str, object]) -> str:
        total = f"/{self._total}" if self._total else ""
        line = f"step {step_nr:{len(str(self._total or ''))}d}{total}  {step_stats(values)}"
        if self._total and self._first_step is not None:
            first, started = self._first_step
            done = step_nr - first + 1
            if done > 0:
                line += f"  eta {clock((time.monotonic() - started) / done * (self._total - step_nr))}"
        return line

    def checkpoint_saved(self, step_nr: int) -> None:
        if self.verbose:
            return
        line = f"checkpoint saved: {self._out / 'checkpoints' / f'step_{step_nr}'}"
        if self._bar is None and step_nr % self._every == 0 and (not self._losses or self._losses[-1][0] < step_nr):
            self._after_step.append(line)  # fairseq2 saves before it publishes the step's metrics: show it after them
        else:
            self.write(line)

    def _flush_after_step(self) -> None:
        for line in self._after_step:
            self.write(line)
        self._after_step.clear()

    def summary(self) -> None:
        self._flush_after_step()
        self._stop_bar()
        where = f"checkpoints in {self._out / 'checkpoints'}, metrics in {self._out / 'metrics'}"
        if self._first_step is None:
            at = f" at step {self._resumed}" if self._resumed is not None else ""
            self.write(f"lmtune: no steps to train: the run is already{at}; {where}")
            return
        first, last = self._first_step[0], self._last_step
        trained = steps(last) if first == 1 else f"steps {first}-{last}"
        loss = f", loss {self._losses[0][1]:.3f} -> {self._losses[-1][1]:.3f}" if self._losses else ""
        memory = f"; {self._memory}" if self._memory else ""
        self.write(f"lmtune: trained {trained} in {took(time.monotonic() - self._start)}{loss}; {where}{memory}")

    def write(self, line: str) -> None:
        if not self.main:
            return
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self._stream or sys.stderr, flush=True)

    # ------------------------------------------------------------ the progress bar

    def _is_terminal(self) -> bool:
        return (self._stream or sys.stderr).isatty()

    def _start_bar(self, step_nr: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True) if self._stream is None else Console(file=self._stream, force_terminal=True)
        self._bar = Progress(
            TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
        )  # fmt: skip
        self._bar_task = self._bar.add_task("train", total=self._total, completed=step_nr - 1, stats="")
        self._bar.start()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # ------------------------------------------------------------ fairseq2's own output

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around ``fairseq2.recipe.run.run``: see the module's docstring."""
        fairseq2_logger = logging.getLogger("fairseq2")
        level = fairseq2_logger.level
        showwarning = warnings.showwarning
        warnings.showwarning = _drop_fairseq2_deprecations(showwarning)
        if not self.verbose and self.main:
            fairseq2_logger.setLevel(logging.WARNING)  # until attach(); OUT/logs is not open yet
        try:
            yield
        finally:
            self._stop_bar()
            warnings.showwarning = showwarning
            fairseq2_logger.setLevel(level)
            root = logging.getLogger()
            if self._handler is not None:
                root.removeHandler(self._handler)
                self._handler = None
                for handler in self._saved_handlers:
                    root.addHandler(handler)

    def attach(self, container: Any) -> None:
        """From the recipe's ``register``: after fairseq2's ``configure_logging``, before anything runs."""
        from fairseq2.metrics.recorders import MetricRecorder

        logging.getLogger("fairseq2").setLevel(logging.NOTSET)  # every record to OUT/logs again
        if self.main and not self.verbose:
            root = logging.getLogger()
            self._saved_handlers = list(root.handlers)
            for handler in self._saved_handlers:
                root.removeHandler(handler)
            self._handler = _ConsoleWarnings(self)
            root.addHandler(self._handler)
        console = self

        class ConsoleRecorder(MetricRecorder):
            def record_metric_values(self, category: str, values: Mapping[str, object], step_nr: int | None = None) -> None:
                console.record(category, values, step_nr)

            def close(self) -> None:
                pass

        container.collection.register_instance(MetricRecorder, ConsoleRecorder())


class _ConsoleWarnings(logging.Handler):
    """Warnings and errors, one line each (a traceback below an error)."""

    def __init__(self, console: RunConsole) -> None:
        super().__init__(logging.WARNING)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{record.name.split('.')[0]}: {record.levelname.lower()}: {record.getMessage()}"
            if record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
            self._console.write(line)
        except Exception:  # noqa: BLE001  (logging's own contract: never raise from emit)
            self.handleError(record)


def _drop_fairseq2_deprecations(showwarning: Any) -> Any:
    import fairseq2

    package = str(Path(fairseq2.__file__).parent)

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        if issubclass(category, DeprecationWarning) and str(filename).startswith(package):
            return
        showwarning(message, category, filename, lineno, file, line)

    return show
