"""What ``lora.*`` asks of a fine-tuning run, checked before fairseq2 starts.

A run from a model card (or a full fine-tuning checkpoint) with ``lora.rank`` set trains
new adapters on it. A new stage from a LoRA run's checkpoint (``model=last_checkpoint
resume_checkpoint_dir=...``) continues that run's adapters on the same base, with its
rank, alpha, targets and quantization.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lmtune.catalog.specs import LoraSpec, ModelSpec
from lmtune.errors import UserError
from lmtune.options.finetune import FinetuneOptions


@dataclass(kw_only=True)
class LoraPlan:
    spec: LoraSpec
    """The adapters' settings and the frozen base model the run loads."""
    adapter_init: Path | None = None
    """An earlier LoRA run's step_N/model whose adapters this run starts from."""


def plan_lora(o: FinetuneOptions, model: ModelSpec) -> LoraPlan | None:
    from lmtune.adapters.lora import LORA_FAMILIES, target_names

    lo = o.lora
    if lo.rank is not None and lo.rank < 1:
        raise UserError(f"config key 'lora.rank' must be at least 1, got {lo.rank}; leave it unset (null) to train every weight.")
    if lo.alpha <= 0:
        raise UserError(f"config key 'lora.alpha' must be positive, got {lo.alpha}.")
    if not 0 <= lo.dropout < 1:
        raise UserError(f"config key 'lora.dropout' must be at least 0 and below 1, got {lo.dropout}.")
    if model.lora is not None:  # a new stage from a LoRA checkpoint: continue its adapters
        earlier = model.lora
        rank = earlier.settings.rank
        if lo.rank is not None and lo.rank != rank:
            raise UserError(f"model={model.name} holds LoRA adapters of rank {rank}, which this stage continues; leave lora.rank unset or set it to {rank}.")
        from lmtune.adapters.build import check_lora_base

        check_lora_base(model)
        # The earlier adapters' settings, with this stage's dropout and seed.
        settings = dataclasses.replace(earlier.settings, dropout=lo.dropout)
        return LoraPlan(spec=LoraSpec(settings=settings, base=earlier.base, seed=o.seed), adapter_init=model.checkpoint)
    if lo.rank is None:
        if lo.quantize != "none":
            raise UserError(f"lora.quantize={lo.quantize} quantizes the frozen base of a LoRA run; also set lora.rank (e.g. lora.rank=16).")
        return None
    if model.family not in LORA_FAMILIES:
        what = f"lora.quantize={lo.quantize}" if lo.quantize != "none" else "LoRA"
        raise UserError(f"{what} is not supported for model '{model.name}' of family '{model.family}'; lmtune adapts {', '.join(LORA_FAMILIES)} models.")
    if model.checkpoint is None:
        raise UserError(f"LoRA trains adapters on a model's weights, and model '{model.name}' has none (init: random); name a model card with a checkpoint, or leave lora.rank unset.")
    if lo.quantize != "none" and model.family == "transformers":
        raise UserError(f"lora.quantize={lo.quantize} is not supported for model '{model.name}', which lmtune builds through transformers; train its LoRA adapters without lora.quantize.")
    if lo.quantize == "nf4" and o.data_parallelism == "fsdp":
        raise UserError("lora.quantize=nf4 runs with data_parallelism=ddp (each rank keeps the whole 4-bit base); set data_parallelism=ddp.")
    if model.family == "transformers":  # its own linear layers' names, as PEFT takes them
        from lmtune.adapters.transformers_lora import transformers_target_names

        targets = transformers_target_names(lo.targets, model)
    else:
        targets = target_names(lo.targets, model.name, model.family)
    settings = dataclasses.replace(lo, targets=targets)
    return LoraPlan(spec=LoraSpec(settings=settings, base=model, seed=o.seed))
