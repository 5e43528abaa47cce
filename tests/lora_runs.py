"""A base model with weights for LoRA tests, and LoRA runs of the tiny preset on it.

The base is a Llama-3-style model (tiny_llama's vocabulary and tokenizer, 256 wide, so a
checkpoint of its adapters is small beside one of all its weights) with seeded random
weights, stored as a Hugging Face directory and named by a user card ``lora_base``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from helpers import losses, run_lmtune_in_process  # noqa: F401 (losses: the LoRA tests read runs through this module)
from tiny_builders import build_tiny_model, write_hf_dir

if TYPE_CHECKING:
    import torch

BASE_CONFIG: dict[str, object] = {
    "model_dim": 256, "num_layers": 2, "num_attn_heads": 4, "num_key_value_heads": 2, "ffn_inner_dim": 1024,
    "vocab_size": 512, "pad_idx": 2, "tied_embeddings": True, "max_seq_len": 512,
}

RUN_ARGS = [
    "--config-file", "tiny_gsm8k", "--config", "model=lora_base", "max_num_steps=6", "checkpoint_every_n_steps=3",
    "publish_metrics_every_n_steps=1", "keep_last_n_checkpoints=2", "max_num_tokens=1024", "tensorboard=false",
    "learning_rate=3e-3", "lr_scheduler.num_warmup_steps=0",
    "dtype=float32",  # the base is 256 wide, where dtype=auto picks bf16 on a CPU with a bf16 unit; the tests compare with float32 references
]
LORA_ARGS = ["lora.rank=4", "lora.alpha=8", "lora.dropout=0.1"]


def write_base(root: Path) -> Path:
    """The base's HF directory and its card; returns the user card directory."""
    tiny = build_tiny_model("llama", "llama3_2_1b", BASE_CONFIG, seed=3)
    for key, t in tiny.state_dict.items():
        # Logits of a few units, not tens: a loss that falls in a few steps, and float32 logits
        # that two implementations can agree on to 1e-5.
        if key == "decoder_frontend.embed.weight":
            t.mul_(0.25)
        elif not key.endswith("norm.weight"):
            t.mul_(0.5)
    hf = write_hf_dir(tiny, root / "base_hf")
    cards = root / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    (cards / "lora_base.yaml").write_text(yaml.safe_dump({"name": "lora_base", "base": "tiny_llama", "model_config": BASE_CONFIG, "checkpoint": str(hf)}))
    return cards


def train(out: Path, cards: Path, *extra: str) -> Path:
    """``lmtune instruction_finetune OUT`` with RUN_ARGS and ``extra`` keys; returns OUT."""
    result = run_lmtune_in_process("instruction_finetune", str(out), *RUN_ARGS, *extra, env={"LMTUNE_USER_ASSET_DIR": str(cards)})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def adapter_tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA checkpoint's step directory (the adapters alone)."""
    from lmtune.adapters.lora import read_checkpoint_tensors

    return read_checkpoint_tensors(step_dir / "model")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
