"""Export of a transformers-backed checkpoint (``model_family: transformers``): the trained weights
loaded into transformers' own model and written by its ``save_pretrained``, with the tokenizer files
of the run's tokenizer directory. The checkpoint's ``hf.`` key prefix (the wrapper's) disappears
because the wrapped module itself is saved. A LoRA checkpoint's adapters are merged into the weights
first (or left out: ``lora_weights="base"``, the frozen base a PEFT adapter goes on)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lmtune.catalog.specs import ModelSpec, TokenizerSpec


def export_transformers_hf(spec: ModelSpec, tokenizer: TokenizerSpec, output: Path, *, dtype: str | None, log: Callable[[str], None], lora_weights: str = "merged") -> Path:
    import torch

    from lmtune.adapters.build import load_any_model
    from lmtune.adapters.lora import merge_in_place
    from lmtune.dtypes import torch_dtype
    from lmtune.models.transformers_family import TransformersCausalLM

    start = time.monotonic()
    model = load_any_model(spec, dtype=torch_dtype(dtype) if dtype is not None else torch.float32)
    assert isinstance(model, TransformersCausalLM)
    if spec.lora is not None:
        merge_in_place(model, merge=lora_weights == "merged")
    tokenizer_dir = tokenizer.path if tokenizer.path.is_dir() else tokenizer.path.parent
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save_hf_dir(output, tokenizer_dir=tokenizer_dir)
    log(f"lmtune: wrote {type(model.hf).__name__} with transformers' save_pretrained in {time.monotonic() - start:.1f} s")
    log(f"lmtune: exported {spec.name} to {output}")
    return output
