"""Reading a LoRA run's frozen base into a model built on the meta device, one tensor at a time.

The model already has its LoRA projections (``apply_lora`` on the meta device); each tensor
of the base's checkpoint is converted to the training dtype as it is read, and an NF4
projection is quantized there and then, so a QLoRA run never holds its base in float32.
The checkpoint is read through fairseq2's own loader (every format and key layout a card
may point at: ``lmtune.models.loading.iter_model_tensors``), memory-mapped; the file
pages already read are handed back to the kernel as the load goes, so they do not add the
checkpoint's size to the process's memory either.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from lmtune.catalog.specs import ModelSpec
from lmtune.errors import UserError

# Bytes read between two hand-backs of the checkpoint's file pages.
DROP_EVERY_BYTES = 256 * 2**20
MADV_DONTNEED = 4


def load_base_weights(model: Module, spec: ModelSpec, tensors: Iterable[tuple[str, Tensor]], *, device: torch.device, dtype: torch.dtype) -> None:
    """Fills every frozen weight of ``model`` from ``tensors``, ``spec``'s checkpoint as
    ``lmtune.models.loading.iter_model_tensors`` reads it; the adapters are left alone."""
    from fairseq2.nn.utils.module import reset_non_persistent_buffers

    from lmtune.adapters.lora import LoraLinear, is_adapter_key

    places: dict[int, list[tuple[Module, str]]] = {}  # each frozen tensor -> where it goes (two places when tied)
    tensor_of: dict[str, int] = {}  # its keys (two when tied) -> the tensor
    for module_name, module in model.named_modules():
        persistent = [(b, t) for b, t in module._buffers.items() if b not in module._non_persistent_buffers_set]
        for attr, p in [*module._parameters.items(), *persistent]:
            key = f"{module_name}.{attr}" if module_name else attr
            if p is not None and not is_adapter_key(key):
                tensor_of[key] = id(p)
                places.setdefault(id(p), []).append((module, attr))

    files = mapped_files(Path(spec.checkpoint)) if spec.checkpoint is not None else set()
    loaded: set[int] = set()
    since_drop = 0
    for key, tensor in tensors:
        if key not in tensor_of:
            if key.endswith("rotary_emb.inv_freq"):
                continue  # transformers < 4.31 saved this buffer; it is recomputed
            raise UserError(f"model '{spec.name}': checkpoint {spec.checkpoint} holds '{key}', which its {spec.family} architecture does not have; is model_config right?")
        target = places[tensor_of[key]]
        module, attr = target[0]
        expected = getattr(module, attr).shape
        if tuple(tensor.shape) != tuple(expected):
            raise UserError(f"model '{spec.name}': '{key}' in checkpoint {spec.checkpoint} has shape {tuple(tensor.shape)}, the model's is {tuple(expected)}; is model_config right?")
        value = tensor.to(device=device, dtype=dtype, copy=True)  # never a view of the mapped file
        if isinstance(module, LoraLinear) and attr == "weight":
            module.set_base_weight(value)
        else:
            value = Parameter(value, requires_grad=False) if attr in module._parameters else value
            for m, a in target:
                slots: dict[str, Any] = m._parameters if a in m._parameters else m._buffers
                slots[a] = value
        del value
        loaded.add(tensor_of[key])
        since_drop += tensor.numel() * tensor.element_size()
        del tensor
        if since_drop >= DROP_EVERY_BYTES:
            drop_file_pages(files)
            since_drop = 0
    drop_file_pages(files)

    missing = sorted(key for key, t in tensor_of.items() if t not in loaded)
    if missing:
        raise UserError(f"model '{spec.name}': checkpoint {spec.checkpoint} lacks {len(missing)} weights of its {spec.family} architecture (first: '{missing[0]}'); is model_config right?")
    for module in model.modules():  # rotary tables and the like: computed, not read
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device=device)
    reset_non_persistent_buffers(model)


def mapped_files(checkpoint: Path) -> set[str]:
    """The real paths of the checkpoint's files, as /proc/self/maps names them."""
    return {os.path.realpath(f) for f in ([checkpoint] if checkpoint.is_file() else checkpoint.rglob("*"))}


def drop_file_pages(files: set[str]) -> None:
    """Hands the pages of these files' memory mappings back to the kernel.

    Their tensors have been copied (``copy=True`` above) or are still to be read; nothing
    writes to them, so a page read again later is simply read from the file again. Linux
    only; elsewhere the pages stay until the mapping is closed."""
    if not files:
        return
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in files:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            madvise(start, end - start, MADV_DONTNEED)
