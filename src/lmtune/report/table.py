"""The report's tables, as aligned text for the console and as markdown for ``report.md``.

One row per group: each cell is the mean over the group's runs ± their standard deviation (n - 1;
"-" for a group of one run). When no group has more than one run, cells are the plain values, a test
score followed by its 95% bootstrap interval; the table of runs always shows those intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmtune.report.runs import (
    HEADLINE_SCORES,
    LOSS,
    TEST_SCORES,
    Group,
    RunSummary,
    mean_std,
)

MISSING = "n/a"


@dataclass(frozen=True, kw_only=True)
class Column:
    header: str
    value: Callable[[RunSummary], float | None]
    digits: int | None
    """Decimals; None for a count (a whole number, or a mean of counts with one decimal)."""
    interval: Callable[[RunSummary], tuple[float, float] | None] | None = None
    """A score's 95% bootstrap interval, shown beside one run's value."""


def columns(runs: Sequence[RunSummary]) -> list[Column]:
    """The table's number columns; validation columns only when some run validated."""
    cols = [Column(header="steps", value=lambda r: r.steps, digits=None), Column(header="train loss", value=lambda r: r.train_loss, digits=4)]
    for column, name in [(LOSS, "valid loss"), *HEADLINE_SCORES.items()]:
        if any(column in r.final for r in runs):
            cols.append(Column(header=name, value=lambda r, c=column: r.final.get(c), digits=4))  # type: ignore[misc]
            cols.append(Column(header=f"best {name}", value=lambda r, c=column: r.best.get(c), digits=4))  # type: ignore[misc]
    for key, name in TEST_SCORES.items():
        if any(key in r.test for r in runs):
            cols.append(Column(header=name, value=lambda r, k=key: r.test.get(k), digits=4, interval=lambda r, k=key: r.test_intervals.get(k)))  # type: ignore[misc]
    cols.append(Column(header="tokens/s", value=lambda r: r.tokens_per_second, digits=0))
    cols.append(Column(header="wall time (s)", value=lambda r: r.wall_time, digits=1))
    return cols


def number(x: float, digits: int | None) -> str:
    if digits is None:
        digits = 0 if x == round(x) else 1
    return f"{x:.{digits}f}"


def with_interval(text: str, interval: tuple[float, float] | None, digits: int | None) -> str:
    return text if interval is None else f"{text} [{number(interval[0], digits)}, {number(interval[1], digits)}]"


def cell(values: Sequence[float], digits: int | None, with_std: bool, interval: tuple[float, float] | None = None) -> str:
    """``interval``: the one run's bootstrap interval, shown when there is no std to show."""
    if not values:
        return MISSING
    mean, std = mean_std(values)
    if not with_std:
        return with_interval(number(mean, digits), interval if len(values) == 1 else None, digits)
    return f"{number(mean, digits)} ± {'-' if std is None else number(std, digits)}"


def group_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    cols = columns([r for g in groups for r in g.runs])
    with_std = any(len(g.runs) > 1 for g in groups)
    rows = []
    for g in groups:
        values = [[v for v in map(c.value, g.runs) if v is not None] for c in cols]
        intervals = [c.interval(g.runs[0]) if c.interval is not None and len(g.runs) == 1 else None for c in cols]
        rows.append([g.label, str(len(g.runs)), *(cell(v, c.digits, with_std, iv) for v, c, iv in zip(values, cols, intervals))])
    return ["group", "runs", *(c.header for c in cols)], rows


def run_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    runs = [r for g in groups for r in g.runs]
    cols = columns(runs)
    rows = []
    for g in groups:
        for r in g.runs:
            values = [c.value(r) for c in cols]
            stop = MISSING if r.early_stop_step is None else str(r.early_stop_step)
            shown = [MISSING if v is None else with_interval(number(v, c.digits), c.interval(r) if c.interval else None, c.digits) for v, c in zip(values, cols)]
            rows.append([r.name, g.label, str(r.config.get("seed", MISSING)), *shown, stop])
    return ["run", "group", "seed", *(c.header for c in cols), "stopped early at"], rows


def format_text(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:  # the label left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"


def format_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], labels: int = 1) -> str:
    """A markdown table: the first ``labels`` columns left-aligned, the numbers right-aligned."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    aligns = ["---" if i < labels else "---:" for i in range(len(headers))]
    return "\n".join([line(headers), "| " + " | ".join(aligns) + " |", *map(line, rows)]) + "\n"


def report_markdown(sources: Sequence[Path], keys: Sequence[str], groups: Sequence[Group], plots: Sequence[Path], report_dir: Path) -> str:
    n_runs = sum(len(g.runs) for g in groups)
    by = ", ".join(f"`{k}`" for k in keys) if keys else "nothing (no config key but `seed` differs)"
    parts = [
        "# lmtune report\n",
        f"{n_runs} run(s) from {', '.join(f'`{s}`' for s in sources)}, in {len(groups)} group(s) by {by}.",
        "Group cells: the mean over the group's runs ± the standard deviation (n - 1; \"-\" for one run).",
        "valid loss and scores: at the last validation, and the best over the validations;",
        "tokens/s: the mean of fairseq2's Elements per Second (all tokens) after the first published window;",
        "wall time: fairseq2's Total Time at the last step (carried across resumes);",
        "test scores: the run's scores.json (lmtune generate / lmtune score), with their 95% bootstrap interval [low, high] where one run is shown.\n",
        "## Groups\n",
        format_markdown(*group_table(groups)),
        *(f"- {g.label}: `{g.settings}`" for g in groups if g.settings and g.label != g.settings),
        "",
        "## Runs\n",
        format_markdown(*run_table(groups), labels=2),
    ]
    if plots:
        parts.append("## Plots\n")
        parts += [f"![{p.stem}]({p.relative_to(report_dir).as_posix()})\n" for p in plots]
    return "\n".join(parts)
