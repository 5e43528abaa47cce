"""dtype=auto's choice on given devices (a pure function), and real runs in bf16 autocast against float32."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import losses, run_lmtune_in_process
from lmtune.precision import (
    CPU_BF16_MIN_MODEL_DIM,
    CPU_BF16_MIN_MODEL_DIM_GENERATION,
    DeviceFacts,
    cpu_info,
    decide_precision,
)

X86 = {"fpu", "sse2", "avx", "avx2", "fma"}
AVX2_ONLY = DeviceFacts(type="cpu", name="Intel Xeon E5", cpu_flags=frozenset(X86), cpu_capability="AVX2", rates={"float32": 137.0, "bfloat16": 0.3})
AVX512_BF16 = DeviceFacts(type="cpu", name="AMD EPYC", cpu_flags=frozenset(X86 | {"avx512f", "avx512_bf16"}), cpu_capability="AVX512", rates={"float32": 88.0, "bfloat16": 206.0})
AMX = DeviceFacts(type="cpu", name="Intel Xeon Platinum", cpu_flags=frozenset(X86 | {"avx512f", "amx_tile", "amx_bf16"}), cpu_capability="AVX512", rates={"float32": 119.0, "bfloat16": 715.0})
WIDE, NARROW = CPU_BF16_MIN_MODEL_DIM, CPU_BF16_MIN_MODEL_DIM // 2


def test_a_gpu_with_bf16_runs_auto_in_bf16_whatever_the_width() -> None:
    gpu = DeviceFacts(type="cuda", name="NVIDIA H100", gpu_bf16=True)
    for width in (64, 4096, None):
        p = decide_precision("auto", gpu, model_dim=width)
        assert (p.dtype, p.slow) == ("bfloat16", False)
    assert decide_precision("auto", gpu, model_dim=64).line == "precision: bf16 autocast over float32 weights (dtype=auto; NVIDIA H100 supports bf16)"


def test_a_gpu_without_bf16_runs_auto_in_float32_and_calls_an_explicit_bf16_slow() -> None:
    v100 = DeviceFacts(type="cuda", name="Tesla V100", gpu_bf16=False)
    assert decide_precision("auto", v100, model_dim=4096).dtype == "float32"
    explicit = decide_precision("bfloat16", v100, model_dim=4096)
    assert (explicit.dtype, explicit.slow) == ("bfloat16", True)
    assert (decide_precision("float16", v100, model_dim=4096).dtype, decide_precision("float16", v100, model_dim=4096).slow) == ("float16", False)


def test_an_avx2_only_cpu_runs_auto_in_float32_and_an_explicit_bf16_says_its_rates() -> None:
    assert decide_precision("auto", AVX2_ONLY, model_dim=WIDE).dtype == "float32"
    explicit = decide_precision("bfloat16", AVX2_ONLY, model_dim=WIDE)
    assert (explicit.dtype, explicit.slow) == ("bfloat16", True)  # honoured, and called slow
    assert explicit.reason == "dtype=bfloat16; Intel Xeon E5: no amx_bf16 or avx512_bf16, bf16 matmul 0.3 vs fp32 137 GFLOP/s"


@pytest.mark.parametrize("cpu", [AVX512_BF16, AMX], ids=["avx512_bf16", "amx"])
def test_a_cpu_with_a_bf16_unit_runs_auto_in_bf16_from_the_measured_width(cpu: DeviceFacts) -> None:
    wide = decide_precision("auto", cpu, model_dim=WIDE)
    assert (wide.dtype, wide.slow) == ("bfloat16", False)
    narrow = decide_precision("auto", cpu, model_dim=NARROW)
    assert narrow.dtype == "float32"
    assert f"model_dim {NARROW} < {WIDE}" in narrow.reason
    assert decide_precision("auto", cpu, model_dim=None).dtype == "bfloat16"  # width not known: the device decides
    explicit = decide_precision("bfloat16", cpu, model_dim=NARROW)  # honoured, and not called slow
    assert (explicit.dtype, explicit.slow) == ("bfloat16", False)
    # Generation's bf16 weights pay from a wider model than training's autocast (1.0x at 128 wide).
    assert decide_precision("auto", cpu, model_dim=WIDE, generation=True).dtype == "float32"
    assert decide_precision("auto", cpu, model_dim=CPU_BF16_MIN_MODEL_DIM_GENERATION, generation=True).dtype == "bfloat16"


def test_the_header_names_the_cpu_its_flag_and_the_measured_rates() -> None:
    line = decide_precision("auto", AVX512_BF16, model_dim=512).line
    assert line == "precision: bf16 autocast over float32 weights (dtype=auto; AMD EPYC: avx512_bf16, bf16 matmul 206 vs fp32 88 GFLOP/s)"
    assert decide_precision("auto", AMX, model_dim=512).reason == "dtype=auto; Intel Xeon Platinum: amx_bf16, bf16 matmul 715 vs fp32 119 GFLOP/s"


def test_where_the_flags_are_unknown_the_measured_rates_decide() -> None:
    fast = DeviceFacts(type="cpu", name="", cpu_flags=None, cpu_capability="DEFAULT", rates={"float32": 50.0, "bfloat16": 150.0})
    slow = DeviceFacts(type="cpu", name="", cpu_flags=None, cpu_capability="DEFAULT", rates={"float32": 50.0, "bfloat16": 10.0})
    assert decide_precision("auto", fast, model_dim=WIDE).dtype == "bfloat16"
    assert decide_precision("auto", slow, model_dim=WIDE).dtype == "float32"
    assert decide_precision("bfloat16", slow, model_dim=WIDE).slow
    unmeasured = DeviceFacts(type="cpu", cpu_flags=None)
    assert decide_precision("auto", unmeasured, model_dim=WIDE).dtype == "float32"  # no evidence: float32


def test_float16_on_a_cpu_is_fast_only_where_measured_so() -> None:
    p = decide_precision("float16", AVX512_BF16, model_dim=WIDE)  # no fp16 rate measured, no amx_fp16
    assert (p.dtype, p.slow) == ("float16", True)
    measured = DeviceFacts(type="cpu", name="AMD EPYC", cpu_flags=AVX512_BF16.cpu_flags, rates={"float32": 88.0, "float16": 0.25})
    assert "fp16 matmul 0.25 vs fp32 88 GFLOP/s" in decide_precision("float16", measured, model_dim=WIDE).reason


def test_float32_is_float32_everywhere() -> None:
    for facts in (AVX2_ONLY, AVX512_BF16, AMX, DeviceFacts(type="cuda", gpu_bf16=True)):
        p = decide_precision("float32", facts, model_dim=WIDE)
        assert (p.dtype, p.slow, p.line) == ("float32", False, "precision: float32 (dtype=float32)")


def test_cpuinfo_gives_the_model_name_and_x86_flags_but_not_arm_features() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
    assert cpu_info(x86) == ("AMD EPYC", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\nCPU implementer\t: 0x41\n"
    assert cpu_info(arm) == ("", None)  # flags we cannot read as x86's: the rates decide
    assert cpu_info("") == ("", None)


def test_a_slow_explicit_choice_is_said_once_with_the_measured_rates(capsys: pytest.CaptureFixture[str]) -> None:
    """float16 on this CPU: measured, honoured, and said once however often a run asks."""
    import torch

    from lmtune.precision import choose_precision, this_cpu

    flags = this_cpu()[1] or frozenset()
    if torch.cuda.is_available() or "amx_fp16" in flags:
        pytest.skip("float16 is fast here")
    first = choose_precision("float16", "cpu", 128)
    again = choose_precision("float16", "cpu", 512)
    assert first.dtype == again.dtype == "float16" and first.slow
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning: dtype=float16" in line]
    assert len(warnings) == 1
    assert "fp16 matmul" in warnings[0] and "GFLOP/s" in warnings[0] and "dtype=auto picks what is fast here" in warnings[0]


# ---------------------------------------------------------------- real runs of the tiny preset

RUN = [
    "--config-file", "tiny_gsm8k", "--config", "max_num_steps=30", "checkpoint_every_n_steps=30", "publish_metrics_every_n_steps=1",
    "max_num_tokens=1024", "tensorboard=false",
]
BF16_LOSS_RTOL = 2e-3
"""bf16 autocast against float32 over 30 steps of the tiny preset: measured at most 4e-4 relative
(AMD EPYC, avx512_bf16, December 2026); bf16 keeps 8 bits of mantissa (4e-3 relative per product)."""


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """The same 30 steps with dtype float32, bfloat16 and auto: OUT and stderr of each."""
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for dtype in ("float32", "bfloat16", "auto"):
        r = run_lmtune_in_process("instruction_finetune", str(root / dtype), *RUN, f"dtype={dtype}")
        assert r.returncode == 0, r.stderr[-3000:]
        out[dtype] = (root / dtype, r.stderr)
    return out


@pytest.mark.slow
def test_a_bf16_run_stays_within_tolerance_of_float32_and_differs_from_it(runs: dict[str, tuple[Path, str]]) -> None:
    fp32, bf16 = losses(runs["float32"][0]), losses(runs["bfloat16"][0])
    assert sorted(fp32) == sorted(bf16) == list(range(1, 31))
    for step in fp32:
        assert abs(bf16[step] - fp32[step]) <= BF16_LOSS_RTOL * fp32[step], (step, bf16[step], fp32[step])
    assert sum(bf16[s] != fp32[s] for s in fp32) >= 20  # bf16 really ran: most steps differ
    assert bf16[30] < 0.5 * bf16[1]  # and it learns


@pytest.mark.slow
def test_the_header_says_which_precision_runs_and_why(runs: dict[str, tuple[Path, str]]) -> None:
    def said(dtype: str) -> list[str]:
        return [line for line in runs[dtype][1].splitlines() if line.startswith("lmtune: precision: ")]

    assert said("float32") == ["lmtune: precision: float32 (dtype=float32)"]
    [bf16] = said("bfloat16")
    assert bf16.startswith("lmtune: precision: bf16 autocast over float32 weights (dtype=bfloat16; ")
    assert "GFLOP/s" in bf16  # the measured rates
    [auto] = said("auto")
    if not _on_cpu():
        return
    # tiny_llama is 128 wide (CPU_BF16_MIN_MODEL_DIM): bf16 where the CPU has a bf16 unit, float32 elsewhere.
    if _cpu_has_bf16_unit():
        assert auto.startswith("lmtune: precision: bf16 autocast over float32 weights (dtype=auto; ")
    else:
        assert auto.startswith("lmtune: precision: float32 (dtype=auto; ")


def _cpu_has_bf16_unit() -> bool:
    from lmtune.precision import FAST_CPU_BF16_FLAGS, this_cpu

    flags = this_cpu()[1]
    return flags is not None and any(f in flags for f in FAST_CPU_BF16_FLAGS)


@pytest.mark.slow
def test_auto_on_the_tiny_preset_is_the_precision_it_names_to_the_bit(runs: dict[str, tuple[Path, str]]) -> None:
    """tiny_llama is CPU_BF16_MIN_MODEL_DIM wide: auto trains it exactly as dtype=bfloat16 on a CPU with a bf16
    unit (or a GPU with bf16), exactly as dtype=float32 on any other."""
    expected = "bfloat16" if not _on_cpu() or _cpu_has_bf16_unit() else "float32"
    assert losses(runs["auto"][0]) == losses(runs[expected][0])


@pytest.mark.slow
def test_generate_says_its_precision_and_honours_an_explicit_bf16(tmp_path: Path) -> None:
    """lmtune generate loads the weights in the chosen dtype: auto is float32 for tiny_llama (128 wide) on any CPU."""
    import json

    from helpers import REPO, run_lmtune_in_process

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(line + "\n" for line in (REPO / "assets/tiny/gsm8k/test/test.jsonl").read_text().splitlines()[:2]))
    said = {}
    for dtype in ("auto", "bfloat16"):
        r = run_lmtune_in_process("generate", str(tmp_path / dtype), "--config", "model=tiny_llama", f"dataset={prompts}", "generator_config.max_gen_len=4", "score=none", f"dtype={dtype}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert len((tmp_path / dtype / "generations.jsonl").read_text().splitlines()) == 2
        said[dtype] = [line for line in r.stderr.splitlines() if line.startswith("lmtune: precision: ")]
    assert len(said["auto"]) == 1 and said["auto"][0].startswith("lmtune: precision: float32 (dtype=auto; ")
    assert len(said["bfloat16"]) == 1 and said["bfloat16"][0].startswith("lmtune: precision: bfloat16 weights (dtype=bfloat16; ")
    assert json.loads((tmp_path / "bfloat16" / "generations.jsonl").read_text().splitlines()[0])["completion"] is not None


def test_a_rerun_may_change_dtype_but_not_what_the_checkpoints_hold(tmp_path: Path) -> None:
    """Runs from before dtype=auto saved dtype: bfloat16 (the old default) or float32 (the tiny preset); their
    checkpoints hold float32 weights and optimizer state in every precision, so they resume under auto."""
    from lmtune.errors import UserError
    from lmtune.run_dir import CONFIG_FILE, check_rerun

    (tmp_path / CONFIG_FILE).write_text("dtype: bfloat16\nlearning_rate: 0.001\n")
    assert check_rerun(tmp_path, {"dtype": "auto", "learning_rate": 0.001}, has_checkpoint=True) == {"dtype": "bfloat16", "learning_rate": 0.001}
    with pytest.raises(UserError, match="learning_rate=0.001"):
        check_rerun(tmp_path, {"dtype": "auto", "learning_rate": 0.002}, has_checkpoint=True)
