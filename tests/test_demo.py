"""lmtune demo: fine-tune, generate and score, export, and transformers completing the
export exactly as lmtune does; a rerun on the same OUT resumes instead of failing.

Training is cut to 20 steps (through the demo's --config passthrough): enough for the
loss to fall and for the completions to be real text that both sides must agree on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, metric_rows, run_lmtune

pytestmark = pytest.mark.slow  # runs the whole demo twice

SHORT = ["--config", "max_num_steps=20", "publish_metrics_every_n_steps=5", "checkpoint_every_n_steps=10", "tensorboard=false"]
HEADINGS = ["=== 1/4 Fine-tune", "=== 2/4 Generate and score", "=== 3/4 Export to Hugging Face", "=== 4/4 Summary"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run_lmtune("demo", str(out), *SHORT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


@pytest.fixture(scope="module")
def demo(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> tuple[Path, str]:
    return demo_run[0], demo_run[1].stdout


def test_console_output_is_short(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """No config dump, module tree, metric blocks or deprecation warnings: fairseq2's log is in OUT/finetune/logs."""
    out, r = demo_run
    assert len(r.stdout.splitlines()) + len(r.stderr.splitlines()) < 80, r.stdout + r.stderr
    assert "DeprecationWarning" not in r.stderr and "Train Metrics" not in r.stderr and "Config:" not in r.stderr
    assert re.search(r"^step 20/20  loss \d+\.\d{3}  lr ", r.stderr, re.M), r.stderr
    assert "Train Metrics (step 20)" in (out / "finetune/logs/rank_0.log").read_text()


def _scores(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((path / "scores.json").read_text())


def _answer(text: str) -> str | None:
    """GSM8K's rule by hand: the number after the last '####', commas dropped."""
    _, sep, tail = text.rpartition("####")
    m = re.match(r"\s*(-?[0-9][0-9,]*)", tail) if sep else None
    return m.group(1).replace(",", "") if m else None


def test_sections_in_order_and_training_learned(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    positions = [stdout.find(h) for h in HEADINGS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), stdout
    assert sorted(p.name for p in (out / "finetune/checkpoints").glob("step_*")) == ["step_10", "step_20"]
    m = re.search(r"loss (\d+\.\d+) at step 5 -> (\d+\.\d+) at step 20", stdout)
    assert m is not None, stdout
    first, last = float(m.group(1)), float(m.group(2))
    # Random weights start at about ln(512) = 6.24 nats per token; measured 6.181 -> 2.201 (2-core Xeon).
    assert first > 5.5 and last < 2.6 and last < first - 3.0, m.group()
    metrics = metric_rows(out / "finetune")
    assert f"{metrics[0]['NLL Loss']:.3f}" == m.group(1) and f"{metrics[-1]['NLL Loss']:.3f}" == m.group(2)


def test_generations_and_scores(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    test_split = (Path(__file__).resolve().parent.parent / "assets/tiny/gsm8k/test/test.jsonl").read_text().splitlines()
    for name in ("generate", "generate_untrained"):
        rows = [json.loads(line) for line in (out / name / "generations.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in rows] == [json.loads(line)["src"] for line in test_split]
        scores = _scores(out / name)
        assert scores["task"] == "gsm8k" and scores["num_examples"] == len(test_split) == 200
        # scores.json's counts are the generations' counts, recounted here by hand.
        answers = [_answer(r["completion"]) for r in rows]
        assert all(_answer(r["reference"]) is not None for r in rows)
        assert scores["no_answer"] == sum(a is None for a in answers)
        assert scores["correct"] == sum(a is not None and a == _answer(r["reference"]) for a, r in zip(answers, rows))
        assert scores["accuracy"] == pytest.approx(scores["correct"] / 200)
    before, after = _scores(out / "generate_untrained"), _scores(out / "generate")
    assert before["correct"] == 0 and before["no_answer"] == 200  # random weights never write '#### N'
    assert after["no_answer"] < 200  # 20 steps already teach the answer format (not yet the sums: 0.895 takes the demo's 600 steps)
    assert f"accuracy on 200 problems: {before['accuracy']:.3f} before fine-tuning -> {after['accuracy']:.3f} after" in stdout


def test_export_loads_in_transformers_and_completes_identically(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (out / "hf").iterdir()}
    section = stdout[stdout.index(HEADINGS[2]) : stdout.index(HEADINGS[3])]
    assert section.count("\n  identical (") == 2 and "MISMATCH" not in section, section
    rows = [json.loads(line) for line in (out / "generate/generations.jsonl").read_text().splitlines()]
    for row in rows[:2]:
        shown = row["completion"].strip().replace("\n", " / ")
        assert shown and f"  lmtune:       {shown}\n  transformers: {shown}\n" in section, section
    # The same check done here, not by the demo: transformers' greedy ids on the export are lmtune's ids.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.commands.demo import MAX_GEN_LEN

    tok = AutoTokenizer.from_pretrained(str(out / "hf"))
    model = AutoModelForCausalLM.from_pretrained(str(out / "hf"), dtype=torch.float32).eval()
    for row in rows[:4]:
        enc = tok(row["prompt"], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False, max_new_tokens=MAX_GEN_LEN)
        assert ids[0, enc["input_ids"].shape[1] :].tolist() == row["token_ids"], row


def test_a_mismatch_is_reported(demo: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    from lmtune.commands.demo import _compare_with_transformers

    out, _ = demo
    row = json.loads((out / "generate/generations.jsonl").read_text().splitlines()[0])
    row["token_ids"] = row["token_ids"][:2] + [row["token_ids"][2] + 1] + row["token_ids"][3:]
    assert _compare_with_transformers(out / "hf", [row]) == 1
    assert "MISMATCH: the token ids differ from position 2" in capsys.readouterr().out


def test_summary_names_the_outputs_and_commands(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    summary = stdout[stdout.index(HEADINGS[3]) :]
    for path in ("finetune/", "generate/", "generate_untrained/", "hf/"):
        assert f"{out}/{path}" in summary
    assert f"lmtune instruction_finetune {out}/finetune --config-file tiny_gsm8k --config max_num_steps=20" in summary
    assert f"lmtune generate {out}/generate --config checkpoint_dir={out}/finetune/checkpoints model=last_checkpoint dataset=tiny_gsm8k" in summary
    assert f"lmtune write_hf_config {out}/finetune/checkpoints --output {out}/hf" in summary
    assert re.search(r"total wall time: \d+ s", summary)


def test_rerun_resumes_the_finished_run(demo: tuple[Path, str]) -> None:
    out, first = demo
    r = run_lmtune("demo", str(out), *SHORT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{out}/finetune already has a checkpoint at step 20: resuming" in r.stdout
    assert sorted(p.name for p in (out / "finetune/checkpoints").glob("step_*")) == ["step_10", "step_20"]
    # Nothing retrained: the same loss curve, the same generations and scores.
    curve = lambda s: s[s.index("training loss") : s.index("this run took")]  # noqa: E731
    assert curve(r.stdout) == curve(first)
    accuracy = lambda s: re.search(r"accuracy on 200 problems: .*", s).group()  # type: ignore[union-attr]  # noqa: E731
    assert accuracy(r.stdout) == accuracy(first)
    assert r.stdout.count("\n  identical (") == 2


def test_committed_tiny_assets_equal_a_fresh_build(tmp_path: Path) -> None:
    """assets/tiny is what tools/build_tiny_assets.py writes, byte for byte."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / "build_tiny_assets.py"), str(tmp_path / "tiny")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    committed = sorted(p.relative_to(REPO / "assets" / "tiny") for p in (REPO / "assets" / "tiny").rglob("*") if p.is_file())
    built = sorted(p.relative_to(tmp_path / "tiny") for p in (tmp_path / "tiny").rglob("*") if p.is_file())
    assert built == committed
    for rel in committed:
        assert (tmp_path / "tiny" / rel).read_bytes() == (REPO / "assets" / "tiny" / rel).read_bytes(), rel
