"""`lmtune report` and the plots of a run.

Most runs here are written by the test with known values (lmtune.yaml, metrics/train.jsonl,
metrics/valid.jsonl), so every number in the table is checked against a hand computation
from those records; one real tiny training checks that OUT/plots/ is drawn when training ends.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from helpers import assert_user_error, metric_rows, run_lmtune_in_process

LRS, SEEDS = [1e-05, 2e-05], [42, 1337, 7]
TRAIN_STEPS, VALID_STEPS = [5, 10, 15, 20, 25, 30], [10, 20, 30]
LABELS = ["no", "yes"]


def config(lr: float, seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny_llama", "dataset": "data", "learning_rate": lr, "seed": seed, "max_num_steps": 30,
        "optimizer": {"weight_decay": 0.1, "betas": [0.9, 0.95]}, "early_stopping": {"metric": "valid.accuracy", "patience": 3},
        **extra,
    }  # fmt: skip


def records(lr: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and valid records with values drawn from a generator seeded by the run."""
    rng = random.Random(f"{lr}/{seed}")
    train = [
        {"Step": s, "NLL Loss": rng.uniform(0.5, 4.0), "Learning Rate": lr * s / 30, "Elements per Second": rng.uniform(800, 1200),
         "Wall Time": 2.0 * s, "Total Time": 2.0 * s + rng.uniform(0, 50), "Number of Target Elements": 100.0}
        for s in TRAIN_STEPS
    ]  # fmt: skip
    valid = []
    for s in VALID_STEPS:
        f1 = {f"F1 {label}": rng.uniform(0, 1) for label in LABELS}
        valid.append({"Step": s, "NLL Loss": rng.uniform(0.5, 3.0), "Accuracy": rng.uniform(0, 1), "Macro F1": sum(f1.values()) / 2, **f1, "Eval Examples": 16.0})
    return train, valid


def write_run(out: Path, cfg: dict[str, Any], train: list[dict[str, Any]], valid: list[dict[str, Any]] | None = None) -> Path:
    (out / "metrics").mkdir(parents=True)
    (out / "lmtune.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (out / "metrics/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    if valid is not None:
        (out / "metrics/valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in valid))
    return out


def write_sweep(root: Path) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """A sweep laid out as `lmtune sweep` lays it out: sweep.yaml and runs/<name>/."""
    runs = [{"name": f"learning_rate={lr},seed={seed}", "overrides": {"learning_rate": lr, "seed": seed}} for lr in LRS for seed in SEEDS]
    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({"grid": {"learning_rate": LRS, "seed": SEEDS}, "runs": runs}))
    made = {}
    for r in runs:
        lr, seed = r["overrides"]["learning_rate"], r["overrides"]["seed"]
        made[r["name"]] = records(lr, seed)
        write_run(root / "runs" / r["name"], config(lr, seed), *made[r["name"]])
    return made


# ---------------------------------------------------------------- hand computations


def hand_mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def hand_std(xs: list[float]) -> float:
    m = hand_mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def hand_run(train: list[dict[str, Any]], valid: list[dict[str, Any]]) -> list[float]:
    """steps, train loss, valid loss, best, accuracy, best, macro F1, best, tokens/s, wall time: as the README defines them."""
    last = train[-1]
    rates = [r["Elements per Second"] for r in train][1:]  # the first window (warmup) left out
    row = [last["Step"], last["NLL Loss"], valid[-1]["NLL Loss"], min(r["NLL Loss"] for r in valid)]
    for score in ("Accuracy", "Macro F1"):
        row += [valid[-1][score], max(r[score] for r in valid)]
    return row + [sum(rates) / len(rates), last["Total Time"]]


DIGITS = [None, 4, 4, 4, 4, 4, 4, 4, 0, 1]
HEADER = ["group", "runs", "steps", "train loss", "valid loss", "best valid loss", "accuracy", "best accuracy", "macro F1", "best macro F1", "tokens/s", "wall time (s)"]


def fmt(x: float, digits: int | None) -> str:
    return f"{x:.0f}" if digits is None and x == round(x) else f"{x:.{1 if digits is None else digits}f}"


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[: lines.index(next(x for x in lines if x.startswith("wrote ")))]]


# ---------------------------------------------------------------- tables


def test_a_sweep_table_is_the_mean_and_std_over_seeds_of_each_setting(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    made = write_sweep(sweep)
    result = run_lmtune_in_process("report", str(sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert rows[0] == HEADER
    assert [r[0] for r in rows[2:]] == ["learning_rate=1e-05", "learning_rate=2e-05"]  # grouped by the non-seed key only
    for lr, row in zip(LRS, rows[2:]):
        per_run = [hand_run(*made[f"learning_rate={lr},seed={seed}"]) for seed in SEEDS]
        expected = [f"{fmt(hand_mean(col), d)} ± {fmt(hand_std(col), d)}" for col, d in zip(zip(*per_run), DIGITS)]
        assert row == [f"learning_rate={lr}", "3", *expected]
    assert rows[2][2] == "30 ± 0"  # steps

    # report.md holds the same table, the runs one by one, and the plots; written into the sweep by default
    md = (sweep / "report.md").read_text()
    assert "| learning_rate=1e-05 | 3 | " + " | ".join(rows[2][2:]) + " |" in md
    one = made["learning_rate=2e-05,seed=1337"]
    assert "| learning_rate=2e-05,seed=1337 | learning_rate=2e-05 | 1337 | " + " | ".join(fmt(x, d) for x, d in zip(hand_run(*one), DIGITS)) + " | n/a |" in md
    for name in ("loss", "lr", "tokens_per_second", "valid_metrics"):
        assert f"![{name}](plots/{name}.png)" in md
    assert_png(sweep / "plots/loss.png", (1100, 450))  # train and valid panels
    assert_png(sweep / "plots/lr.png", (800, 450))
    assert_png(sweep / "plots/tokens_per_second.png", (800, 450))
    assert_png(sweep / "plots/valid_metrics.png", (1100, 450))  # accuracy and macro F1 panels


def test_runs_are_grouped_by_every_differing_key_nested_ones_dotted(tmp_path: Path) -> None:
    a, b = records(1e-5, 1), records(1e-5, 2)
    write_run(tmp_path / "a", config(1e-5, 1), *a)
    write_run(tmp_path / "b", config(1e-5, 2, early_stopping={"metric": "valid.accuracy", "patience": 5}), *b)
    result = run_lmtune_in_process("report", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    # no group has two runs: plain values, no "±"
    assert rows[2] == ["early_stopping.patience=3", "1", *(fmt(x, d) for x, d in zip(hand_run(*a), DIGITS))]
    assert rows[3] == ["early_stopping.patience=5", "1", *(fmt(x, d) for x, d in zip(hand_run(*b), DIGITS))]
    assert (tmp_path / "cmp/report.md").is_file() and (tmp_path / "cmp/plots/loss.png").is_file()


def test_a_group_of_one_beside_groups_of_several_has_no_std(tmp_path: Path) -> None:
    runs = {}
    for name, lr, seed in [("a1", 1e-5, 1), ("a2", 1e-5, 2), ("b1", 2e-5, 1)]:
        runs[name] = records(lr, seed)
        write_run(tmp_path / name, config(lr, seed), *runs[name])
    result = run_lmtune_in_process("report", *(str(tmp_path / n) for n in runs), "--output", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    train_loss = [runs["a1"][0][-1]["NLL Loss"], runs["a2"][0][-1]["NLL Loss"]]
    assert rows[2][3] == f"{hand_mean(train_loss):.4f} ± {hand_std(train_loss):.4f}"
    assert rows[3][:4] == ["learning_rate=2e-05", "1", "30 ± -", f"{runs['b1'][0][-1]['NLL Loss']:.4f} ± -"]


def test_a_resumed_run_counts_each_step_once_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    train, valid = records(1e-5, 1)
    redone = [dict(r, **{"NLL Loss": r["NLL Loss"] + 1.0}) for r in train[2:]]  # resumed from step 10: 15..30 again
    out = write_run(tmp_path / "run", config(1e-5, 1), train + redone, valid)
    with open(out / "metrics/train.jsonl", "a") as fp:
        fp.write('{"Step": 35, "NLL Lo')  # killed while writing
    (out / "early_stop.json").write_text(json.dumps({"step": 30, "metric": "valid.accuracy"}))
    result = run_lmtune_in_process("report", str(out), "--output", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    kept = train[:2] + redone
    assert table_rows(result.stdout)[2] == ["run", "1", *(fmt(x, d) for x, d in zip(hand_run(kept, valid), DIGITS))]
    assert re.search(r"\| run \| run \| 1 \|.* \| 30 \|\n", (tmp_path / "r/report.md").read_text())  # stopped early at 30


def test_a_sweep_still_running_leaves_out_runs_without_metrics(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    made = write_sweep(sweep)
    waiting = "learning_rate=2e-05,seed=7"
    (sweep / "runs" / waiting / "metrics/train.jsonl").unlink()
    result = run_lmtune_in_process("report", str(sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"1 run(s) of sweep {sweep} have no training metrics yet and are left out: {waiting}" in result.stderr
    row = table_rows(result.stdout)[3]
    losses = [made[f"learning_rate=2e-05,seed={s}"][0][-1]["NLL Loss"] for s in (42, 1337)]
    assert row[:4] == ["learning_rate=2e-05", "2", "30 ± 0", f"{hand_mean(losses):.4f} ± {hand_std(losses):.4f}"]


# ---------------------------------------------------------------- plots


def assert_png(path: Path, size: tuple[int, int]) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()  # checksums and structure
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size, (path, image.size)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, path  # drawn, not blank
    assert matplotlib.image.imread(path).shape[:2] == (size[1], size[0])


def test_run_plots_are_drawn_from_the_metrics_and_a_stale_one_removed(tmp_path: Path) -> None:
    from lmtune.report.plots import write_run_plots

    out = write_run(tmp_path / "run", config(1e-5, 1), *records(1e-5, 1))
    names = [p.name for p in write_run_plots(out)]
    assert names == ["loss.png", "lr.png", "tokens_per_second.png", "valid_metrics.png"]
    for name in names:
        assert_png(out / "plots" / name, (800, 450))
    (out / "metrics/valid.jsonl").unlink()  # rerun without a task
    assert [p.name for p in write_run_plots(out)] == ["loss.png", "lr.png", "tokens_per_second.png"]
    assert not (out / "plots/valid_metrics.png").exists()


def test_a_group_is_drawn_as_its_mean_with_a_min_max_band(tmp_path: Path) -> None:
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    from lmtune.report.plots import _draw_groups
    from lmtune.report.runs import find_runs, group_runs, summarize_run

    made = write_sweep(tmp_path / "sweep")
    _, groups = group_runs([summarize_run(p, n) for n, p in find_runs([tmp_path / "sweep"])])
    ax = Figure().add_subplot()
    _draw_groups(ax, groups, "valid", "Accuracy")
    assert len(ax.lines) == 2 and len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2
    for lr, line, band in zip(LRS, ax.lines, ax.collections):
        per_seed = [[r["Accuracy"] for r in made[f"learning_rate={lr},seed={s}"][1]] for s in SEEDS]
        assert list(line.get_xdata()) == VALID_STEPS
        assert list(line.get_ydata()) == pytest.approx([hand_mean(list(v)) for v in zip(*per_seed)])
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == pytest.approx(min(min(v) for v in per_seed)) and max(ys) == pytest.approx(max(max(v) for v in per_seed))


@pytest.mark.slow
def test_training_writes_its_plots_and_report_reads_the_real_metrics(tmp_path: Path) -> None:
    rng = random.Random(0)
    data = tmp_path / "even"
    data.mkdir()
    for split, n in (("train", 64), ("valid", 16)):
        lines = []
        for _ in range(n):
            k = rng.randint(10, 99)
            lines.append(json.dumps({"src": f"Is {k} even? Answer yes or no.", "tgt": "yes" if k % 2 == 0 else "no"}) + "\n")
        (data / f"{split}.jsonl").write_text("".join(lines))
    out = tmp_path / "out"
    result = run_lmtune_in_process(
        "instruction_finetune", str(out), "--config", "model=tiny_llama", f"dataset={data}", "eval_task=classification",
        "validate_every_n_steps=2", "eval_max_gen_len=4", "max_num_tokens=512", "max_seq_len=64", "tensorboard=false",
        "publish_metrics_every_n_steps=1", "max_num_steps=6", "learning_rate=1e-3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("loss", "lr", "tokens_per_second", "valid_metrics"):
        assert_png(out / "plots" / f"{name}.png", (800, 450))

    report = run_lmtune_in_process("report", str(out), "--output", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr[-3000:]
    train, valid = metric_rows(out), metric_rows(out, "valid")
    assert table_rows(report.stdout)[2] == ["out", "1", *(fmt(x, d) for x, d in zip(hand_run(train, valid), DIGITS))]


# ---------------------------------------------------------------- bad input and --help


def test_a_directory_that_is_neither_a_run_nor_a_sweep(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(run_lmtune_in_process("report", str(tmp_path / "empty")), str(tmp_path / "empty"), "neither a run directory", "nor a sweep")
    assert_user_error(run_lmtune_in_process("report", str(tmp_path / "nope")), str(tmp_path / "nope"), "does not exist")


def test_a_run_without_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "lmtune.yaml").write_text(yaml.safe_dump(config(1e-5, 1)))
    assert_user_error(run_lmtune_in_process("report", str(run)), f"run {run} has no training metrics", "metrics/train.jsonl")
    sweep = tmp_path / "sweep"
    (sweep / "runs/a").mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("grid: {seed: [1]}\n")
    assert_user_error(run_lmtune_in_process("report", str(sweep)), f"sweep {sweep} has no run with training metrics yet")


def test_malformed_metrics_and_an_output_that_is_a_run(tmp_path: Path) -> None:
    train, valid = records(1e-5, 1)
    out = write_run(tmp_path / "run", config(1e-5, 1), train, valid)
    text = (out / "metrics/valid.jsonl").read_text().splitlines()
    (out / "metrics/valid.jsonl").write_text("\n".join([text[0], "{oops", *text[1:]]) + "\n")
    assert_user_error(run_lmtune_in_process("report", str(out), "--output", str(tmp_path / "r")), f"{out / 'metrics/valid.jsonl'}:2", "not valid JSON")
    (out / "metrics/valid.jsonl").write_text("\n".join(text) + "\n")
    assert_user_error(run_lmtune_in_process("report", str(out), "--output", str(out)), f"--output {out} is a run directory")


def test_report_help_imports_neither_matplotlib_nor_torch() -> None:
    code = (
        "import sys\nfrom lmtune.cli import main\n"
        "try:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('matplotlib', 'torch', 'fairseq2') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stdout and "report.md" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
