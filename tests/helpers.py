"""Helpers shared by the test modules (imported as ``from helpers import ...``; conftest holds only fixtures)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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

    For tests of argument parsing, bad input and config dumps, and for runs whose outputs a test reads
    (trainings, generations, exports): the answer is the same sentence and exit code as the real CLI's
    (main prints UserError and returns 2; argparse exits 2), and a training's losses are bit-identical to
    a subprocess's, without the seconds a fresh interpreter spends importing torch and fairseq2. What the
    process boundary itself proves (exit codes under torchrun, signals and kill -9, tracebacks, start-up
    time, what a fresh process reads from disk) stays with run_lmtune. ``env`` and ``cwd`` apply for the
    call only.
    """
    from lmtune.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.update(env or {})
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _one_run_of_process_state(computes=args[0] in COMPUTING_VERBS if args else False):
            try:
                code = main(list(args))
            except SystemExit as ex:  # argparse's errors and --help
                code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 2)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["lmtune", *args], code, out.getvalue(), err.getvalue())


# The verbs that run a model: torch is imported before them, to run them on one thread.
COMPUTING_VERBS = {"instruction_finetune", "preference_finetune", "pretrain", "sweep", "demo", "generate", "write_hf_config", "drift", "audit"}


@contextlib.contextmanager
def _one_run_of_process_state(computes: bool) -> Iterator[None]:
    """What a run changes in its process and a fresh process would not carry to the next run: OUT's lock
    (lmtune.run_dir holds it until the process exits, so a rerun on the same OUT in this process would find
    it in use), fairseq2's log handlers (OUT/logs/rank_0.log's FileHandler stays on the "fairseq2" logger, so
    a second run in the same process would also write into the first run's log), the logger levels, the
    SIGTERM/SIGUSR1 handlers a training installs, and torch's thread count: one thread, as run_lmtune's
    OMP_NUM_THREADS=1 gives, so that losses equal a subprocess run's bit for bit whether or not pytest runs
    under xdist."""
    import logging
    import signal

    loggers = [logging.getLogger(), logging.getLogger("fairseq2")]
    saved_loggers = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    torch = importlib.import_module("torch") if computes else sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    run_dir = sys.modules.get("lmtune.run_dir")
    locks_before = len(run_dir._held) if run_dir is not None else 0
    try:
        yield
    finally:
        run_dir = sys.modules.get("lmtune.run_dir")
        if run_dir is not None:  # released as at the process's exit: closing the file drops its flock
            for fp in run_dir._held[locks_before:]:
                fp.close()
            del run_dir._held[locks_before:]
        for lg, handlers, level, propagate in saved_loggers:
            for handler in lg.handlers[:]:
                if handler not in handlers:
                    lg.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in lg.handlers:
                    lg.addHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)


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
