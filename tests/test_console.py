"""What a training run shows on the console: a header, compact progress lines (off a
terminal) whose numbers are OUT/metrics' numbers, one line per validation, checkpoint and
resume, a summary; fairseq2's full log still in OUT/logs, and on the console with --verbose.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import metric_rows, run_lmtune
from lmtune.options.finetune import FinetuneOptions
from lmtune.training.console import (
    RunConsole,
    _drop_fairseq2_deprecations,
    clock,
    step_stats,
)
from lmtune.training.valid_metrics import valid_metrics
from lmtune.training.validation_plan import ValidationPlan

RUN = [
    "--config-file", "tiny_gsm8k", "--config", "max_num_steps=20", "publish_metrics_every_n_steps=5", "checkpoint_every_n_steps=10",
    "lr_scheduler.num_warmup_steps=5", "tensorboard=false", "valid_dataset=tiny_gsm8k", "validate_every_n_steps=10",
    "max_eval_examples=8", "eval_max_gen_len=16",
]  # fmt: skip
STEP = re.compile(r"^step +(\d+)/20  loss (\d+\.\d{3})  lr (\d\.\de-\d\d)  tok/s ([\d,]+)  eta \d+:\d\d$")
VALID = re.compile(r"^validation at step (\d+): loss (\d+\.\d{3})  accuracy (\d\.\d{3})$")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("console") / "out"
    r = run_lmtune("instruction_finetune", str(out), *RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.mark.slow
def test_console_lines_carry_the_metrics_files_numbers(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, r = run
    lines = r.stderr.splitlines()
    assert len(lines) < 16, r.stderr
    assert lines[0] == f"lmtune: fine-tuning tiny_llama on tiny_gsm8k for 20 steps, validating on tiny_gsm8k every 10 steps, into {out} (fairseq2's full log: {out}/logs)"
    train = metric_rows(out)
    steps = [m for m in map(STEP.match, lines) if m]
    assert [int(m.group(1)) for m in steps] == [row["Step"] for row in train] == [5, 10, 15, 20]
    assert [m.group(2) for m in steps] == [f"{row['NLL Loss']:.3f}" for row in train]
    assert [m.group(3) for m in steps] == [f"{row['Learning Rate']:.1e}" for row in train]
    assert [m.group(4) for m in steps] == [f"{row['Elements per Second']:,.0f}" for row in train]
    valid = metric_rows(out, "valid")
    shown = [m for m in map(VALID.match, lines) if m]
    assert [int(m.group(1)) for m in shown] == [row["Step"] for row in valid] == [10, 20]
    assert [(m.group(2), m.group(3)) for m in shown] == [(f"{row['NLL Loss']:.3f}", f"{row['Accuracy']:.3f}") for row in valid]
    # A checkpoint's line follows its step's line (fairseq2 saves before it publishes the step's metrics).
    for step in (10, 20):
        saved = lines.index(f"checkpoint saved: {out}/checkpoints/step_{step}")
        assert STEP.match(lines[saved - 1]) or VALID.match(lines[saved - 1]), lines
        assert any(STEP.match(line) and line.startswith(f"step {step}/") for line in lines[:saved])
    summary = lines[-1]
    assert summary.startswith("lmtune: trained 20 steps in "), summary
    assert f"loss {train[0]['NLL Loss']:.3f} -> {train[-1]['NLL Loss']:.3f}; checkpoints in {out}/checkpoints, metrics in {out}/metrics" in summary
    # The data's one event: tiny_gsm8k's training file encoded into the shared cache (its validation file is the test split).
    encoded = [line for line in lines if line.startswith("lmtune: encoded ")]
    assert len(encoded) == 2 and all((Path(line.split(" -> ")[1]) / "fingerprint.json").is_file() for line in encoded), lines
    # Under the header, the precision and why (lmtune.precision): what auto picks for tiny_llama on this machine.
    from lmtune.precision import choose_precision

    expected = choose_precision("auto", "cpu", 128, warn=False)
    what = "float32" if expected.dtype == "float32" else "bf16 autocast over float32 weights"
    assert lines[1].startswith(f"lmtune: precision: {what} (dtype=auto; "), lines  # the rates after it are measured per run
    assert lines.index(encoded[0]) == 2, lines  # right after the header's lines, before the first step
    # Nothing else: no config dump, no module tree, no metric blocks, no deprecation warnings.
    others = [line for line in lines[2:-1] if not (STEP.match(line) or VALID.match(line) or line.startswith("checkpoint saved: ") or line in encoded)]
    assert all(line.startswith(("fairseq2: warning: ", "lmtune: warning: ")) for line in others), others
    assert "DeprecationWarning" not in r.stderr and "hg_exporter" not in r.stderr


@pytest.mark.slow
def test_fairseq2s_full_log_still_goes_to_out_logs(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    log = (out / "logs/rank_0.log").read_text()
    for expected in ["Config: {", "Model (rank 0) - Parameter Size", "Train Metrics (step 5) - NLL Loss", "Validation Metrics (step 10)",
                     "Checkpoint at step 10 saved.", "Task finished in"]:  # fmt: skip
        assert expected in log, expected
    assert len(log.splitlines()) > 200


@pytest.mark.slow
def test_resume_and_a_finished_run(run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    longer = [*RUN, "max_num_steps=25"]
    r = run_lmtune("instruction_finetune", str(out), *longer)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert f"resuming from step 20 ({out}/checkpoints/step_20)" in lines, lines
    assert any(line.startswith("step 25/25  loss ") for line in lines), lines
    assert lines[-1].startswith("lmtune: trained steps 21-25 in "), lines[-1]
    again = run_lmtune("instruction_finetune", str(out), *longer)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.splitlines()[-1] == f"lmtune: no steps to train: the run is already at step 25; checkpoints in {out}/checkpoints, metrics in {out}/metrics"


@pytest.mark.slow
def test_verbose_shows_fairseq2s_log(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_lmtune("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--verbose", "--config", "max_num_steps=4",
                   "publish_metrics_every_n_steps=2", "checkpoint_every_n_steps=4", "tensorboard=false")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for expected in ["fairseq2 - Config: {", "Train Metrics (step 2)", "Model (rank 0)"]:
        assert expected in r.stderr, expected
    assert "\nlmtune: fine-tuning tiny_llama on tiny_gsm8k for 4 steps, into " in r.stderr
    assert r.stderr.splitlines()[-1].startswith("lmtune: trained 4 steps in ")
    assert not re.search(r"^step 2/4", r.stderr, re.M)  # fairseq2's metric blocks instead
    assert "DeprecationWarning" not in r.stderr


# ---------------------------------------------------------------- in process, no training


def _options() -> FinetuneOptions:
    return FinetuneOptions(model="m", dataset="d", max_num_steps=4, publish_metrics_every_n_steps=2)


def _train_values(loss: float) -> dict[str, object]:
    return {"nll_loss": loss, "lr": [3e-4], "elements_per_second": 12345.4, "grad_norm": 1.0}


def _drive(console: RunConsole) -> None:
    console.header(_options(), Path("/o"), ValidationPlan(task="gsm8k", metrics=valid_metrics("gsm8k", None)), 2, validates=False)
    for step in range(1, 5):
        console.step(step)
        if step % 2 == 0:
            if step == 4:
                console.checkpoint_saved(4)  # before the step's metrics, as fairseq2 does
            console.record("train", _train_values(2.0 / step), step)
    console.record("valid", {"nll_loss": 0.25, "accuracy": 0.5, "eval_examples": 8.0}, 4)
    console.summary()


def test_formats() -> None:
    assert (clock(41), clock(725), clock(3723)) == ("0:41", "12:05", "1:02:03")
    assert step_stats(_train_values(1.23449)) == "loss 1.234  lr 3.0e-04  tok/s 12,345"


def test_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    _drive(RunConsole(stream=stream))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "lmtune: fine-tuning m on d for 4 steps, into /o (fairseq2's full log: /o/logs)"
    assert re.fullmatch(r"step 2/4  loss 1\.000  lr 3\.0e-04  tok/s 12,345  eta \d:\d\d", lines[1]), lines
    assert re.fullmatch(r"step 4/4  loss 0\.500  lr 3\.0e-04  tok/s 12,345  eta 0:00", lines[2]), lines
    assert lines[3:5] == ["checkpoint saved: /o/checkpoints/step_4", "validation at step 4: loss 0.250  accuracy 0.500"]
    assert re.fullmatch(r"lmtune: trained 4 steps in \d+ s, loss 1\.000 -> 0\.500; checkpoints in /o/checkpoints, metrics in /o/metrics", lines[5]), lines
    assert len(lines) == 6


def test_a_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    _drive(RunConsole(stream=stream))
    text = stream.getvalue()
    assert "loss 0.500  lr 3.0e-04  tok/s 12,345" in text  # in the bar
    assert "checkpoint saved: /o/checkpoints/step_4" in text and "validation at step 4: loss 0.250" in text
    assert not re.search(r"^step 2/4  loss", text, re.M)  # no compact lines
    # After the bar is erased; the seconds are wall time (1 s on a busy machine), as in the test above.
    assert re.search(r"lmtune: trained 4 steps in \d+ s, loss 1\.000 -> 0\.500; checkpoints in /o/checkpoints, metrics in /o/metrics$", text.rstrip().splitlines()[-1])


def test_few_lines_for_a_caller_with_its_own_curve() -> None:
    stream = io.StringIO()
    console = RunConsole(stream=stream, max_step_lines=6)
    console.header(FinetuneOptions(model="m", dataset="d", max_num_steps=600), Path("/o"), ValidationPlan(), 25, validates=False)
    for step in range(25, 601, 25):
        console.step(step)
        console.record("train", _train_values(1.0), step)
    assert [line.split()[1] for line in stream.getvalue().splitlines()[1:]] == ["100/600", "200/600", "300/600", "400/600", "500/600", "600/600"]


def test_other_ranks_print_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    stream = io.StringIO()
    _drive(RunConsole(stream=stream))
    assert stream.getvalue() == ""


def test_only_fairseq2s_own_deprecation_warnings_are_dropped() -> None:
    import fairseq2

    shown: list[str] = []
    show = _drop_fairseq2_deprecations(lambda message, *rest: shown.append(str(message)))
    inside = str(Path(fairseq2.__file__).parent / "composition/models.py")
    show(DeprecationWarning("`hg_exporter` is deprecated"), DeprecationWarning, inside, 201)
    show(UserWarning("yours"), UserWarning, inside, 1)
    show(DeprecationWarning("elsewhere"), DeprecationWarning, "/somewhere/else.py", 1)
    assert shown == ["yours", "elsewhere"]
