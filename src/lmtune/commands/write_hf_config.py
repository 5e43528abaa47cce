"""``lmtune write_hf_config CHECKPOINT``: export a checkpoint as a complete Hugging Face directory.

Heavy modules load inside ``run`` only, so ``lmtune --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """CHECKPOINT is one of:
  OUT or OUT/checkpoints      a training run: its last checkpoint (output: OUT/checkpoints/step_N/hf)
  OUT/checkpoints/step_N      one checkpoint of a run (output: step_N/hf)
  OUT/best_checkpoint         the run's best-scored checkpoint (early_stopping.metric); also
                              OUT/last_checkpoint, OUT/checkpoint_step_N
  PATH --model ARCH|CARD      any other checkpoint (fairseq2 state dict, Meta consolidated.00.pth,
                              HF safetensors), with its architecture (output: PATH/hf)
  CARD                        a model card with a checkpoint (needs --output)

A LoRA run's checkpoint exports merged (W + B @ A * alpha / rank, an NF4 base dequantized
first); with --adapter, as a PEFT adapter directory (default: step_N/hf_adapter) with its base
model's Hugging Face directory beside it (step_N/hf_adapter_base).

The directory holds config.json, safetensors weights, the tokenizer (with its chat
template) and generation_config.json listing every stop token; vLLM and transformers
load it as is. It appears only once complete.

examples:
  lmtune write_hf_config runs/tiny/checkpoints --verify
  lmtune write_hf_config --model llama3_2_1b /models/my_ckpt --output /models/my_ckpt_hf --dtype bfloat16
"""

SUMMARY = "export a checkpoint as a complete Hugging Face directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's OUT/checkpoints, a step_N directory, OUT/best_checkpoint, a checkpoint path with --model, or a model card")
    parser.add_argument("--model", metavar="ARCH", help="the architecture (e.g. llama3_2_1b, qwen25_7b) or model card the checkpoint holds; needed for checkpoints outside a training run")
    parser.add_argument("--tokenizer", metavar="NAME|PATH", help="tokenizer card, HF tokenizer directory, tiktoken or SentencePiece file (default: the run's or card's tokenizer)")
    parser.add_argument("--output", "-o", metavar="DIR", type=Path, help="output directory (default: step_N/hf beside the checkpoint)")
    parser.add_argument("--dtype", metavar="DTYPE", help="float32, bfloat16 or float16 (default: the checkpoint's own dtype)")
    parser.add_argument("--max-shard-size", metavar="SIZE", default="5GB", help="largest safetensors file before sharding with an index (default: 5GB)")
    parser.add_argument("--verify", action="store_true", help="load the export with transformers and compare its logits with lmtune's model (fails above 1e-4)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--adapter", action="store_true", help="for a LoRA checkpoint: write a PEFT adapter directory and its base model beside it, instead of merged weights")


def run(args: argparse.Namespace) -> None:
    from lmtune.errors import UserError
    from lmtune.export.hf_dir import export_hf, resolve_export

    spec, tokenizer, default_output = resolve_export(args.checkpoint, args.model, args.tokenizer)
    if args.adapter:
        from lmtune.export.peft_adapter import HF_ADAPTER, export_peft_adapter

        if spec.lora is None:
            raise UserError(f"--adapter exports LoRA adapters, and '{args.checkpoint}' is not a LoRA run's checkpoint; export it without --adapter.")
        output = args.output or default_output.with_name(HF_ADAPTER)  # type: ignore[union-attr]
        export_peft_adapter(spec, tokenizer, output, dtype=args.dtype, force=args.force)
        return
    output = args.output or default_output
    if output is None:
        raise UserError(f"'{args.checkpoint}' is a model card, so there is no checkpoint directory to export beside; pass --output DIR.")
    export_hf(spec, tokenizer, output, dtype=args.dtype, max_shard_size=args.max_shard_size, verify=args.verify, force=args.force)
