"""Regenerates the committed tiny-default files under assets/tiny/.

    python -m lmtune.demo_assets assets/tiny

Output is deterministic; tests/test_demo_assets.py checks the committed files
equal a fresh regeneration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmtune.demo_data import write_demo_dataset
from lmtune.demo_tokenizer import write_demo_tokenizer


def write_demo_assets(tiny_dir: Path) -> None:
    data_dir = write_demo_dataset(tiny_dir / "gsm8k")
    texts = []
    with (data_dir / "sft/train.jsonl").open() as fp:
        for line in fp:
            record = json.loads(line)
            texts += [record["src"], record["tgt"]]
    write_demo_tokenizer(texts, tiny_dir / "tokenizer")


if __name__ == "__main__":
    write_demo_assets(Path(sys.argv[1]))
