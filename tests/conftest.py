"""Shared test setup: every test sees only the shipped cards plus what it writes itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_user_cards(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    user_dir = tmp_path_factory.mktemp("user_cards")
    # fairseq2's default card directory is $XDG_CONFIG_HOME/fairseq2/assets, else ~/.config/fairseq2/assets: an empty
    # config home keeps the real ~/.config out of every test (HOME stays, so caches under ~/.cache are still shared).
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config_home")))
    monkeypatch.setenv("LMTUNE_USER_ASSET_DIR", str(user_dir))
    monkeypatch.delenv("FAIRSEQ2_USER_ASSET_DIR", raising=False)
    monkeypatch.setenv("LMTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("lmtune_cache")))  # never the user's ~/.cache
    return user_dir


@pytest.fixture(autouse=True, scope="module")
def isolated_module_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For module-scoped fixtures, which run before the per-test one above."""
    with pytest.MonkeyPatch.context() as patch:
        module_cache = str(tmp_path_factory.mktemp("lmtune_cache_module"))
        patch.setenv("LMTUNE_CACHE_DIR", module_cache)
        patch.setenv("LMTUNE_MODULE_CACHE_DIR", module_cache)  # where module-scoped runs encoded their data
        yield


# The preference modules' inputs (test_preference_finetune.py, test_preference_processes.py).
@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/checkpoints of the session's tiny GSM8K SFT run (preference_runs.sft_checkpoints)."""
    from preference_runs import sft_checkpoints

    return sft_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 training and 100 validation preference pairs (preference_runs.write_pairs)."""
    from preference_runs import write_pairs

    return write_pairs(tmp_path_factory.mktemp("pairs") / "data", 1000, 100)


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_xdist_worker() -> None:
    """Under `pytest -n 2` each worker computes on one core: two workers with a thread per core each would
    oversubscribe the cores. The CLI processes the tests start already get OMP_NUM_THREADS=1 (helpers.run_lmtune)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")




# Seconds of the slowest modules on this project's busy 2-core machine (tests/TIMINGS.md, "second
# pass"); only their order matters. Under `-n auto --dist loadfile` each module runs whole on one worker,
# longest first, so that no long module starts last and keeps one core busy alone at the end (xdist's own
# order, most tests first, started the slow modules with few tests last). A module not listed runs after
# these, in file order. test_preference_finetune trains the SFT checkpoint that test_preference_processes
# then reads (tiny_builders.shared_tiny_checkpoint), so the latter, listed at its own tests' seconds, starts
# once other modules have kept the second worker busy, not waiting on the lock.
MODULE_SECONDS: dict[str, float] = {
    # measured serially at a load of 7 to 11 (the two test_distributed modules side by side under -n 2, load 5 -> 2;
    # TIMINGS.md, second pass)
    "test_preference_finetune": 650, "test_resume": 500, "test_sweep": 475, "test_preference_processes": 380,
    "test_distributed_failures": 330, "test_resume_variants": 320, "test_vllm_families": 320, "test_distributed": 270,
    "test_lora_vllm": 200, "test_lora_ranks": 190, "test_encoded_cache": 185, "test_vllm": 180,
    "test_early_stopping": 170, "test_native_families": 125, "test_instrument": 115, "test_pretrain": 115,
    "test_lora": 100, "test_gpt2": 65, "test_ag_news": 55, "test_precision": 55, "test_lora_export": 50,
    "test_safe_load": 45, "test_hf_dir_cards": 35, "test_transformers_family_cli": 25,
    # added beside the second pass, estimated
    "test_transformers_family_lora": 120, "test_shipped_cards": 40,
    # not measured in the second pass: test_cli_errors measured after the first pass's conversions, the
    # others estimated before them (probably too high)
    "test_demo": 250, "test_generate": 200, "test_stages": 150, "test_drift": 150,
    "test_packaging": 120, "test_console": 120, "test_cli_errors": 30,
}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's --loadscope-reorder, on by default
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], index)

    def key(item: pytest.Item) -> tuple[float, int]:
        module = item.nodeid.split("::")[0]
        return (-MODULE_SECONDS.get(Path(module).stem, 0.0), first[module])

    items.sort(key=key)  # stable: a module's tests keep their order
