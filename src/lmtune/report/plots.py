"""PNG plots of runs, drawn with matplotlib (Agg, no pyplot state; imported only when drawing).

Per run, written into OUT/plots/ when training ends (``write_run_plots``):
    loss.png               training and validation loss against the step
    lr.png                 the learning rate
    tokens_per_second.png  fairseq2's Elements per Second of each published window
    valid_metrics.png      the task scores at each validation (only when the validation scores a task)
    grad_norm.png          grad_stats=true: the total gradient norm and each parameter group's (log scale)
    memory.png             peak RSS, and on GPU the max allocated/reserved memory, in GiB
For a report (``write_report_plots``) the same files, one line per group: a group of one run is
its line, a group of several runs (seeds) is their mean with a band from their minimum to
their maximum, both taken at each step over the runs that reached it.

Sizes are fixed (no tight bounding box), so a plot with P panels is always
``panel_pixels(P)``; the loss axis is logarithmic, as fine-tuning losses span decades.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.files import atomic_write
from lmtune.report.runs import (
    GRAD_NORM,
    HEADLINE_SCORES,
    LOSS,
    LR,
    MEMORY,
    PLOTS,
    TOKENS_PER_SECOND,
    Group,
    RunMetrics,
    read_run_metrics,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
HEIGHT = 4.5  # inches
PLOT_FILES = ("loss.png", "lr.png", "tokens_per_second.png", "valid_metrics.png", "grad_norm.png", "memory.png")
GIB = 2**30
Series = tuple[list[int], list[float]]


def panel_pixels(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with this many panels side by side."""
    return round(DPI * _width(panels)), round(DPI * HEIGHT)


def _width(panels: int) -> float:
    return 8.0 if panels == 1 else 5.5 * panels


def _figure(titles: Sequence[str], ylabels: Sequence[str]) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_width(len(titles)), HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, len(titles), squeeze=False)[0])
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    # no version stamp: same input, same bytes
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))
    return path


def _log_if_positive(ax: Axes, values: Sequence[float]) -> None:
    if values and min(values) > 0:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))  # 0.3, not 3 x 10^-1
        # Minor ticks: every one labelled within a decade, 2 and 5 over up to three, none beyond (they would crowd).
        decades = math.log10(max(values) / min(values))
        shown = range(1, 10) if decades < 1 else (2, 5) if decades < 3 else ()
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if round(y / 10 ** math.floor(math.log10(y))) in shown else ""))


# ---------------------------------------------------------------- one run


def write_run_plots(out_dir: Path) -> list[Path]:
    """Draws a run's metrics into OUT/plots/; returns the files written (none before a first step)."""
    metrics = read_run_metrics(out_dir)
    plots = out_dir / PLOTS
    written = []
    if metrics.train:
        written += [_run_loss(metrics, plots / "loss.png", out_dir.name)]
        for column, file, title in ((LR, "lr.png", "learning rate"), (TOKENS_PER_SECOND, "tokens_per_second.png", "tokens/s")):
            steps, values = metrics.series("train", column)
            if values:
                fig, (ax,) = _figure([f"{out_dir.name}: {title}"], [title])
                ax.plot(steps, values, marker=".")
                written.append(_save(fig, plots / file))
    if metrics.series("train", GRAD_NORM)[0]:
        fig, (ax,) = _figure([f"{out_dir.name}: gradient norms (before clipping)"], ["L2 norm"])
        drawn: list[float] = []
        for column in [GRAD_NORM] + metrics.grad_groups():
            steps, values = metrics.series("train", column)
            ax.plot(steps, values, label=column.removeprefix("grad_norm/"), linewidth=2.5 if column == GRAD_NORM else 1.0)
            drawn += values
        _log_if_positive(ax, drawn)
        written.append(_save(fig, plots / "grad_norm.png"))
    memory = [(column, label) for column, label in MEMORY.items() if metrics.series("train", column)[0]]
    if memory:
        fig, (ax,) = _figure([f"{out_dir.name}: memory"], ["GiB"])
        for column, label in memory:
            steps, values = metrics.series("train", column)
            ax.plot(steps, [v / GIB for v in values], marker=".", label=label)
        written.append(_save(fig, plots / "memory.png"))
    scores = metrics.task_scores()
    if scores:
        fig, (ax,) = _figure([f"{out_dir.name}: validation task scores"], ["score"])
        for column in scores:
            ax.plot(*metrics.series("valid", column), marker="o", label=column)
        ax.set_ylim(-0.02, 1.02)
        written.append(_save(fig, plots / "valid_metrics.png"))
    return _remove_stale(plots, written)


def _remove_stale(plots: Path, written: list[Path]) -> list[Path]:
    """Deletes the plots this drawing did not make (a rerun without a task leaves no old scores behind)."""
    for name in PLOT_FILES:
        if plots / name not in written:
            (plots / name).unlink(missing_ok=True)
    return written


def _run_loss(metrics: RunMetrics, path: Path, name: str) -> Path:
    fig, (ax,) = _figure([f"{name}: loss"], ["NLL loss"])
    train, valid = metrics.series("train", LOSS), metrics.series("valid", LOSS)
    ax.plot(*train, label="train")
    if valid[0]:
        ax.plot(*valid, marker="o", label="valid")
    _log_if_positive(ax, train[1] + valid[1])
    return _save(fig, path)


# ---------------------------------------------------------------- a report


def band(series: Sequence[Series]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, and at each the mean, minimum and maximum over the series that have it."""
    at: dict[int, list[float]] = {}
    for steps, values in series:
        for s, v in zip(steps, values):
            at.setdefault(s, []).append(v)
    steps = sorted(at)
    return steps, [statistics.fmean(at[s]) for s in steps], [min(at[s]) for s in steps], [max(at[s]) for s in steps]


def _draw_groups(ax: Axes, groups: Sequence[Group], split: str, column: str, marker: str | None = None, scale: float = 1.0) -> list[float]:
    """One line per group (a band over its runs when it has several), values divided by ``scale``; returns every value drawn."""
    drawn: list[float] = []
    for i, group in enumerate(groups):
        series = [r.metrics.series(split, column) for r in group.runs]
        series = [(steps, [v / scale for v in values]) for steps, values in series]
        series = [s for s in series if s[0]]
        if not series:
            continue
        color = f"C{i % 10}"
        steps, mean, low, high = band(series)
        if len(series) == 1:
            ax.plot(steps, mean, color=color, marker=marker, label=group.label)
        else:
            ax.plot(steps, mean, color=color, marker=marker, label=f"{group.label} (mean of {len(series)}; band: min-max)")
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        drawn += low + high
    return drawn


def write_report_plots(groups: Sequence[Group], plots: Path) -> list[Path]:
    """Draws the groups' metrics into plots/ (loss.png, lr.png, tokens_per_second.png, valid_metrics.png, grad_norm.png, memory.png)."""
    runs = [r for g in groups for r in g.runs]
    has_valid = any(r.metrics.series("valid", LOSS)[0] for r in runs)
    written = []

    fig, axes = _figure(["train loss", "valid loss"][: 1 + has_valid], ["NLL loss"] * (1 + has_valid))
    for ax, split in zip(axes, ("train", "valid")):
        _log_if_positive(ax, _draw_groups(ax, groups, split, LOSS, marker="o" if split == "valid" else None))
    written.append(_save(fig, plots / "loss.png"))

    for column, file, title in ((LR, "lr.png", "learning rate"), (TOKENS_PER_SECOND, "tokens_per_second.png", "tokens/s")):
        if any(r.metrics.series("train", column)[0] for r in runs):
            fig, (ax,) = _figure([title], [title])
            _draw_groups(ax, groups, "train", column)
            written.append(_save(fig, plots / file))

    if any(r.metrics.series("train", GRAD_NORM)[0] for r in runs):
        fig, (ax,) = _figure(["total gradient norm (before clipping)"], ["L2 norm"])
        _log_if_positive(ax, _draw_groups(ax, groups, "train", GRAD_NORM))
        written.append(_save(fig, plots / "grad_norm.png"))
    memory = [(c, label) for c, label in MEMORY.items() if any(r.metrics.series("train", c)[0] for r in runs)]
    if memory:
        fig, axes = _figure([f"{label} (GiB)" for _, label in memory], ["GiB"] * len(memory))
        for ax, (column, _) in zip(axes, memory):
            _draw_groups(ax, groups, "train", column, scale=GIB)
        written.append(_save(fig, plots / "memory.png"))

    scores = [s for s in HEADLINE_SCORES if any(r.metrics.series("valid", s)[0] for r in runs)]
    if scores:
        fig, axes = _figure([f"valid {HEADLINE_SCORES[s]}" for s in scores], ["score"] * len(scores))
        for ax, column in zip(axes, scores):
            _draw_groups(ax, groups, "valid", column, marker="o")
            ax.set_ylim(-0.02, 1.02)
        written.append(_save(fig, plots / "valid_metrics.png"))
    return _remove_stale(plots, written)
