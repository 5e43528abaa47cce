"""Run directories -> what ``lmtune report`` shows of them: one summary per run, runs grouped over seeds.

A run is a directory with ``lmtune.yaml`` (the effective config) and ``metrics/train.jsonl``;
a sweep is a directory with ``sweep.yaml`` or ``runs/``, whose runs are ``runs/*``. Runs are
grouped by the config keys that differ between them, ``seed`` left out, so a group holds the
repetitions of one setting over seeds.

What each number is, read from fairseq2's metric files:
- steps: the last step in ``train.jsonl``; train loss: the ``NLL Loss`` of that step.
- valid loss and task scores: at the last validation (final) and the best over validations
  (lowest loss, highest score).
- tokens/s: the mean ``Elements per Second`` (all tokens of a batch, prompt included) over the
  published windows, the first left out when there are several: it holds the first step's warmup.
- wall time: the last step's ``Total Time``, which fairseq2 carries across resumes (``Wall Time``
  when absent).
- test scores: from the run's ``scores.json`` (``RUN/scores.json``, else one in a directory inside
  the run, as ``lmtune generate RUN/test ...`` writes it), each with its 95% bootstrap interval.
A step recorded twice (a run resumed from an earlier checkpoint redoes the steps after it) counts once,
with its later record.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.run_dir import CONFIG_FILE, read_early_stop

TRAIN_METRICS = Path("metrics") / "train.jsonl"
VALID_METRICS = Path("metrics") / "valid.jsonl"
SWEEP_FILE = "sweep.yaml"
SWEEP_RUNS = "runs"
PLOTS = "plots"

# fairseq2's column names
STEP, LOSS, LR, TOKENS_PER_SECOND = "Step", "NLL Loss", "Learning Rate", "Elements per Second"
# lmtune's instruments (lmtune.training.grad_stats, lmtune.training.memory_stats)
GRAD_NORM, GRAD_GROUP = "grad_norm/total", "grad_norm/"
MEMORY = {"memory/peak_rss_bytes": "peak RSS", "memory/gpu_max_allocated_bytes": "GPU max allocated", "memory/gpu_max_reserved_bytes": "GPU max reserved"}
# Task scores in valid.jsonl (lmtune.training.valid_metrics): these two are the table's; "F1 LABEL" are plotted per run.
HEADLINE_SCORES = {"Accuracy": "accuracy", "Macro F1": "macro F1", "Reward Accuracy": "reward accuracy"}  # column -> name in tables and titles
# A preference run's loss (lmtune.training.preference_unit) reads as the run's loss in tables and plots.
PREFERENCE_LOSS = "Preference Loss"
UNGROUPED_KEYS = {"seed"}
# Scores of the run's test generations (scores.json): key -> name in tables; qa's "f1" is its token F1.
TEST_SCORES = {"accuracy": "test accuracy", "macro_f1": "test macro F1", "f1": "test F1"}
SCORES_FILE = "scores.json"


def is_task_score(column: str) -> bool:
    return column in HEADLINE_SCORES or column.startswith("F1 ")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a torn last line (a run killed while writing it) is left out."""
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise UserError(f"{path}:{i} is not valid JSON; a metrics file holds one JSON object per line.") from None
        if not isinstance(row, dict) or not isinstance(row.get(STEP), int):
            raise UserError(f"{path}:{i} is not a metrics record (a JSON object with an integer 'Step').")
        if PREFERENCE_LOSS in row and LOSS not in row:
            row[LOSS] = row[PREFERENCE_LOSS]
        rows.append(row)
    return rows


def by_step(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step (the later one), in step order."""
    last: dict[int, dict[str, Any]] = {}
    for row in rows:
        last[row[STEP]] = row
    return [last[s] for s in sorted(last)]


@dataclass(kw_only=True)
class RunMetrics:
    train: list[dict[str, Any]]
    valid: list[dict[str, Any]]

    def series(self, split: str, column: str) -> tuple[list[int], list[float]]:
        rows = [r for r in (self.train if split == "train" else self.valid) if isinstance(r.get(column), (int, float))]
        return [r[STEP] for r in rows], [float(r[column]) for r in rows]

    def grad_groups(self) -> list[str]:
        """The parameter groups' norm columns (grad_stats=true), in the order the run published them."""
        return list(dict.fromkeys(k for r in self.train for k in r if k.startswith(GRAD_GROUP) and k != GRAD_NORM))

    def task_scores(self) -> list[str]:
        """The task scores the validations produced, headline scores first."""
        found = {k for r in self.valid for k in r if is_task_score(k)}
        return [k for k in HEADLINE_SCORES if k in found] + sorted(found - set(HEADLINE_SCORES))


def read_run_metrics(out_dir: Path) -> RunMetrics:
    """Both metrics files of a run; a missing one reads as no records."""
    train, valid = out_dir / TRAIN_METRICS, out_dir / VALID_METRICS
    return RunMetrics(
        train=by_step(read_jsonl(train)) if train.is_file() else [],
        valid=by_step(read_jsonl(valid)) if valid.is_file() else [],
    )


@dataclass(kw_only=True)
class RunSummary:
    name: str
    path: Path
    config: dict[str, Any]
    """lmtune.yaml, flattened to dotted keys."""
    metrics: RunMetrics
    steps: int
    train_loss: float | None
    tokens_per_second: float | None
    wall_time: float | None
    final: dict[str, float] = field(default_factory=dict)
    """Valid loss and task scores at the last validation, by column (NLL Loss, Accuracy, ...)."""
    best: dict[str, float] = field(default_factory=dict)
    """The best value of each over the validations."""
    early_stop_step: int | None = None
    test: dict[str, float] = field(default_factory=dict)
    """Test scores from scores.json, by key (accuracy, macro_f1, f1)."""
    test_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Their 95% bootstrap intervals, where scores.json has them."""


def find_scores_file(run: Path) -> Path | None:
    """RUN/scores.json, else the one in a directory inside the run (the first by name, with a warning, when several)."""
    if (run / SCORES_FILE).is_file():
        return run / SCORES_FILE
    found = sorted(run.glob(f"*/{SCORES_FILE}"))
    if len(found) > 1:
        print(f"lmtune: warning: run {run} has {len(found)} scores files ({', '.join(str(p.relative_to(run)) for p in found)}); its test columns show {found[0].relative_to(run)}", file=sys.stderr)
    return found[0] if found else None


def read_test_scores(run: Path) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The headline scores of the run's scores.json and their intervals; none when it has none."""
    path = find_scores_file(run)
    if path is None:
        return {}, {}
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as ex:
        raise UserError(f"{path}: not valid JSON ({ex.msg} at line {ex.lineno}); rewrite it with `lmtune score` or remove it.") from None
    if not isinstance(scores, dict):
        raise UserError(f"{path}: not a scores file (a JSON object as lmtune generate writes).")
    intervals = scores.get("confidence_intervals")
    intervals = intervals if isinstance(intervals, dict) else {}
    values, bounds = {}, {}
    for key in TEST_SCORES:
        if isinstance(scores.get(key), (int, float)):
            values[key] = float(scores[key])
            iv = intervals.get(key)
            if isinstance(iv, list) and len(iv) == 2:
                bounds[key] = (float(iv[0]), float(iv[1]))
    return values, bounds


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_config(run: Path) -> dict[str, Any]:
    import yaml

    path = run / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as ex:
        mark = getattr(ex, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where} is not valid YAML; it should be the effective config lmtune writes for a run.") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a YAML mapping of config keys; it should be the effective config lmtune writes for a run.")
    return flatten(config)


def summarize_run(run: Path, name: str) -> RunSummary:
    metrics = read_run_metrics(run)
    if not metrics.train:
        raise UserError(f"run {run} has no training metrics ({run / TRAIN_METRICS} is missing or empty); has it trained a step yet?")
    last = metrics.train[-1]
    rates = [float(r[TOKENS_PER_SECOND]) for r in metrics.train if isinstance(r.get(TOKENS_PER_SECOND), (int, float))]
    if len(rates) > 1:
        rates = rates[1:]
    wall = last.get("Total Time", last.get("Wall Time"))
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for column in [LOSS, *metrics.task_scores()]:
        _, values = metrics.series("valid", column)
        if values:
            final[column] = values[-1]
            best[column] = min(values) if column == LOSS else max(values)
    stop = read_early_stop(run)
    test, test_intervals = read_test_scores(run)
    return RunSummary(
        name=name,
        path=run,
        config=read_config(run),
        metrics=metrics,
        steps=last[STEP],
        train_loss=float(last[LOSS]) if isinstance(last.get(LOSS), (int, float)) else None,
        tokens_per_second=statistics.fmean(rates) if rates else None,
        wall_time=float(wall) if isinstance(wall, (int, float)) else None,
        final=final,
        best=best,
        early_stop_step=stop.get("step") if stop else None,
        test=test,
        test_intervals=test_intervals,
    )


# ---------------------------------------------------------------- finding runs


def is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def is_sweep(path: Path) -> bool:
    return not is_run(path) and ((path / SWEEP_FILE).is_file() or (path / SWEEP_RUNS).is_dir())


def sweep_runs(sweep: Path) -> list[Path]:
    """The sweep's run directories: in sweep.yaml's order, then any others under runs/ by name."""
    import yaml

    listed: list[str] = []
    if (sweep / SWEEP_FILE).is_file():
        try:
            spec = yaml.safe_load((sweep / SWEEP_FILE).read_text()) or {}
        except yaml.YAMLError:
            spec = {}
        runs = spec.get("runs") if isinstance(spec, dict) else None
        listed = [r["name"] for r in runs or [] if isinstance(r, dict) and isinstance(r.get("name"), str)]
    root = sweep / SWEEP_RUNS
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [root / name for name in dict.fromkeys(listed + found)]


def find_runs(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """(name, directory) of every run the paths name, a sweep expanded to its runs.

    A run named directly must have metrics (summarize_run says so); a sweep's runs that have not
    started or trained a step yet are left out with a warning, so a sweep can be reported while it runs.
    """
    found: list[Path] = []
    for path in paths:
        if is_run(path):
            found.append(path)
        elif is_sweep(path):
            runs = sweep_runs(path)
            ready = [r for r in runs if is_run(r) and (r / TRAIN_METRICS).is_file() and (r / TRAIN_METRICS).stat().st_size > 0]
            if not ready:
                raise UserError(f"sweep {path} has no run with training metrics yet (looked in {path / SWEEP_RUNS}).")
            waiting = [r.name for r in runs if r not in ready]
            if waiting:
                print(f"lmtune: warning: {len(waiting)} run(s) of sweep {path} have no training metrics yet and are left out: {', '.join(waiting)}", file=sys.stderr)
            found += ready
        elif not path.exists():
            raise UserError(f"{path} does not exist; give a run directory (with {CONFIG_FILE}) or a sweep directory (with {SWEEP_FILE}).")
        else:
            raise UserError(f"{path} is neither a run directory (no {CONFIG_FILE}) nor a sweep directory (no {SWEEP_FILE} or {SWEEP_RUNS}/).")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    originals = {p.resolve(): p for p in found}
    names = [p.name for p in unique]
    if len(set(names)) < len(names):  # two runs of the same name (two sweeps): name them by their paths
        names = [str(originals[p]) for p in unique]
    return [(name, originals[p]) for name, p in zip(names, unique)]


# ---------------------------------------------------------------- groups over seeds


@dataclass(kw_only=True)
class Group:
    label: str
    """A short name for tables and legends: its settings, or when those are long its run's name (or group N)."""
    settings: str
    """The group's values of the keys that differ between groups: learning_rate=1e-05,packing=False."""
    runs: list[RunSummary]


MAX_LABEL = 48  # longer settings (runs that differ in many keys) are named in report.md instead


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every config (a key some lack counts), seed left out."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    missing = object()
    return [k for k in keys if k not in UNGROUPED_KEYS and len({_value_text(c.get(k, missing)) for c in configs}) > 1]


def group_runs(runs: Sequence[RunSummary]) -> tuple[list[str], list[Group]]:
    """The keys runs are grouped by, and the groups in the order of their first run."""
    keys = differing_keys([r.config for r in runs])
    groups: dict[tuple[str, ...], list[RunSummary]] = {}
    for run in runs:
        groups.setdefault(tuple(_value_text(run.config.get(k)) for k in keys), []).append(run)
    if not keys:
        return keys, [Group(label=runs[0].name if len(runs) == 1 else "all runs", settings="", runs=list(runs))]
    named = []
    for i, (values, members) in enumerate(groups.items(), 1):
        settings = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        label = settings if len(settings) <= MAX_LABEL else members[0].name if len(members) == 1 else f"group {i}"
        named.append(Group(label=label, settings=settings, runs=members))
    return keys, named


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1); None for one value."""
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
