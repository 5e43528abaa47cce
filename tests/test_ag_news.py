"""AG News on a tiny Qwen-family stand-in: the preset's flow end to end.

A 2-layer Qwen2.5-architecture model (random init), a Qwen-style Hugging Face
tokenizer (byte-level BPE, ChatML template, turns end with <|im_end|>) and a
generated 4-class news dataset in chat format whose answers are JSON
{"category": ...}. The base model is scored, fine-tuned with the AG News preset
(model, data and size overridden), and the fine-tuned model scored: accuracy,
macro F1, per-class F1 and the confusion matrix.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import metric_rows, run_lmtune_in_process

pytestmark = pytest.mark.slow  # fine-tunes and generates with a tiny Qwen

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
SYSTEM = 'Classify the news article into World, Sports, Business or Sci/Tech. Answer with JSON {"category": ...}.'
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WORDS = {
    "World": (["Leaders of", "Protests in", "Elections in", "Talks between"], ["France", "Kenya", "Peru", "Japan", "Egypt"], ["end in a truce", "spark a crisis", "draw the UN in", "bring new sanctions"]),
    "Sports": (["Fans of", "The coach of", "Striker from", "Champions"], ["Arsenal", "the Lakers", "Brazil", "the Yankees"], ["win the final", "lose the derby", "sign a goalkeeper", "clinch the title"]),
    "Business": (["Shares of", "Investors in", "Profits at", "The CEO of"], ["Ford", "Nestle", "Boeing", "Walmart"], ["beat earnings forecasts", "cut 900 jobs", "buy a rival", "slump on weak sales"]),
    "Sci/Tech": (["Engineers at", "Researchers with", "A new chip from", "Hackers target"], ["NASA", "Intel", "Google", "a startup"], ["launch a robot", "release software", "build a faster laptop", "find a new planet"]),
}


def headline(label: str, rng: random.Random) -> str:
    a, b, c = WORDS[label]
    return f"{rng.choice(a)} {rng.choice(b)} {rng.choice(c)}."


def chat(label: str, rng: random.Random) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": headline(label, rng)},
        {"role": "assistant", "content": json.dumps({"category": label})},
    ]}


def write_dataset(root: Path) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True)
    for name, per_class in (("train.jsonl", 100), ("test.jsonl", 10)):
        records = [chat(label, rng) for label in LABELS for _ in range(per_class)]
        rng.shuffle(records)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def write_qwen_tokenizer(out_dir: Path, data_dir: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + ["system", "user", "assistant"], trainer=trainer)
    out_dir.mkdir(parents=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "model_max_length": 256, "clean_up_tokenization_spaces": False, "chat_template": CHATML}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


@pytest.fixture()
def tiny_qwen_cards(tmp_path: Path, isolated_user_cards: Path) -> Path:
    data = write_dataset(tmp_path / "ag_news")
    tok = write_qwen_tokenizer(tmp_path / "qwen_tokenizer", data)
    (isolated_user_cards / "tiny_qwen.yaml").write_text(f"""\
name: tiny_qwen_instruct
base: qwen25_instruct          # Qwen2.5 family, tokenizer with use_im_end
model_arch: qwen25_1_5b
init: random
tokenizer: {tok}
model_config:
  model_dim: 64
  num_layers: 2
  num_attn_heads: 4
  num_key_value_heads: 2
  ffn_inner_dim: 192
  vocab_size: 400
  max_seq_len: 256
  tied_embeddings: true
---
name: tiny_ag_news
data: {data}
train: train.jsonl
valid: test.jsonl              # validation scores the same 40 articles during training
test: test.jsonl
task: classification
labels: [World, Sports, Business, Sci/Tech]
""")
    return tmp_path


def _scores(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text())


def test_ag_news_base_vs_finetuned(tiny_qwen_cards: Path) -> None:
    tmp = tiny_qwen_cards
    eval_args = ["dataset=tiny_ag_news", "generator_config.max_gen_len=16"]
    r = run_lmtune_in_process("generate", str(tmp / "eval_base"), "--config", "model=tiny_qwen_instruct", *eval_args)
    assert r.returncode == 0, r.stderr[-3000:]
    base = _scores(tmp / "eval_base")

    r = run_lmtune_in_process(
        "instruction_finetune", str(tmp / "ft"), "--config-file", "qwen25_7b_ag_news", "--config",
        "model=tiny_qwen_instruct", "dataset=tiny_ag_news", "max_num_steps=150", "learning_rate=3e-3",
        "dtype=float32", "data_parallelism=ddp", "activation_checkpointing=false", "max_seq_len=128", "batch_size=16",
        "lr_scheduler.num_warmup_steps=10", "checkpoint_every_n_steps=150", "validate_every_n_steps=150", "tensorboard=false",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # The preset validates with macro F1 on greedy answers, scoring the final checkpoint: it is the best one.
    valid = metric_rows(tmp / "ft", "valid")
    assert valid[-1]["Step"] == 150 and valid[-1]["Eval Examples"] == 40 and valid[-1]["Macro F1"] >= 0.9
    r = run_lmtune_in_process("generate", str(tmp / "eval_tuned"), "--config", f"checkpoint_dir={tmp / 'ft/checkpoints'}", "model=best_checkpoint", *eval_args)
    assert r.returncode == 0, r.stderr[-3000:]
    tuned = _scores(tmp / "eval_tuned")
    print(r.stdout)

    for s in (base, tuned):
        assert s["task"] == "classification" and s["num_examples"] == 40
        assert list(s["per_class"]) == LABELS and all(c["support"] == 10 for c in s["per_class"].values())
        assert (tmp / ("eval_base" if s is base else "eval_tuned") / s["confusion_matrix_png"]).is_file()
    assert base["accuracy"] <= 0.1 and base["invalid"] >= 30  # random weights name no label
    assert tuned["accuracy"] >= 0.9 and tuned["macro_f1"] >= 0.9
    assert min(c["f1"] for c in tuned["per_class"].values()) >= 0.8
    # The fine-tuned model answers in JSON and ends its turn with <|im_end|>.
    rows = [json.loads(line) for line in (tmp / "eval_tuned/generations.jsonl").read_text().splitlines()]
    assert all(row["finish_reason"] == "stop" for row in rows)
    assert sum(isinstance(json.loads(row["completion"]), dict) for row in rows) >= 36
    assert rows[0]["prompt"].startswith("<|im_start|>system\n") and rows[0]["prompt"].endswith("<|im_start|>assistant\n")
