"""The built-in tiny default: GSM8K-style arithmetic word problems.

Every record is produced from a seeded random generator, so the same seed always
gives byte-identical files. Answers end in ``#### N`` like GSM8K, so the same
scoring applies to the demo and to the real dataset.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jin"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "eggs"]


def make_problem(rng: random.Random) -> dict[str, str]:
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    a = rng.randint(2, 40)
    b = rng.randint(1, 40)
    if rng.random() < 0.5:
        src = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have?\n"
        answer = a + b
        tgt = f"{a} + {b} = {answer}\n#### {answer}"
    else:
        a, b = max(a, b), min(a, b)
        src = f"{name} has {a} {item}. {name} gives away {b}. How many {item} are left?\n"
        answer = a - b
        tgt = f"{a} - {b} = {answer}\n#### {answer}"
    return {"src": src, "tgt": tgt}


def write_demo_dataset(out_dir: Path, *, num_train: int = 4000, num_test: int = 200, seed: int = 0) -> Path:
    """Writes the GSM8K-like layout ``sft/train.jsonl`` and ``test/test.jsonl``."""
    rng = random.Random(seed)
    test = [make_problem(rng) for _ in range(num_test)]
    test_srcs = {r["src"] for r in test}
    train: list[dict[str, str]] = []
    while len(train) < num_train:
        record = make_problem(rng)
        if record["src"] not in test_srcs:  # keep the test set unseen
            train.append(record)
    for rel, records in (("sft/train.jsonl", train), ("test/test.jsonl", test)):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fp:
            for r in records:
                fp.write(json.dumps(r) + "\n")
    return out_dir
