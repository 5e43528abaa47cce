"""Every preset opens with the command that runs it, and that command's --dump-config holds the preset's values."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, run_lmtune_in_process
from lmtune.resources import configs_dir

PRESETS = sorted(configs_dir().glob("*.yaml"))


def test_there_are_presets() -> None:
    assert {p.stem for p in PRESETS} >= {"tiny_gsm8k", "llama3_2_1b_gsm8k"}


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for every leaf of a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_opens_with_its_command_and_dumps_its_values(preset: Path) -> None:
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# lmtune ") and f"configs/{preset.name}" in first, first
    # The line itself, as a user pastes it (placeholders such as CORPUS are fine for --dump-config).
    words = shlex.split(first[2:])[1:]
    result = run_lmtune_in_process(*words, "--dump-config", cwd=REPO)
    assert result.returncode == 0, result.stderr
    dumped = _leaves(yaml.safe_load(result.stdout))
    expected = _leaves(yaml.safe_load(preset.read_text()))
    # The command line's own --config words (dataset=CORPUS) come on top of the file.
    overrides = words[words.index("--config") + 1 :] if "--config" in words else []
    expected.update({key: yaml.safe_load(value) for key, value in (w.split("=", 1) for w in overrides)})
    assert len(expected) >= 3
    for key, value in expected.items():
        assert key in dumped, (key, sorted(dumped))
        assert dumped[key] == (pytest.approx(value) if isinstance(value, float) else value), (key, dumped[key], value)


def test_sbatch_script_opens_with_its_command() -> None:
    script = configs_dir() / "slurm_2node.sbatch"
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/bash" and lines[1].startswith("# sbatch configs/slurm_2node.sbatch")
    assert "#SBATCH --signal=USR1@120" in lines and "#SBATCH --requeue" in lines
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
