"""An installed lmtune (a built wheel) finds its recipes, cards and presets; --help stays light."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("lmtune-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_recipes_cards_presets_and_no_top_level_recipes(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in [
        "lmtune/cli.py",
        "lmtune/recipes/instruction_finetune.py",
        "lmtune/assets/llama.yaml",
        "lmtune/assets/tiny.yaml",
        "lmtune/assets/tiny/tokenizer/tokenizer.json",
        "lmtune/assets/tiny/gsm8k/sft/train.jsonl",
        "lmtune/configs/tiny_gsm8k.yaml",
    ]:
        assert required in names, required
    top_level = {n.split("/")[0] for n in names if not n.startswith("lmtune-")}
    assert top_level == {"lmtune"}, top_level


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import lmtune; print(lmtune.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target))
    shown = subprocess.run([sys.executable, "-m", "lmtune", "assets", "show", "tiny_tokenizer"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"tokenizer: {target}/lmtune/assets/tiny/tokenizer" in shown.stdout
    dumped = subprocess.run([sys.executable, "-m", "lmtune", "instruction_finetune", "x", "--config-file", "tiny_gsm8k", "--dump-config"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert dumped.returncode == 0 and "model: tiny_llama" in dumped.stdout, dumped.stderr
    imported = subprocess.run([sys.executable, "-c", "import lmtune.recipes.instruction_finetune as r; print(r.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.startswith(str(target)), imported.stderr
    no_generic = subprocess.run([sys.executable, "-c", "import recipes"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert no_generic.returncode != 0


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["instruction_finetune", "--help"], ["pretrain", "--help"], ["generate", "--help"], ["write_hf_config", "--help"], ["cache", "list"]])
def test_help_does_not_import_torch_or_fairseq2(argv: list[str]) -> None:
    code = (
        "import sys\nfrom lmtune.cli import main\n"
        "try:\n    main(" + repr(argv) + ")\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'fairseq2', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stdout, r.stdout[-500:] + r.stderr[-2000:]


def test_version_names_lmtune_fairseq2_and_torch_as_installed() -> None:
    from importlib.metadata import version

    r = subprocess.run([sys.executable, "-m", "lmtune", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"lmtune {version('lmtune')} (fairseq2 {version('fairseq2')}, torch {version('torch')})"
    assert version("fairseq2") == "0.8.1"
