"""Helpers shared by the test modules (imported as ``from helpers import ...``; conftest holds only fixtures)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_lmtune(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the real CLI in a fresh process, as a user would."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "lmtune", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, one line on stderr starting 'lmtune: error:', no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("lmtune: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_lmtune_in_process(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Calls ``lmtune.cli.main`` in this process, answering as run_lmtune does (exit code, stdout, stderr).

    For tests of argument parsing, bad input and config dumps: the answer is the same sentence and
    exit code as the real CLI's (main prints UserError and returns 2; argparse exits 2), without the
    seconds a fresh interpreter spends importing torch. What the process boundary itself proves (exit
    codes under torchrun, kill -9, start-up time) stays with run_lmtune. ``env`` and ``cwd`` apply for
    the call only.
    """
    from lmtune.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.update(env or {})
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as ex:  # argparse's errors and --help
                code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 2)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["lmtune", *args], code, out.getvalue(), err.getvalue())


def metric_rows(out: Path, split: str = "train") -> list[dict[str, Any]]:
    """The rows of OUT/metrics/<split>.jsonl in the order written (a resumed run re-logs the steps after its checkpoint)."""
    return [json.loads(line) for line in (out / "metrics" / f"{split}.jsonl").read_text().splitlines()]


def losses(out: Path, split: str = "train") -> dict[int, float]:
    """Step -> NLL loss of a run; for a step logged twice (a resumed run), the later line wins."""
    return {row["Step"]: row["NLL Loss"] for row in metric_rows(out, split)}


def free_port() -> int:
    """A TCP port free right now: fixed ports collide when tests run side by side (pytest -n, other checkouts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
