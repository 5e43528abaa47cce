"""fairseq2's private attributes and swapped methods are used in one module, behind a version check."""

from __future__ import annotations

import re
import types

import pytest

from helpers import REPO
from lmtune import fairseq2_internals
from lmtune.errors import UserError


def test_another_fairseq2_version_is_refused_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairseq2_internals, "installed_version", lambda: "0.9.0")
    trainer = types.SimpleNamespace(_max_num_steps=10)
    with pytest.raises(UserError) as caught:
        fairseq2_internals.drop_step_limit(trainer)
    message = str(caught.value)
    assert "written for fairseq2 0.8.1" in message and "fairseq2 0.9.0 is installed" in message
    assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message
    assert trainer._max_num_steps == 10  # refused before touching anything


def test_the_installed_version_is_the_one_written_for() -> None:
    assert fairseq2_internals.installed_version() == fairseq2_internals.WRITTEN_FOR
    trainer = types.SimpleNamespace(_max_num_steps=10)
    fairseq2_internals.drop_step_limit(trainer)
    assert trainer._max_num_steps is None


# fairseq2's private names that lmtune uses; they may appear only in lmtune.fairseq2_internals.
PRIVATE = re.compile(r"\._(early_stopper|max_num_steps|prefix_indices|suffix_indices|tok)\b|\.compute_fused_loss\s*=|\.forward\s*=|\._model\.encoding")


def test_no_other_module_reaches_into_fairseq2() -> None:
    sources = [*(REPO / "src" / "lmtune").rglob("*.py"), *(REPO / "recipes").glob("*.py")]
    found = [
        f"{path.relative_to(REPO)}:{i}"
        for path in sources if path.name != "fairseq2_internals.py"
        for i, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)
    ]  # fmt: skip
    assert found == []
