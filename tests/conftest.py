"""Shared test setup: every test sees only the shipped cards plus what it writes itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_user_cards(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    user_dir = tmp_path_factory.mktemp("user_cards")
    monkeypatch.setenv("LMTUNE_USER_ASSET_DIR", str(user_dir))
    monkeypatch.delenv("FAIRSEQ2_USER_ASSET_DIR", raising=False)
    return user_dir




@pytest.fixture(autouse=True, scope="session")
def one_thread_per_xdist_worker() -> None:
    """Under `pytest -n 2` each worker computes on one core: two workers with a thread per core each would
    oversubscribe the cores. The CLI processes the tests start already get OMP_NUM_THREADS=1 (helpers.run_lmtune)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
