"""A LoRA checkpoint -> a PEFT adapter directory, with its base model exported beside it.

    OUT_DIR/adapter_config.json          PEFT's LoraConfig: r, lora_alpha, target_modules, ...
    OUT_DIR/adapter_model.safetensors    base_model.model.model.layers.N.<module>.lora_A.weight (r x in)
                                         and .lora_B.weight (out x r), in Hugging Face layout
    OUT_DIR_base/                        the frozen base as a Hugging Face directory (an NF4 base
                                         dequantized, exactly as the run computed with it)

``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT_DIR_base), OUT_DIR)`` is then
lmtune's LoRA model. A transformers-backed model's adapters keep its own module names (its
``lora.targets`` are PEFT's ``target_modules``). Llama's q/k rows are reordered into HF's rotary layout, and since the
update is B @ A, reordering B's rows reorders the update's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.catalog.specs import ModelSpec, TokenizerSpec
from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.models.llama import LLaMAConfig
    from fairseq2.models.qwen import QwenConfig

HF_ADAPTER = "hf_adapter"
PEFT_PREFIX = "base_model.model."


def base_dir_of(adapter_dir: Path) -> Path:
    return adapter_dir.with_name(adapter_dir.name + "_base")


def export_peft_adapter(
    spec: ModelSpec, tokenizer: TokenizerSpec, output: Path, *, dtype: str | None = None, force: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> Path:
    """Writes the adapter at ``output`` and the base's HF directory at ``output``_base."""
    import torch
    from safetensors.torch import save_file

    from lmtune.adapters.build import load_any_model
    from lmtune.adapters.lora import lora_modules
    from lmtune.dtypes import DTYPES, torch_dtype
    from lmtune.export.hf_config import head_dim
    from lmtune.export.hf_dir import export_hf
    from lmtune.files import replace_dir
    from lmtune.models.hf_keys import cast, hf_name, to_hf_tensor
    from lmtune.models.loading import model_config

    if spec.lora is None:
        raise UserError(f"--adapter exports LoRA adapters, and {spec.source} is a full fine-tuning checkpoint; export it without --adapter.")
    lora = spec.lora.settings
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not a dtype the export can write; valid: {', '.join(DTYPES)}.")
    output = output.expanduser().absolute()
    base_dir = base_dir_of(output)
    for path in (output, base_dir):
        if path.exists() and not force:
            raise UserError(f"{path} already exists; pass --force to replace it, or choose another --output.")

    export_hf(spec, tokenizer, base_dir, dtype=dtype, force=force, log=log, lora_weights="base")
    target = torch_dtype(dtype) if dtype is not None else torch.float32
    adapters = [(name, module.lora_a.detach(), module.lora_b.detach()) for name, module in lora_modules(load_any_model(spec))]
    layout: dict[str, object] = {"target_modules": sorted(lora.target_list()), "fan_in_fan_out": False}
    if spec.family == "transformers":  # transformers' own module names under the wrapper's ``hf.``, A and B as they are
        hf_adapters = {name.removeprefix("hf."): (a, b) for name, a, b in adapters}
    elif spec.family == "gpt2":  # q/k/v fused into c_attn, Conv1D modules (lmtune.models.gpt2_hf)
        from lmtune.models.gpt2_hf import peft_adapter

        hf_adapters, layout = peft_adapter(adapters, lora.adapter_rank(), lora.alpha)
    else:
        config = typing.cast("LLaMAConfig | QwenConfig", model_config(spec))  # the key-table families: llama, qwen, olmo
        hdim = head_dim(spec.family, config)
        hf_adapters = {hf_name(f"{name}.weight", spec.family).removesuffix(".weight"): (a, to_hf_tensor(f"{name}.weight", b, spec.family, config, hdim)) for name, a, b in adapters}
    tensors: dict[str, torch.Tensor] = {}
    for hf_module, (a, b) in hf_adapters.items():
        tensors[f"{PEFT_PREFIX}{hf_module}.lora_A.weight"] = cast(hf_module, a, target).contiguous()
        tensors[f"{PEFT_PREFIX}{hf_module}.lora_B.weight"] = cast(hf_module, b, target).contiguous()
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_dir),
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "bias": "none", "use_rslora": False, "use_dora": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, **layout,
    }

    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"lmtune: exported the LoRA adapter of {spec.name} to {output} (rank {lora.rank}, {len(tensors) // 2} projections), its base to {base_dir}")
    return output
