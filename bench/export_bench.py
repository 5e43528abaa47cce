"""Time and peak memory of `lmtune write_hf_config` on a model of Llama-3.2-1B's shape.

    .venv/bin/python bench/export_bench.py [--dtype float32|bfloat16] [--export-dtype D] [--verify] [--keep DIR]

Builds a randomly initialised llama3_2_1b (1.24 B parameters; 4.9 GB in float32) as a
training run's checkpoint (OUT/checkpoints/step_1/model/..., model.yaml, tokenizer.yaml
with the tiny tokenizer), then runs the export as a user does, in a fresh process, and
reads that process's peak RSS from the kernel (getrusage of the waited child). Prints
one markdown row: the ratio to the weights' size is what the 1.5x budget is about.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_checkpoint(out: Path, dtype_name: str) -> int:
    """A llama3_2_1b run checkpoint with random weights; returns the weights' size in bytes."""
    import torch
    import yaml
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.utils.structured import ValueConverter

    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import model_config, model_family, resolver
    from lmtune.catalog.specs import ModelSpec, resolve_tokenizer

    dtype = getattr(torch, dtype_name)
    spec = ModelSpec(name="llama3_2_1b", family="llama", arch="llama3_2_1b", config={}, checkpoint=None, source="bench")
    config = model_config(spec)
    # Materialise on CPU from the meta device and fill with noise: much faster than fairseq2's
    # truncated-normal initialisation, and the export only streams bytes.
    model = model_family("llama").create_new_model(config, create_fake_gangs(CPU), dtype, True, False)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name == "final_proj.weight":
                continue  # tied to the embeddings, as fairseq2's checkpoints store it
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32).mul_(0.02))
            state[name] = t.detach()
    checkpoints = out / "checkpoints"
    shard = checkpoints / "step_1" / "model" / "pp_00" / "tp_00"
    shard.mkdir(parents=True)
    torch.save(state, shard / "sdp_00.pt")
    size = sum(t.numel() * t.element_size() for t in state.values())
    unstructured = resolver().resolve(ValueConverter).unstructure(config)
    (checkpoints / "model.yaml").write_text(yaml.safe_dump({"name": "checkpoint", "model_family": "llama", "model_config": unstructured}))
    tokenizer = resolve_tokenizer(CardStore(), "tiny_tokenizer")
    (checkpoints / "tokenizer.yaml").write_text(yaml.safe_dump(tokenizer.as_card()))
    return size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the checkpoint's weights")
    parser.add_argument("--export-dtype", default=None, help="--dtype passed to the export (default: the checkpoint's)")
    parser.add_argument("--verify", action="store_true", help="also pass --verify (loads both models: about 3x the weights)")
    parser.add_argument("--keep", type=Path, help="build in this directory and keep it, instead of a temporary one")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(dir=args.keep.parent if args.keep else None)
    root = args.keep or Path(tmp.name)
    t0 = time.monotonic()
    weights = build_checkpoint(root, args.dtype)
    build_s = time.monotonic() - t0
    command = [sys.executable, "-m", "lmtune", "write_hf_config", str(root / "checkpoints"), "--output", str(root / "hf")]
    if args.export_dtype:
        command += ["--dtype", args.export_dtype]
    if args.verify:
        command.append("--verify")
    # Only the export runs as a child, so the children's peak RSS is the export's.
    t0 = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    export_s = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    written = sum(p.stat().st_size for p in (root / "hf").glob("*.safetensors"))
    verify = next((line for line in result.stderr.splitlines() if "max abs logit difference" in line), "")
    diff = verify.split("difference ")[1].split()[0] if verify else "-"
    today = dt.date.today().isoformat()
    print(f"checkpoint built in {build_s:.0f} s; export stderr:\n{result.stderr.strip()}\n", file=sys.stderr)
    print("| date | machine | weights | export dtype | safetensors written | export wall time (s) | peak RSS | peak / weights | --verify max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {today} | {platform.machine()} {os.cpu_count()} cores | llama3_2_1b {args.dtype}, {weights / 1e9:.2f} GB | {args.export_dtype or args.dtype} | {written / 1e9:.2f} GB | {export_s:.1f} | {peak / 1e9:.2f} GB | {peak / weights:.2f}x | {diff} |")
    if not args.keep:
        tmp.cleanup()


if __name__ == "__main__":
    main()
