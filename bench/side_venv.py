"""A side venv with transformers' Trainer extras (accelerate, and trl) beside lmtune's pins.

The benchmarks compare lmtune with transformers' Trainer and TRL, which cannot go into lmtune's
venv (a plain ``pip install trl`` upgrades transformers to 5.x). The side venv sees this venv's
packages through a .pth file and adds only what is missing, resolved with this venv's pinned
versions as constraints. Used by bench/packing_bench.py and bench/lora_bench.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

PINNED = ("torch", "transformers", "fairseq2", "fairseq2n", "huggingface-hub", "tokenizers", "numpy", "safetensors")


def versions(python: Path) -> str:
    """The versions the side venv's children train with."""
    code = "import importlib.metadata as m\nfor p in ('torch', 'transformers', 'accelerate', 'trl'):\n    print(p, m.version(p))"
    return ", ".join(subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.splitlines())


def pip_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["pip failed"])[-1]


def hf_venv(path: Path, want_trl: bool) -> tuple[Path | None, str, str]:
    """A side venv with accelerate (and trl), layered over this venv, for the transformers children.

    It sees this venv's packages through a .pth file, so it trains with the same torch and
    transformers; pip resolves what is missing with this venv's torch/transformers/fairseq2/...
    versions as constraints and installs it (--no-deps, exactly the resolved set) into the side
    venv only. Returns its python (None when even accelerate cannot be had), a line saying what
    happened, and why trl is missing (empty when it is there)."""
    python = path / "bin" / "python"
    site_dir = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    check = "import accelerate, trl" if want_trl else "import accelerate"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    # Always this venv's packages: the side venv may have been built from another checkout.
    own = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site_dir / "_project_venv.pth").write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in own))
    if subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python, f"side venv {path}: {versions(python)}", ""
    pip = [sys.executable, "-m", "pip"]
    freeze = subprocess.run([*pip, "freeze"], capture_output=True, text=True).stdout.splitlines()
    pins = path / "pins.txt"
    pins.write_text("\n".join(line for line in freeze if re.split(r"[=<>@ ]", line)[0].lower().replace("_", "-") in PINNED) + "\n")
    trl_reason = ""
    for wanted in ((["trl", "accelerate"], ["accelerate"]) if want_trl else (["accelerate"],)):
        report = path / "pip-report.json"
        dry = subprocess.run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), "-c", str(pins), *wanted], capture_output=True, text=True)
        if dry.returncode != 0:
            if "trl" in wanted:
                trl_reason = f"trl does not resolve beside {' '.join(pins.read_text().split())}: {pip_error(dry.stderr)}"
            continue
        install = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in json.loads(report.read_text())["install"]]
        touched = [p for p in install if p.split("==")[0].lower().replace("_", "-") in PINNED]
        if touched:  # the constraints forbid this; never let the side venv shadow the project's pins
            return None, f"refused: {' '.join(wanted)} would replace {', '.join(touched)}", trl_reason or "refused"
        if install:
            done = subprocess.run([*pip, "install", "--quiet", "--no-deps", "--upgrade", "--target", str(site_dir), *install], capture_output=True, text=True)
            if done.returncode != 0:
                return None, f"pip install into {path} failed: {pip_error(done.stderr)}", trl_reason or "install failed"
        return python, f"installed {' '.join(install) or 'nothing new'} into side venv {path}: {versions(python)}", trl_reason
    return None, f"accelerate (which transformers' Trainer needs) does not resolve beside this venv's pins: {pip_error(dry.stderr)}", trl_reason or "see accelerate"


# ---------------------------------------------------------------- report
