"""Regenerates the committed tiny-default files under assets/tiny/ (run from the repository root):

    python tools/build_tiny_assets.py assets/tiny

- gsm8k/: GSM8K-style arithmetic word problems from a seeded random generator, so the
  same seed gives byte-identical files; answers end in ``#### N`` like GSM8K, so the same
  scoring applies to the demo and to the real dataset.
- tokenizer/: a tiny Llama-3-style Hugging Face tokenizer, byte-level BPE (as Llama 3 and
  Qwen use) trained on that data with a fixed vocabulary size, plus Llama 3's special
  tokens and chat template, so the tiny default takes the code paths of a real Llama 3
  Instruct tokenizer.

Output is deterministic: tests/test_demo.py checks that the committed files equal a fresh build.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable
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


SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

# Llama 3's chat layout; the {% generation %} markers let transformers return the
# assistant-token mask, which lmtune uses to put the loss on assistant turns only.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def write_demo_tokenizer(texts: Iterable[str], out_dir: Path, *, vocab_size: int = 512) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def write_demo_assets(tiny_dir: Path) -> None:
    data_dir = write_demo_dataset(tiny_dir / "gsm8k")
    texts = []
    with (data_dir / "sft/train.jsonl").open() as fp:
        for line in fp:
            record = json.loads(line)
            texts += [record["src"], record["tgt"]]
    write_demo_tokenizer(texts, tiny_dir / "tokenizer")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/build_tiny_assets.py OUT_DIR (e.g. assets/tiny)")
    write_demo_assets(Path(sys.argv[1]))
