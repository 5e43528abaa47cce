"""Every preset opens with the command that runs it and parses."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, run_lmtune
from lmtune.resources import configs_dir

PRESETS = sorted(configs_dir().glob("*.yaml"))


def test_there_are_presets() -> None:
    assert {p.stem for p in PRESETS} >= {"tiny_gsm8k", "llama3_2_1b_gsm8k"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_opens_with_its_command_and_parses(preset: Path) -> None:
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# lmtune ") and f"configs/{preset.name}" in first, first
    # The line itself, as a user pastes it (placeholders such as CORPUS are fine for --dump-config).
    words = shlex.split(first[2:])[1:]
    result = run_lmtune(*words, "--dump-config", cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_sbatch_script_opens_with_its_command() -> None:
    script = configs_dir() / "slurm_2node.sbatch"
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/bash" and lines[1].startswith("# sbatch configs/slurm_2node.sbatch")
    assert "#SBATCH --signal=USR1@120" in lines and "#SBATCH --requeue" in lines
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
