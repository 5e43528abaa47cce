"""The SFT benchmark's contenders, each in its own process: lmtune, transformers' Trainer and TRL's SFTTrainer
(bench/packing_bench.py runs them and tables what they report).

Each contender is a row of CONTENDERS: which tool, packed or not, and the precision settings it runs with.
"defaults" rows leave the tool's precision and checkpointing settings alone, as a user who writes no flags
gets them; the others set them, so that one precision can be compared across tools. The optimizer (AdamW,
constant learning rate, clipping at 1.0) is the same on every row: tokens/s does not depend on it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft_workload import CARD_NAME, REPO, TOKENIZER_DIR

LEARNING_RATE = 3e-4
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
SEED = 2


@dataclass(kw_only=True, frozen=True)
class Contender:
    tool: str  # lmtune, hf (transformers' Trainer) or trl (SFTTrainer, packing=True)
    settings: dict[str, object] = field(default_factory=dict)  # lmtune: --config keys; hf/trl: TrainingArguments/SFTConfig fields
    what: str = ""


CONTENDERS: dict[str, Contender] = {
    "lmtune_packed": Contender(tool="lmtune", settings={"packing": "true"}, what="lmtune's defaults (dtype=auto, packing)"),
    "lmtune_packed_fp32": Contender(tool="lmtune", settings={"packing": "true", "dtype": "float32"}),
    "lmtune_length": Contender(tool="lmtune", settings={"packing": "false"}, what="length batching at lmtune's default precision"),
    "lmtune_length_fp32": Contender(tool="lmtune", settings={"packing": "false", "dtype": "float32"}),
    "hf_padded": Contender(tool="hf", what="Trainer's defaults (bf16=False: float32 on CPU)"),
    "hf_padded_bf16": Contender(tool="hf", settings={"bf16": True}),
    "trl_packed": Contender(tool="trl", what="SFTConfig's defaults (bf16=True, gradient_checkpointing=True)"),
    "trl_packed_bf16": Contender(tool="trl", settings={"gradient_checkpointing": False}),
    "trl_packed_fp32": Contender(tool="trl", settings={"bf16": False, "gradient_checkpointing": False}),
}


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
    precision: str = ""  # float32 or bfloat16: what the row's matrix products ran in (its MFU's reference rate)
    checkpointing: bool = False
    note: str = ""  # why it was skipped or failed

    @property
    def tps(self) -> float:
        return self.target_tokens / self.train_s if self.train_s > 0 else math.nan

    @property
    def ok(self) -> bool:
        return not self.note and self.steps > 0


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float, int]:
    """Runs one contender; returns exit status, start (epoch s), wall seconds and the process's peak RSS in bytes."""
    with log.open("w") as fp:
        start, t0 = time.time(), time.monotonic()
        proc = subprocess.Popen(command, stdout=fp, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), start, time.monotonic() - t0, usage.ru_maxrss * 1024  # Linux reports KiB


def failure(name: str, log: Path, rc: int) -> Result:
    tail = " / ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-3:])
    return Result(name, note=f"failed (exit {rc}): {tail[-300:]} [log: {log}]")


def child_env(threads: int, work: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "LMTUNE_USER_ASSET_DIR": str(work / "assets"), "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_CACHE": str(work / "hf-cache"), "HF_HUB_OFFLINE": "1"}


def lmtune_config(work: Path, max_seq_len: int, max_num_tokens: int) -> Path:
    """The run's config; dtype is left to lmtune's default (auto) unless a row sets it."""
    path = work / "lmtune.yaml"
    path.write_text(
        f"model: {CARD_NAME}\ndataset: {work / 'data/train.jsonl'}\nmax_seq_len: {max_seq_len}\nmax_num_tokens: {max_num_tokens}\n"
        f"max_num_data_epochs: 1\nmax_num_steps: 1000000\nlearning_rate: {LEARNING_RATE}\nmax_grad_norm: 1.0\nseed: {SEED}\n"
        f"checkpoint_every_n_steps: 1000000\npublish_metrics_every_n_steps: 1\ntensorboard: false\n"
        f"optimizer:\n  weight_decay: {WEIGHT_DECAY}\n  betas: [{BETAS[0]}, {BETAS[1]}]\n  eps: {EPS}\n"
        "lr_scheduler:\n  num_warmup_steps: 0\n  final_lr_scale: 1.0\n"
    )
    return path


def steady(ends: list[float], targets: list[int]) -> float:
    """Target tokens/s after the first step (which carries the warm-up)."""
    return sum(targets[1:]) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else math.nan


def run_lmtune(name: str, threads: int, work: Path) -> Result:
    out, log = work / name, work / f"{name}.log"
    overrides = [f"{k}={v}" for k, v in CONTENDERS[name].settings.items()]
    command = [sys.executable, "-m", "lmtune", "instruction_finetune", str(out), "--config-file", str(work / "lmtune.yaml"), "--config", *overrides]
    rc, start, total, rss = run_child(command, child_env(threads, work), log)
    if rc != 0:
        return failure(name, log, rc)
    rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
    ends = [dt.datetime.fromisoformat(r["Time"]).timestamp() for r in rows]
    targets = [int(r["Number of Target Elements"]) for r in rows]
    if sum(targets) != int(rows[-1]["Total Number of Target Elements"]):
        return Result(name, note="train.jsonl does not hold one row per step (publish_metrics_every_n_steps=1 expected)")
    real = sum(r["Number of Elements"] for r in rows)
    padded = sum(r["Padding"] for r in rows)
    said = next((line for line in log.read_text(errors="replace").splitlines() if "precision: " in line), "")
    return Result(
        name, steps=len(rows), target_tokens=sum(targets), train_s=ends[-1] - (ends[0] - rows[0]["Lapse Time"]),
        total_s=total, first_step_s=ends[0] - start, steady_tps=steady(ends, targets), padding=padded / (real + padded), peak_rss=rss,
        precision="bfloat16" if "bf16 autocast" in said else "float32",
    )


def run_transformers(name: str, threads: int, work: Path, python: Path, hf: dict[str, object], batch_size: int, max_seq_len: int) -> Result:
    c = CONTENDERS[name]
    spec = {"tool": c.tool, "settings": c.settings, "threads": threads, "data": str(work / "data/encoded.json"), "hf_config": hf,
            "batch_size": batch_size, "max_seq_len": max_seq_len, "output": str(work / name), "result": str(work / f"{name}.json")}
    (work / f"{name}.spec.json").write_text(json.dumps(spec))
    command = [str(python), str(Path(__file__).resolve()), str(work / f"{name}.spec.json")]
    log = work / f"{name}.log"
    rc, start, total, rss = run_child(command, child_env(threads, work), log)
    if rc != 0:
        return failure(name, log, rc)
    r = json.loads((work / f"{name}.json").read_text())
    ends, batches = r["step_ends"], r["batches"]
    if len(ends) != len(batches):
        return Result(name, note=f"{len(ends)} steps but {len(batches)} batches; expected one batch per step [log: {log}]")
    targets = [b["targets"] for b in batches]
    positions = sum(b["positions"] for b in batches)
    real = sum(b["real_positions"] for b in batches)
    return Result(
        name, steps=len(ends), target_tokens=sum(targets), train_s=ends[-1] - r["begin"], total_s=total, first_step_s=ends[0] - start,
        steady_tps=steady(ends, targets), padding=1 - real / positions, peak_rss=rss,
        precision="bfloat16" if r["bf16"] else "float32", checkpointing=r["gradient_checkpointing"],
    )


# ---------------------------------------------------------------- the transformers side (runs in a child of the side venv)


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
        per_device_train_batch_size=spec["batch_size"], **spec["settings"],
    )
    if spec["tool"] == "hf":
        args = TrainingArguments(**common)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()],
                          data_collator=counting(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)))
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(max_length=spec["max_seq_len"], packing=True, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer, callbacks=[Clock()])
        trainer.data_collator = counting(trainer.data_collator)
    trainer.train()
    Path(spec["result"]).write_text(json.dumps({"begin": begin[0], "step_ends": step_ends, "batches": batches,
                                                "bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing)}))


if __name__ == "__main__":
    transformers_child(Path(sys.argv[1]))
