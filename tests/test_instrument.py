"""warmup_ratio, grad_stats, the memory figures and the profiler (lmtune.training.instruments):
numbers against a reference (a hand-computed warmup, torch's own norms, fairseq2's grad_norm),
and losses unchanged by any of them."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_user_error, run_lmtune_in_process
from lmtune.training.grad_stats import gradient_stats, parameter_group
from lmtune.training.memory_stats import peak_rss_bytes
from tiny_builders import float64_model, tiny_llama, tiny_qwen3

pytestmark = pytest.mark.slow  # trains runs with the instruments on and off

STEPS, RATIO, LR = 8, 0.3, 3e-3  # tiny_gsm8k's learning_rate
RUN = [
    "--config-file", "tiny_gsm8k", "--config", f"max_num_steps={STEPS}", "publish_metrics_every_n_steps=1",
    f"checkpoint_every_n_steps={STEPS}", "tensorboard=false",
]  # fmt: skip
INSTRUMENTED = [
    f"warmup_ratio={RATIO}", "lr_scheduler.num_warmup_steps=0", "grad_stats=true",
    "profiler.enabled=true", "profiler.skip_n_steps=1", "profiler.num_warmup_steps=1", "profiler.num_active_steps=2",
]  # fmt: skip
WARMUP = math.ceil(RATIO * STEPS)  # 3: the documented rounding
PLAIN = [f"lr_scheduler.num_warmup_steps={WARMUP}"]


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    done = {}
    for name, extra in (("instrumented", INSTRUMENTED), ("plain", PLAIN)):
        out = tmp_path_factory.mktemp(name) / "out"
        r = run_lmtune_in_process("instruction_finetune", str(out), *RUN, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        done[name] = (out, r)
    return done


def test_warmup_ratio_is_the_hand_computed_linear_warmup(runs) -> None:  # type: ignore[no-untyped-def]
    rows = _rows(runs["instrumented"][0])
    assert [row["Step"] for row in rows] == list(range(1, STEPS + 1))
    # fairseq2's linear warmup from 0: step s (1-based) trains at LR * (s - 1) / WARMUP, then the cosine starts at LR.
    expected = [LR * (s - 1) / WARMUP for s in range(1, WARMUP + 1)] + [LR]
    assert [row["Learning Rate"] for row in rows[: WARMUP + 1]] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rows[WARMUP + 1]["Learning Rate"] < LR  # decaying after


def test_no_instrument_changes_the_losses(runs) -> None:  # type: ignore[no-untyped-def]
    instrumented, plain = _rows(runs["instrumented"][0]), _rows(runs["plain"][0])
    # grad_stats and the profiler on, warmup_ratio for num_warmup_steps: bit-identical losses and learning rates.
    assert [r["NLL Loss"] for r in instrumented] == [r["NLL Loss"] for r in plain]
    assert [r["Learning Rate"] for r in instrumented] == [r["Learning Rate"] for r in plain]
    assert [r["Gradient Norm"] for r in instrumented] == [r["Gradient Norm"] for r in plain]
    assert not any(k.startswith(("grad_norm/", "grad/")) for r in plain for k in r)


def test_grad_stats_total_is_fairseq2s_norm_and_the_groups_combine_to_it(runs) -> None:  # type: ignore[no-untyped-def]
    groups = {"embed", "layer_0/attn", "layer_0/ffn", "layer_1/attn", "layer_1/ffn", "final_norm"}  # tiny_llama ties its head
    for row in _rows(runs["instrumented"][0]):
        total = row["grad_norm/total"]
        # Published every step, fairseq2's Gradient Norm (the interval's mean, before clipping) is this step's.
        assert total == pytest.approx(row["Gradient Norm"], rel=1e-6)
        found = {k.removeprefix("grad_norm/") for k in row if k.startswith("grad_norm/")} - {"total"}
        assert found == groups, found
        assert math.sqrt(sum(row[f"grad_norm/{g}"] ** 2 for g in groups)) == pytest.approx(total, rel=1e-12)
        assert row["grad/min"] < row["grad/mean"] < row["grad/max"] and row["grad/std"] > 0


def test_every_run_publishes_its_peak_rss(runs) -> None:  # type: ignore[no-untyped-def]
    for out, _ in runs.values():
        peaks = [r["memory/peak_rss_bytes"] for r in _rows(out)]
        assert peaks == sorted(peaks) and 2**27 < peaks[0] < 2**36  # a lifetime peak: never down
        assert (out / "plots/memory.png").is_file()
    assert (runs["instrumented"][0] / "plots/grad_norm.png").is_file()
    assert not (runs["plain"][0] / "plots/grad_norm.png").exists()


def test_console_shows_the_norm_and_the_peak_memory(runs) -> None:  # type: ignore[no-untyped-def]
    out, r = runs["instrumented"]
    rows = {row["Step"]: row for row in _rows(out)}
    lines = r.stderr.splitlines()
    shown = [re.match(r"^step +(\d+)/8  .*  gnorm (\S+)  rss (\d+\.\d\d) GiB  eta", line) for line in lines]
    shown = [m for m in shown if m]
    assert [int(m.group(1)) for m in shown] == list(rows)
    assert [m.group(2) for m in shown] == [f"{rows[s]['grad_norm/total']:.3g}" for s in rows]
    last = rows[STEPS]["memory/peak_rss_bytes"] / 2**30
    assert lines[-1].endswith(f"; peak RSS {last:.2f} GiB"), lines[-1]


def test_profiler_writes_a_chrome_trace_and_prints_the_top_operators(runs) -> None:  # type: ignore[no-untyped-def]
    out, r = runs["instrumented"]
    traces = sorted((out / "profile").glob("*.pt.trace.json"))
    assert [t.name for t in traces] == ["rank_0.cycle_1.pt.trace.json"]
    trace = json.loads(traces[0].read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::mm" in names and {"step_3", "step_4"} <= names  # the two active steps after skip 1, warmup 1
    lines = r.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"profiler: cycle 1 traced into {traces[0]}"))
    assert re.match(r"^  operator +self ms +share +calls$", lines[at + 1]), lines[at + 1]
    table = [re.match(r"^  (\S.*?) +(\d+\.\d\d) +(\d+\.\d)% +(\d+)$", line)  # a key may hold spaces ("autograd::engine::evaluate_function: ...")
              for line in lines[at + 2 : at + 12]]
    assert all(table), lines[at : at + 12]
    self_ms = [float(m.group(2)) for m in table]  # type: ignore[union-attr]
    assert self_ms == sorted(self_ms, reverse=True)
    assert not (runs["plain"][0] / "profile").exists()


def test_gradient_stats_equal_torchs_own_computation() -> None:
    model = float64_model(tiny_llama)  # untied: it has a head
    gen = torch.Generator().manual_seed(0)
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * (i + 1) + 0.01 * i
    grads = [p.grad for p in model.parameters()]
    stats = gradient_stats(model.named_parameters())
    entries = torch.cat([g.flatten() for g in grads])  # type: ignore[union-attr]
    assert stats["grad_norm/total"] == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-12)  # type: ignore[arg-type]
    assert stats["grad/mean"] == pytest.approx(entries.mean().item(), rel=1e-9)
    assert stats["grad/std"] == pytest.approx(entries.std(correction=0).item(), rel=1e-9)
    assert (stats["grad/min"], stats["grad/max"]) == (entries.min().item(), entries.max().item())
    by_group: dict[str, float] = {}
    for name, p in model.named_parameters():
        by_group[parameter_group(name)] = by_group.get(parameter_group(name), 0.0) + p.grad.square().sum().item()  # type: ignore[union-attr]
    assert set(by_group) == {"embed", "layer_0/attn", "layer_0/ffn", "layer_1/attn", "layer_1/ffn", "final_norm", "head"}
    for group, square in by_group.items():
        assert stats[f"grad_norm/{group}"] == pytest.approx(math.sqrt(square), rel=1e-12)
    model.zero_grad(set_to_none=True)
    assert gradient_stats(model.named_parameters()) == {}


def test_parameter_groups_of_qwen_and_of_wrapped_models() -> None:
    names = [n for n, _ in float64_model(tiny_qwen3).named_parameters()]
    assert "other" not in {parameter_group(n) for n in names}, names
    assert parameter_group("decoder.layers.1.self_attn.q_norm.weight") == "layer_1/attn"
    assert parameter_group("module.decoder.layers.0.ffn.gate_proj.weight") == "layer_0/ffn"  # DDP's prefix
    assert parameter_group("_orig_mod.decoder.layers.0.self_attn.q_proj.lora_A") == "layer_0/attn"  # compiled, LoRA
    assert parameter_group("decoder_frontend.embed.weight") == "embed"
    assert parameter_group("decoder.layer_norm.weight") == "final_norm"
    assert parameter_group("final_proj.weight") == "head"


def test_peak_rss_is_the_kernels_high_water_mark() -> None:
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    assert peak_rss_bytes() == pytest.approx(int(hwm.split()[1]) * 1024, rel=0.01)


@pytest.mark.parametrize(
    ("verb", "args", "fragment"),
    [
        ("instruction_finetune", ["warmup_ratio=1.0"], "'warmup_ratio' must be at least 0 and below 1"),
        ("instruction_finetune", ["warmup_ratio=0.1", "lr_scheduler.num_warmup_steps=5"], "both set the warmup"),
        ("pretrain", ["warmup_ratio=-0.1"], "'warmup_ratio' must be at least 0 and below 1"),
        ("instruction_finetune", ["profiler.num_active_steps=0"], "'profiler.num_active_steps' must be at least 1"),
    ],
)
def test_bad_instrument_keys_are_one_sentence(tmp_path: Path, verb: str, args: list[str], fragment: str) -> None:
    out = tmp_path / "out"
    r = run_lmtune_in_process(verb, str(out), "--config", "model=tiny_llama", "dataset=tiny_gsm8k", *args)
    assert_user_error(r, fragment)
    assert not (out / "checkpoints").exists()


def test_switching_instruments_on_when_resuming_keeps_the_run(runs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Nothing of theirs is in the checkpoints: a run started without them continues with them.
    out = tmp_path / "out"
    shutil.copytree(runs["plain"][0], out)
    r = run_lmtune_in_process("instruction_finetune", str(out), *RUN, *PLAIN, f"max_num_steps={STEPS + 2}", "grad_stats=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {STEPS}" in r.stderr
    rows = {row["Step"]: row for row in _rows(out)}
    assert sorted(rows) == list(range(1, STEPS + 3))
    assert all(("grad_norm/total" in rows[s]) == (s > STEPS) for s in rows)
    assert rows[STEPS + 2]["grad_norm/total"] == pytest.approx(rows[STEPS + 2]["Gradient Norm"], rel=1e-6)


def test_pretrain_takes_the_same_keys(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = "the cat dog sat on a mat and ran to big red blue house tree sun moon".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "\n\n" for _ in range(60)))
    out = tmp_path / "out"
    steps, lr = 6, 3e-3
    r = run_lmtune_in_process(
        "pretrain", str(out), "--config", "model=tiny_llama", "init=random", f"dataset={corpus}", "max_seq_len=64", "batch_size=4",
        f"max_num_steps={steps}", f"learning_rate={lr}", "publish_metrics_every_n_steps=1", f"checkpoint_every_n_steps={steps}",
        "tensorboard=false", "warmup_ratio=0.5", "grad_stats=true",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    # pretrain's default lr_scheduler.num_warmup_steps (100) gives way to warmup_ratio: ceil(0.5 * 6) = 3 steps.
    assert [row["Learning Rate"] for row in rows[:4]] == pytest.approx([0.0, lr / 3, 2 * lr / 3, lr], rel=1e-12, abs=1e-15)
    for row in rows:
        assert row["grad_norm/total"] == pytest.approx(row["Gradient Norm"], rel=1e-6)
        groups = [v for k, v in row.items() if k.startswith("grad_norm/") and k != "grad_norm/total"]
        assert math.sqrt(sum(v * v for v in groups)) == pytest.approx(row["grad_norm/total"], rel=1e-12)
        assert row["memory/peak_rss_bytes"] > 0


def test_under_fsdp_the_statistics_cover_the_whole_model(tmp_path: Path) -> None:
    # Each rank holds a shard of every gradient: lmtune reduces its sums over the ranks, as
    # fairseq2 does for its own grad norm.
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    cmd = [
        str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m", "lmtune",
        "instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=3", "publish_metrics_every_n_steps=1",
        "lr_scheduler.num_warmup_steps=1", "tensorboard=false", "data_parallelism=fsdp", "grad_stats=true",
    ]  # fmt: skip
    r = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert [row["Step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert row["grad_norm/total"] == pytest.approx(row["Gradient Norm"], rel=1e-6)
        groups = [v for k, v in row.items() if k.startswith("grad_norm/") and k != "grad_norm/total"]
        assert len(groups) == 6 and math.sqrt(sum(v * v for v in groups)) == pytest.approx(row["grad_norm/total"], rel=1e-12)


def test_report_draws_the_norm_and_the_memory(runs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from lmtune.report.plots import panel_pixels

    r = run_lmtune_in_process("report", str(runs["instrumented"][0]), str(runs["plain"][0]), "--output", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr[-3000:]
    plots = tmp_path / "report/plots"
    assert Image.open(plots / "grad_norm.png").size == panel_pixels(1)
    assert Image.open(plots / "memory.png").size == panel_pixels(1)  # peak RSS only: no GPU here
