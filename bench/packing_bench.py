"""Fine-tuning throughput with and without packing: lmtune against transformers' Trainer and TRL.

    .venv/bin/python bench/packing_bench.py [--scale full|smoke] [--examples 2000] [--threads 2]
        [--max-seq-len 512] [--max-num-tokens 4096] [--only lmtune_packed,lmtune_length,hf_padded,trl_packed]
        [--record] [--keep DIR]

One epoch over the same synthetic instruction data (deterministic src/tgt JSONL with a skewed,
lognormal length distribution), the same randomly initialised Llama-style model, float32 on CPU,
AdamW with the same lr/betas/eps/weight decay at a constant learning rate, four ways:

  lmtune_packed   `lmtune instruction_finetune ... packing=true` (rows best-fit packed to
                  max_seq_len, batches of up to max_num_tokens, each example attends to itself)
  lmtune_length   the same with packing=false (fairseq2-style length batching, max_num_tokens per batch)
  hf_padded       transformers' Trainer, plain random padded batches (its default, group_by_length=False)
                  of a fixed batch size chosen so the mean real tokens per batch is about max_num_tokens
  trl_packed      TRL's SFTTrainer with packing=True (its default best-fit packing, padding-free),
                  max_num_tokens // max_seq_len rows of up to max_seq_len tokens per batch

Every example is encoded once with lmtune's own encoder (lmtune.data.encoding.ExampleEncoder), so the
transformers children train on exactly the token ids and loss masks lmtune trains on, and the
total target (loss) token count of every contender is checked to be the same.
Each contender runs in its own process with the same OMP_NUM_THREADS; its peak RSS is that
process's, from the kernel (wait4). transformers' Trainer needs `accelerate` and the last contender
needs `trl`; neither is in lmtune's venv, so they go into a side venv (--hf-venv) layered over it:
it sees the project venv's packages (the same torch and transformers) and holds only what pip
resolves beside them with the venv's versions as constraints. The project venv is never changed.

Reported per contender: target tokens/s over the training loop (first step start to last step end)
and in the steady state (after step 1), time to first step (from process start), training and total
wall time, the share of padded positions among the positions computed, peak RSS, and model FLOPs
utilisation: useful model FLOPs per second, 6 * N * tokens + 6 * layers * model_dim * sum(len^2)
(N = weights in matrix products: the layers plus the output projection, not the embedding lookup;
tokens and len over the real tokens of each example, so padding and attention across examples
count as waste), divided by this machine's float32 matmul rate, measured in the same run
(torch.mm of 2048x2048 float32 matrices, best of 5, before and after the contenders; the higher is used).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from side_venv import hf_venv

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO / "assets/tiny/tokenizer"
WORDS_FROM = REPO / "assets/tiny/gsm8k/sft/train.jsonl"
RESULTS = REPO / "bench/RESULTS.md"
RESULTS_MARKER = "<!-- packing_bench --record inserts results below this line -->"
RESULTS_PLACEHOLDER = "No full-size run recorded yet."
CARD_NAME = "packing_bench_llama"
VOCAB_SIZE = 512  # the tiny tokenizer's 476 tokens, rounded up
PAD_IDX = 2

CONTENDERS = ("lmtune_packed", "lmtune_length", "hf_padded", "trl_packed")
SCALES = {
    "full": {"model_dim": 512, "num_layers": 8, "num_attn_heads": 8, "num_key_value_heads": 4, "ffn_inner_dim": 1536},
    "smoke": {"model_dim": 128, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 512},
}
# The same optimizer on every side: AdamW, constant learning rate, no warmup, clipping at 1.0.
LEARNING_RATE = 3e-4
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
SEED = 2
# Packages the side directory must never shadow: the children must train on the venv's own.

TARGETS = "packed >= 1.3x length-batched and >= 2x transformers padded in target tokens/s; packed padding <= 3%; packed MFU >= 40%"


@dataclass
class Result:
    name: str
    steps: int = 0
    target_tokens: int = 0
    train_s: float = math.nan  # first step start to last step end
    total_s: float = math.nan  # the whole process
    first_step_s: float = math.nan  # process start to the end of step 1
    steady_tps: float = math.nan  # target tokens/s after step 1
    padding: float = math.nan  # padded positions / positions computed
    peak_rss: int = 0  # bytes
    note: str = ""  # why it was skipped or failed

    @property
    def tps(self) -> float:
        return self.target_tokens / self.train_s if self.train_s > 0 else math.nan

    @property
    def ok(self) -> bool:
        return not self.note and self.steps > 0


# ---------------------------------------------------------------- data


def word_pool() -> list[str]:
    """Words the tiny tokenizer was trained on (its GSM8K-style data), so tokens per word stay realistic."""
    words = set()
    for line in WORDS_FROM.read_text().splitlines():
        record = json.loads(line)
        words.update(w for w in re.findall(r"[A-Za-z]+", record["src"] + " " + record["tgt"]))
    return sorted(words)


def skewed_lengths(rng: random.Random, max_seq_len: int) -> tuple[int, int]:
    """Prompt and response lengths: log-normal, medians ~45 and ~75 tokens, scaled down to fit a row with BOS and EOS."""
    prompt = max(8, round(rng.lognormvariate(math.log(45), 0.7)))
    response = max(8, round(rng.lognormvariate(math.log(75), 0.9)))
    room = max_seq_len - 2
    if prompt + response > room:
        prompt, response = max(8, room * prompt // (prompt + response)), max(8, room * response // (prompt + response))
    return prompt, response


def make_records(n: int, seed: int, max_seq_len: int) -> list[dict[str, str]]:
    """src/tgt records whose prompt and response lengths in tokens are lognormal (medians ~45 and ~75,
    a long tail), the two together capped so that prompt + response + BOS/EOS fit max_seq_len."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    rng = random.Random(seed)
    words = word_pool()

    def sentence() -> str:
        parts = [str(rng.randint(0, 999)) if rng.random() < 0.25 else rng.choice(words) for _ in range(rng.randint(4, 12))]
        return " ".join(parts).capitalize() + "."

    def text(start: str, budget: int) -> str:
        # Byte-level BPE splits at spaces, so token counts of " sentence" pieces add up.
        out, used = start, len(tokenizer.encode(start, add_special_tokens=False).ids)
        while True:
            piece = " " + sentence()
            cost = len(tokenizer.encode(piece, add_special_tokens=False).ids)
            if used + cost > budget and out != start:
                return out
            out, used = out + piece, used + cost

    def length(record: dict[str, str]) -> int:
        return sum(len(tokenizer.encode(record[k], add_special_tokens=False).ids) for k in ("src", "tgt")) + 2  # BOS, EOS

    records = []
    for _ in range(n):
        prompt, response = skewed_lengths(rng, max_seq_len)
        record = {"src": text("Question:", prompt), "tgt": text("Answer:", response)}
        while length(record) > max_seq_len:  # a first sentence longer than its budget: draw again, shorter
            prompt, response = max(8, prompt * 9 // 10), max(8, response * 9 // 10)
            record = {"src": text("Question:", prompt), "tgt": text("Answer:", response)}
        records.append(record)
    return records


def encode(records: list[dict[str, str]], data_file: Path, tokenizer) -> list[tuple[list[int], list[bool]]]:  # type: ignore[no-untyped-def]
    """Token ids and loss masks exactly as lmtune's recipe encodes them."""
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import Record

    encoder = ExampleEncoder(tokenizer, None)
    out = []
    for i, r in enumerate(records, start=1):
        example = encoder.encode(Record(file=data_file, line=i, src=r["src"], tgt=r["tgt"]))
        out.append((example.tokens, example.target_mask))
    return out


def percentiles(values: list[int]) -> str:
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return f"mean {sum(s) / len(s):.0f}, p10 {pick(0.1)}, p50 {pick(0.5)}, p90 {pick(0.9)}, p99 {pick(0.99)}, max {s[-1]}"


# ---------------------------------------------------------------- model


def write_card(asset_dir: Path, scale: dict[str, int], max_seq_len: int) -> None:
    """A user model card like assets/tiny.yaml's tiny_llama, at the benchmark's size."""
    asset_dir.mkdir(parents=True)
    config = "\n".join(f"  {k}: {v}" for k, v in scale.items())
    (asset_dir / "packing_bench.yaml").write_text(
        f"name: {CARD_NAME}\nmodel_family: llama\nmodel_arch: llama3_2_1b\ninit: random\ntokenizer_ref: tiny_tokenizer\n"
        f"model_config:\n{config}\n  vocab_size: {VOCAB_SIZE}\n  pad_idx: {PAD_IDX}\n  tied_embeddings: true\n  max_seq_len: {max_seq_len}\n"
    )


def resolve_card():  # type: ignore[no-untyped-def]
    """The card's fairseq2 model config and its tokenizer, as lmtune resolves them (LMTUNE_USER_ASSET_DIR set)."""
    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import load_tokenizer, model_config
    from lmtune.catalog.specs import resolve_model

    spec = resolve_model(CardStore(), CARD_NAME, None)
    return model_config(spec), load_tokenizer(spec.tokenizer)


def transformers_config(config, tokenizer) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The same model as a transformers LlamaConfig (lmtune's exporter's key-by-key mapping)."""
    import transformers
    from lmtune.export.hf_config import SpecialIds, hf_config

    vocab = tokenizer.vocab_info
    ids = SpecialIds(bos=vocab.bos_idx, eos=vocab.eos_idx, pad=vocab.pad_idx, stops=[vocab.eos_idx])
    return hf_config("llama", config, ids, "float32", transformers.__version__)


def matmul_params(hf: dict[str, object]) -> int:
    """Weights in matrix products: attention and SwiGLU of every layer, plus the output projection."""
    d, heads, kv = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_key_value_heads"])  # type: ignore[call-overload]
    head_dim, ffn = int(hf["head_dim"]), int(hf["intermediate_size"])  # type: ignore[call-overload]
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * ffn
    return int(hf["num_hidden_layers"]) * per_layer + d * int(hf["vocab_size"])  # type: ignore[call-overload]


def model_flops(hf: dict[str, object], lengths: list[int]) -> float:
    """Training FLOPs of one epoch: 6 * N * tokens + 6 * layers * model_dim * sum(len^2) (causal attention)."""
    n, layers, d = matmul_params(hf), int(hf["num_hidden_layers"]), int(hf["hidden_size"])  # type: ignore[call-overload]
    return 6.0 * n * sum(lengths) + 6.0 * layers * d * sum(n_ * n_ for n_ in lengths)


def matmul_gflops(size: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------- running the contenders


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float, int]:
    """Runs one contender; returns exit status, start (epoch s), wall seconds and the process's peak RSS in bytes."""
    with log.open("w") as fp:
        start, t0 = time.time(), time.monotonic()
        proc = subprocess.Popen(command, stdout=fp, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, start, time.monotonic() - t0, usage.ru_maxrss * 1024  # Linux reports KiB


def failure(name: str, log: Path, rc: int) -> Result:
    tail = " / ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-3:])
    return Result(name, note=f"failed (exit {rc}): {tail[-300:]} [log: {log}]")


def child_env(args: argparse.Namespace, work: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
            "LMTUNE_USER_ASSET_DIR": str(work / "assets"), "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_CACHE": str(work / "hf-cache"), "HF_HUB_OFFLINE": "1"}


def lmtune_config(args: argparse.Namespace, work: Path) -> Path:
    path = work / "lmtune.yaml"
    path.write_text(
        f"model: {CARD_NAME}\ndataset: {work / 'data/train.jsonl'}\nmax_seq_len: {args.max_seq_len}\nmax_num_tokens: {args.max_num_tokens}\n"
        f"max_num_data_epochs: 1\nmax_num_steps: 1000000\nlearning_rate: {LEARNING_RATE}\nmax_grad_norm: 1.0\ndtype: float32\nseed: {SEED}\n"
        f"checkpoint_every_n_steps: 1000000\npublish_metrics_every_n_steps: 1\ntensorboard: false\n"
        f"optimizer:\n  weight_decay: {WEIGHT_DECAY}\n  betas: [{BETAS[0]}, {BETAS[1]}]\n  eps: {EPS}\n"
        "lr_scheduler:\n  num_warmup_steps: 0\n  final_lr_scale: 1.0\n"
    )
    return path


def run_lmtune(name: str, packing: bool, args: argparse.Namespace, work: Path) -> Result:
    out = work / name
    command = [sys.executable, "-m", "lmtune", "instruction_finetune", str(out), "--config-file", str(work / "lmtune.yaml"),
               "--config", f"packing={'true' if packing else 'false'}"]
    rc, start, total, rss = run_child(command, child_env(args, work), work / f"{name}.log")
    if rc != 0:
        return failure(name, work / f"{name}.log", rc)
    rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
    ends = [dt.datetime.fromisoformat(r["Time"]).timestamp() for r in rows]
    targets = [int(r["Number of Target Elements"]) for r in rows]
    if sum(targets) != int(rows[-1]["Total Number of Target Elements"]):
        return Result(name, note="train.jsonl does not hold one row per step (publish_metrics_every_n_steps=1 expected)")
    real = sum(r["Number of Elements"] for r in rows)
    padded = sum(r["Padding"] for r in rows)
    return Result(
        name, steps=len(rows), target_tokens=sum(targets), train_s=ends[-1] - (ends[0] - rows[0]["Lapse Time"]),
        total_s=total, first_step_s=ends[0] - start, steady_tps=steady(ends, targets), padding=padded / (real + padded), peak_rss=rss,
    )


def steady(ends: list[float], targets: list[int]) -> float:
    """Target tokens/s after the first step (which carries the warm-up)."""
    return sum(targets[1:]) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else math.nan


def run_transformers(name: str, args: argparse.Namespace, work: Path, python: Path, hf: dict[str, object], batch_size: int) -> Result:
    spec = {"kind": name, "threads": args.threads, "data": str(work / "data/encoded.json"), "hf_config": hf, "batch_size": batch_size,
            "max_seq_len": args.max_seq_len, "output": str(work / name), "result": str(work / f"{name}.json")}
    (work / f"{name}.spec.json").write_text(json.dumps(spec))
    command = [str(python), str(Path(__file__).resolve()), "--child", str(work / f"{name}.spec.json")]
    rc, start, total, rss = run_child(command, child_env(args, work), work / f"{name}.log")
    if rc != 0:
        return failure(name, work / f"{name}.log", rc)
    r = json.loads((work / f"{name}.json").read_text())
    ends, batches = r["step_ends"], r["batches"]
    if len(ends) != len(batches):
        return Result(name, note=f"{len(ends)} steps but {len(batches)} batches; expected one batch per step [log: {work / f'{name}.log'}]")
    targets = [b["targets"] for b in batches]
    positions = sum(b["positions"] for b in batches)
    real = sum(b["real_positions"] for b in batches)
    return Result(
        name, steps=len(ends), target_tokens=sum(targets), train_s=ends[-1] - r["begin"], total_s=total, first_step_s=ends[0] - start,
        steady_tps=steady(ends, targets), padding=1 - real / positions, peak_rss=rss,
    )


# ---------------------------------------------------------------- the transformers side (runs in a child)


def transformers_child(spec_file: Path) -> None:
    """Trains one epoch with transformers' Trainer (padded) or TRL's SFTTrainer (packed) as a user would."""
    spec = json.loads(spec_file.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainerCallback, TrainingArguments

    data = json.loads(Path(spec["data"]).read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**spec["hf_config"], attn_implementation="sdpa"))
    batches: list[dict[str, int]] = []  # per collated batch; the loader runs one batch ahead of the steps
    step_ends: list[float] = []
    begin = [0.0]

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            begin[0] = time.time()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            step_ends.append(time.time())

    def counting(collate):  # type: ignore[no-untyped-def]
        def collate_and_count(features):  # type: ignore[no-untyped-def]
            batch = collate(features)
            labels = batch["labels"]
            batches.append({
                "targets": int((labels[:, 1:] != -100).sum()),  # the model shifts labels by one
                "positions": labels.numel(),
                "real_positions": int(batch["attention_mask"].sum()) if "attention_mask" in batch else labels.numel(),  # TRL: one flat row
            })
            return batch
        return collate_and_count

    common = dict(
        output_dir=spec["output"], num_train_epochs=1, learning_rate=LEARNING_RATE, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        adam_epsilon=EPS, weight_decay=WEIGHT_DECAY, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, seed=SEED,
        use_cpu=True, save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
    )
    if spec["kind"] == "hf_padded":
        trainer = Trainer(
            model=model, args=TrainingArguments(per_device_train_batch_size=spec["batch_size"], **common), train_dataset=data,
            data_collator=counting(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)), callbacks=[Clock()],
        )
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(max_length=spec["max_seq_len"], packing=True, per_device_train_batch_size=spec["batch_size"], **common)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer, callbacks=[Clock()])
        trainer.data_collator = counting(trainer.data_collator)
    trainer.train()
    Path(spec["result"]).write_text(json.dumps({"begin": begin[0], "step_ends": step_ends, "batches": batches}))


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}, git {commit}{' (uncommitted changes)' if dirty else ''}"


def table(results: list[Result], flops: float, peak_gflops: float) -> str:
    lines = [
        "| contender | steps | target tokens | target tok/s (training) | target tok/s (steady) | time to 1st step (s) "
        "| training wall (s) | total wall (s) | padding | peak RSS (GiB) | model GFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.ok:
            lines.append(f"| {r.name} | {r.note} |" + " |" * 10)
            continue
        achieved = flops / r.train_s / 1e9
        lines.append(
            f"| {r.name} | {r.steps} | {r.target_tokens:,} | {r.tps:,.0f} | {r.steady_tps:,.0f} | {r.first_step_s:.1f} | {r.train_s:.1f} | {r.total_s:.1f} "
            f"| {100 * r.padding:.1f}% | {r.peak_rss / 2**30:.2f} | {achieved:.1f} | {100 * achieved / peak_gflops:.1f}% |"
        )
    return "\n".join(lines)


def checks(results: dict[str, Result], flops: float, peak_gflops: float) -> list[str]:
    packed = results.get("lmtune_packed")
    out = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for other, factor in (("lmtune_length", 1.3), ("hf_padded", 2.0)):
        o = results.get(other)
        if packed and packed.ok and o and o.ok:
            ratio = packed.tps / o.tps
            out.append(f"- packed / {other} target tokens/s: {ratio:.2f}x (target >= {factor}x): {verdict(ratio >= factor)}")
        else:
            out.append(f"- packed / {other} target tokens/s (target >= {factor}x): n/a (not run)")
    if packed and packed.ok:
        mfu = flops / packed.train_s / 1e9 / peak_gflops
        out.append(f"- packed padding: {100 * packed.padding:.1f}% (target <= 3%): {verdict(packed.padding <= 0.03)}")
        out.append(f"- packed MFU: {100 * mfu:.1f}% of {peak_gflops:.0f} GFLOP/s (target >= 40%): {verdict(mfu >= 0.40)}")
    return out


def record(text: str) -> None:
    """Newest results first, right under the packing section's marker (at the end when it is missing)."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if RESULTS_MARKER in current:
        head, tail = current.split(RESULTS_MARKER, 1)
        rest = tail.replace(RESULTS_PLACEHOLDER, "", 1).lstrip("\n")
        RESULTS.write_text(f"{head}{RESULTS_MARKER}\n\n{text.rstrip()}\n" + (f"\n{rest}" if rest else ""))
    else:
        RESULTS.write_text(current.rstrip() + f"\n\n{text.rstrip()}\n")


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help="model size: full (512 dim, 8 layers, ~25M weights) or smoke (128 dim, 2 layers)")
    parser.add_argument("--model-dim", type=int, help="override the scale's model_dim")
    parser.add_argument("--layers", type=int, help="override the scale's num_layers")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--max-num-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS / torch threads of every contender")
    parser.add_argument("--only", default=",".join(CONTENDERS), help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--hf-venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmtune/packing-bench-venv",
                        help="side venv for accelerate and trl, layered over this venv (which is never changed)")
    parser.add_argument("--record", action="store_true", help=f"also write the results into {RESULTS.relative_to(REPO)}")
    parser.add_argument("--keep", type=Path, help="keep data, runs and logs in this (new) directory")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        transformers_child(args.child)
        return

    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CONTENDERS]
    if unknown:
        parser.error(f"--only: unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    scale = dict(SCALES[args.scale])
    if args.model_dim:
        scale["model_dim"] = args.model_dim
    if args.layers:
        scale["num_layers"] = args.layers
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    if args.max_seq_len < 64:
        parser.error("--max-seq-len must be at least 64 (the generated examples are at least a few sentences long)")
    if args.max_num_tokens < args.max_seq_len:
        parser.error("--max-num-tokens must be at least --max-seq-len")

    import torch

    torch.set_num_threads(args.threads)
    if args.keep:
        args.keep.mkdir(parents=True)
        work = args.keep.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="packing-bench-"))

    # Model card, data and the one encoding every contender trains on.
    write_card(work / "assets", scale, args.max_seq_len)
    os.environ["LMTUNE_USER_ASSET_DIR"] = str(work / "assets")
    config, tokenizer = resolve_card()
    hf = transformers_config(config, tokenizer)
    (work / "data").mkdir()
    data_file = work / "data/train.jsonl"
    records = make_records(args.examples, args.seed, args.max_seq_len)
    encoded = encode(records, data_file, tokenizer)
    kept = [i for i, (tokens, _) in enumerate(encoded) if len(tokens) <= args.max_seq_len]
    if len(kept) < len(encoded):
        print(f"dropped {len(encoded) - len(kept)} generated examples longer than {args.max_seq_len} tokens", file=sys.stderr)
    records, encoded = [records[i] for i in kept], [encoded[i] for i in kept]
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "data/encoded.json").write_text(json.dumps([{"input_ids": t, "labels": [x if m else -100 for x, m in zip(t, mask)]} for t, mask in encoded]))
    lmtune_config(args, work)

    lengths = [len(t) for t, _ in encoded]
    expected_targets = sum(sum(mask) for _, mask in encoded)
    flops = model_flops(hf, lengths)
    batch_padded = max(1, round(args.max_num_tokens * len(lengths) / sum(lengths)))
    rows_trl = max(1, args.max_num_tokens // args.max_seq_len)
    n_weights = matmul_params(hf)
    host = machine()
    print(f"machine: {host}; {args.threads} thread(s) per contender")
    print(f"model: {CARD_NAME} (llama3_2_1b family) {scale}, vocab {VOCAB_SIZE}: {n_weights / 1e6:.1f}M weights in matrix products, float32")
    print(f"data: {len(lengths)} examples, {sum(lengths):,} tokens, {expected_targets:,} target tokens; "
          f"max_seq_len {args.max_seq_len}, max_num_tokens {args.max_num_tokens}")
    print(f"  prompt tokens:   {percentiles([len(t) - sum(m) for t, m in encoded])}")
    print(f"  response tokens: {percentiles([sum(m) for _, m in encoded])}")
    print(f"  total tokens:    {percentiles(lengths)}")
    print(f"batches: lmtune max_num_tokens={args.max_num_tokens}; hf_padded batch_size={batch_padded} (~{batch_padded * sum(lengths) / len(lengths):.0f} real tokens); "
          f"trl_packed {rows_trl} rows of <= {args.max_seq_len} tokens")
    print(f"model FLOPs of the epoch: {flops / 1e12:.2f} TFLOP (6 * {n_weights / 1e6:.1f}M * tokens + 6 * layers * model_dim * sum(len^2))")
    gflops_before = matmul_gflops()
    print(f"float32 matmul rate (2048x2048 torch.mm, best of 5, {args.threads} threads): {gflops_before:.1f} GFLOP/s", flush=True)

    hf_python, deps_line, trl_reason = None, "", ""
    if {"hf_padded", "trl_packed"} & set(only):
        hf_python, deps_line, trl_reason = hf_venv(args.hf_venv, "trl_packed" in only)
        print(f"accelerate/trl: {deps_line}" + (f"; trl: {trl_reason}" if trl_reason else ""), flush=True)

    results: dict[str, Result] = {}
    for name in only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name in ("lmtune_packed", "lmtune_length"):
            results[name] = run_lmtune(name, name == "lmtune_packed", args, work)
        elif hf_python is None:
            results[name] = Result(name, note=f"skipped: {deps_line}")
        elif name == "trl_packed" and trl_reason:
            results[name] = Result(name, note=f"skipped: {trl_reason}")
        else:
            batch = batch_padded if name == "hf_padded" else rows_trl
            results[name] = run_transformers(name, args, work, hf_python, hf, batch)
        r = results[name]
        print(f"  {name}: {r.note or f'{r.steps} steps, {r.tps:,.0f} target tokens/s'}", file=sys.stderr, flush=True)
    gflops_after = matmul_gflops()
    peak = max(gflops_before, gflops_after)

    mismatched = [f"{r.name} {r.target_tokens:,}" for r in results.values() if r.ok and r.target_tokens != expected_targets]
    text = "\n".join([
        f"### packing_bench, {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"- command: `{' '.join(['bench/packing_bench.py', *sys.argv[1:]])}`",
        f"- machine: {host}; {args.threads} thread(s) per contender; float32 matmul {gflops_before:.1f} / {gflops_after:.1f} GFLOP/s (before / after)",
        f"- model {scale}, {n_weights / 1e6:.1f}M matmul weights; {len(lengths)} examples, {sum(lengths):,} tokens "
        f"(p50 {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}), {expected_targets:,} target tokens, one epoch; "
        f"max_seq_len {args.max_seq_len}, max_num_tokens {args.max_num_tokens}, hf_padded batch_size {batch_padded}, trl_packed {rows_trl} rows",
        *([f"- accelerate/trl: {deps_line}" + (f"; trl: {trl_reason}" if trl_reason else "")] if deps_line else []),
        "",
        table(list(results.values()), flops, peak),
        "",
        f"Targets ({TARGETS}):",
        *checks(results, flops, peak),
        *([f"- target token counts differ (expected {expected_targets:,}): {', '.join(mismatched)}"] if mismatched else
          [f"- every contender that ran trained on the same {expected_targets:,} target tokens"] if any(r.ok for r in results.values()) else []),
    ])
    print()
    print(text)
    if args.record:
        record(text)
        print(f"\nrecorded in {RESULTS}")
    failed = mismatched or any(not r.ok and not r.note.startswith("skipped") for r in results.values())
    if args.keep or failed:
        print(f"\ndata, runs and logs: {work}")
    else:
        shutil.rmtree(work)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
