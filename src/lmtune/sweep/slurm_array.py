"""A sweep as a SLURM job array: one array task per unfinished point.

Each task runs ``lmtune sweep OUT --array-task`` under ``srun``, which reads its point
from ``SLURM_ARRAY_TASK_ID`` and trains it like ``srun lmtune instruction_finetune`` (or the sweep's ``--recipe``)
(every srun task a rank). Preemption is the single run's: SIGUSR1 120 s before the time
limit, a checkpoint, exit 75, and the task requeues itself; the requeued task resumes
its point.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from lmtune.errors import UserError
from lmtune.sweep.grid import Point
from lmtune.sweep.sweep_dir import SBATCH_SCRIPT, SLURM_LOGS


def sbatch_script(out: Path, points: list[Point], options: list[str]) -> str:
    """The job array over ``points``; ``options`` are sbatch options without their dashes
    (``gpus-per-node=8``), which override the defaults here."""
    settings = {"job-name": f"lmtune-sweep-{out.name}", "signal": "USR1@120", "requeue": None, "open-mode": "append",
                "output": str(out.resolve() / SLURM_LOGS / "%A_%a.out")}  # fmt: skip
    for option in options:
        key, sep, value = option.removeprefix("--").partition("=")
        if not key or key == "array":
            raise UserError(f"--sbatch {option!r}: give sbatch options as name=value (e.g. --sbatch gpus-per-node=8 time=04:00:00); --array is the sweep's own.")
        settings[key] = value if sep else None
    indices = ",".join(str(p.index) for p in points)
    lines = [
        "#!/bin/bash",
        f"# lmtune sweep {out}: {len(points)} point(s) as a SLURM job array, one array task per point:",
        *(f"#   {p.index}: {p.name}" for p in points),
        "# Resubmit with `sbatch` on this file, or rerun `lmtune sweep ... --slurm` (finished points are skipped).",
        f"#SBATCH --array={indices}",
        *(f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in settings.items()),
        "",
        "set -uo pipefail",
        "# The batch script also receives the signal: ignore it here, srun forwards it to the tasks.",
        "trap '' USR1",
        "",
        f"srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} -m lmtune sweep {shlex.quote(str(out.resolve()))} --array-task",
        "status=$?",
        'if [[ $status -eq 75 ]]; then',
        '  echo "lmtune: point $SLURM_ARRAY_TASK_ID preempted after a checkpoint; requeueing ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        "exit $status",
    ]
    return "\n".join(lines) + "\n"


def write_and_submit(out: Path, points: list[Point], options: list[str], dry_run: bool) -> None:
    script = sbatch_script(out, points, options)
    if dry_run:
        print(script, end="")
        return
    path = out / SBATCH_SCRIPT
    (out / SLURM_LOGS).mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        print(f"lmtune: wrote {path}; sbatch is not on this machine's PATH, so submit it on the cluster: sbatch {path}", file=sys.stderr)
        return
    result = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"sbatch {path} failed: {(result.stderr or result.stdout).strip()}")
    print(f"lmtune: {result.stdout.strip()} ({len(points)} array task(s), logs in {out / SLURM_LOGS})", file=sys.stderr)
