"""LoRA: low-rank adapters beside the frozen projections of a fairseq2 Llama or Qwen model (or the linear
layers of a transformers-backed one: ``lmtune.adapters.transformers_lora``).

    y = base(x) + (dropout(x) @ A^T @ B^T) * alpha / rank

A (rank x in) starts Kaiming-uniform and B (out x rank) at zero, so before the first
update the model is exactly the base model. Only A and B train. With ``quantize="nf4"``
(QLoRA) the frozen weight is kept as torchao's 4-bit ``NF4Tensor`` in a plain attribute,
out of reach of the optimizer, the state dict and data-parallel broadcasts; it is
dequantized on the fly in each forward (torchao's ``linear_nf4``).

The model's state dict then holds the adapters only, so fairseq2's checkpoints do too:
the base weights are reloaded from the base model's own files (``lmtune.models.loading``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import Dropout, Module, ModuleList, Parameter
from torch.nn.functional import linear

from lmtune.adapters.transformers_lora import adapted_paths as linear_layers
from lmtune.errors import UserError
from lmtune.models.hf_keys import HF_FAMILIES, projection_modules
from lmtune.models.transformers_family import TransformersCausalLM
from lmtune.options.lora import ALL_LINEAR, LoraSettings
from lmtune.safe_load import load_torch_file

if TYPE_CHECKING:
    from fairseq2.nn import Linear
    from torch.nn.modules.module import _IncompatibleKeys
    from torchao.dtypes.nf4tensor import NF4Tensor

# Hugging Face projection name -> fairseq2 module inside decoder.layers.N (Llama and Qwen alike),
# from the one fairseq2 <-> Hugging Face key table.
TARGET_MODULES: dict[str, str] = projection_modules()

LORA_FAMILIES = (*HF_FAMILIES, "gpt2", "transformers")
# The projections a family lacks: GPT-2's MLP has no gate (its up/down are c_fc/c_proj, its q/k/v one c_attn).
ABSENT_PROJECTIONS: dict[str, tuple[str, ...]] = {"gpt2": ("gate_proj",)}
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")

# NF4 blocks: 64 weights share a scale; scales are quantized in groups of up to 256.
NF4_BLOCK_SIZE = 64
NF4_SCALER_BLOCK_SIZE = 256


def target_names(targets: list[str] | str, model_name: str, family: str = "llama") -> list[str]:
    """``lora.targets`` -> the Hugging Face projection names (Llama's, for every family), checked."""
    known = [n for n in TARGET_MODULES if n not in ABSENT_PROJECTIONS.get(family, ())]
    names = list(known) if targets == ALL_LINEAR else [targets] if isinstance(targets, str) else list(targets)
    valid = ", ".join([*known, ALL_LINEAR])
    for name in names:
        if name not in known:
            raise UserError(f"config key 'lora.targets': '{name}' is not a projection of model '{model_name}'; valid: {valid}.")
    if not names:
        raise UserError(f"config key 'lora.targets' is empty; name projections of model '{model_name}' ({valid}).")
    return [n for n in TARGET_MODULES if n in names]  # the table's order, each once


def check_nf4_shape(weight: Tensor, name: str) -> None:
    if weight.numel() % NF4_BLOCK_SIZE != 0:
        raise UserError(f"lora.quantize=nf4: weight '{name}' has {weight.numel()} elements, not a multiple of the NF4 block size {NF4_BLOCK_SIZE}; train without lora.quantize.")


def to_nf4(weight: Tensor) -> NF4Tensor:
    from torchao.dtypes.nf4tensor import to_nf4 as torchao_to_nf4

    blocks = weight.numel() // NF4_BLOCK_SIZE
    return torchao_to_nf4(weight.detach(), NF4_BLOCK_SIZE, math.gcd(blocks, NF4_SCALER_BLOCK_SIZE))


class LoraLinear(Module):
    """A frozen projection (weight, optional bias) plus a trainable low-rank update."""

    def __init__(self, base: Linear, rank: int, alpha: float, dropout: float, *, quantize: str = "none", generator: torch.Generator | None = None, device: torch.device | None = None) -> None:
        """``base`` may be on the meta device (its weights read later: ``set_base_weight``);
        the adapters are made on ``device`` (default: the base weight's)."""
        super().__init__()
        weight: Tensor = base.weight
        device = weight.device if device is None else device
        self.input_dim, self.output_dim = weight.shape[1], weight.shape[0]
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.quantized = quantize == "nf4"
        self.weight: Parameter | None = Parameter(weight.detach(), requires_grad=False)
        self.nf4_weight: NF4Tensor | None = None  # a plain attribute: never a parameter, never in the state dict
        if not weight.is_meta:
            self.set_base_weight(weight)
        bias = base.bias
        self.bias = None if bias is None else Parameter(bias.detach(), requires_grad=False)
        self.dropout = Dropout(dropout) if dropout > 0 else None
        self.adapter_off = False  # True: the base projection alone (a preference run's reference model)
        self.lora_a = Parameter(torch.empty(rank, self.input_dim, device=device, dtype=torch.float32))
        self.lora_b = Parameter(torch.zeros(self.output_dim, rank, device=device, dtype=torch.float32))
        # As torch.nn.Linear initialises its weight; with B = 0 the update starts at exactly 0.
        cpu = torch.empty(rank, self.input_dim)
        torch.nn.init.kaiming_uniform_(cpu, a=math.sqrt(5), generator=generator)
        with torch.no_grad():
            self.lora_a.copy_(cpu)

    def set_base_weight(self, weight: Tensor) -> None:
        """The frozen weight, as it is (already on the device, in the training dtype), or NF4-quantized."""
        if self.quantized:
            self.nf4_weight = to_nf4(weight)
            self.weight = None
        else:
            self.weight = Parameter(weight.detach(), requires_grad=False)

    def base_weight(self) -> Tensor:
        """The frozen weight in float32 (dequantized for NF4)."""
        if self.nf4_weight is not None:
            return self.nf4_weight.get_original_weight()
        return self.frozen_weight().detach()

    def frozen_weight(self) -> Tensor:
        """The frozen weight as stored: NF4 or a plain parameter."""
        weight = self.nf4_weight if self.quantized else self.weight
        if weight is None:
            raise RuntimeError("the LoRA projection's frozen weight has not been read yet (set_base_weight)")
        return weight

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.frozen_weight(), self.bias)
        if self.adapter_off:
            return y
        h = self.dropout(x) if self.dropout is not None else x
        if not torch.is_autocast_enabled(h.device.type):  # under autocast linear casts h itself: no float32 copy of it first
            h = h.to(self.lora_a.dtype)
        low = linear(h, self.lora_a) * self.scale  # (..., rank): scaled while small
        if low.dtype != y.dtype:
            return y + linear(low, self.lora_b).to(y.dtype)
        # y + low B^T in one matrix product: no pass over the (..., out) output to scale or add.
        return torch.addmm(y.reshape(-1, self.output_dim), low.reshape(-1, self.rank), self.lora_b.t()).view(y.shape)

    def merged_weight(self) -> Tensor:
        """W + B @ A * alpha / rank, in float32."""
        return self.base_weight().float() + (self.lora_b.detach() @ self.lora_a.detach()) * self.scale

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, output_dim={self.output_dim}, rank={self.rank}, alpha={self.alpha}, nf4={self.quantized}"


def num_layers(model: Module) -> int:
    layers = model.get_submodule("decoder.layers")
    if not isinstance(layers, ModuleList):
        raise TypeError(f"LoRA adapts fairseq2 decoder-only models, whose decoder.layers is a ModuleList; this model's is a {type(layers).__name__}")
    return len(layers)


def adapted_paths(model: Module, targets: list[str]) -> list[str]:
    """The module paths that get adapters: each layer's targeted projections, layer by layer
    (a transformers-backed model's: its linear layers that the PEFT-style names match)."""
    if isinstance(model, TransformersCausalLM):
        return [f"hf.{path}" for path in linear_layers(model.hf, targets)]
    return [f"decoder.layers.{layer}.{TARGET_MODULES[hf]}" for layer in range(num_layers(model)) for hf in targets]


def apply_lora(model: Module, settings: LoraSettings, *, seed: int = 0, device: torch.device | None = None) -> Module:
    """Freezes ``model`` and replaces each targeted projection with a LoraLinear; in place.
    ``settings`` as planned (``lmtune.adapters.plan``): a rank and the projections' names.

    ``model`` may be on the meta device: the adapters are then made on ``device`` and the
    frozen weights are read afterwards (``lmtune.adapters.base_weights.load_base_weights``)."""
    rank, alpha, dropout, quantize = settings.adapter_rank(), settings.alpha, settings.dropout, settings.quantize
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)  # the same A on every rank and every rebuild
    for path in adapted_paths(model, settings.target_list()):
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, attr)
        if quantize == "nf4":
            check_nf4_shape(base.weight, path + ".weight")
        setattr(parent, attr, LoraLinear(base, rank, alpha, dropout, quantize=quantize, generator=generator, device=device))
    keep_only_adapters_in_state_dict(model)
    return model


def is_adapter_key(key: str) -> bool:
    return key.endswith(ADAPTER_SUFFIXES)


def keep_only_adapters_in_state_dict(model: Module) -> None:
    """The model's state dict (and so fairseq2's checkpoints) holds the adapters alone, and loading
    one back does not ask for the frozen weights, which come from the base model's files."""

    def drop_frozen(module: Module, state_dict: dict[str, object], prefix: str, local_metadata: object) -> None:
        for key in [k for k in state_dict if not is_adapter_key(k)]:
            del state_dict[key]

    def allow_missing_frozen(module: Module, incompatible: _IncompatibleKeys) -> None:
        missing = incompatible.missing_keys
        missing[:] = [k for k in missing if is_adapter_key(k)]

    model.register_state_dict_post_hook(drop_frozen)
    model.register_load_state_dict_post_hook(allow_missing_frozen)


def lora_modules(model: Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoraLinear):
            yield name, m


@contextmanager
def adapters_off(model: Module) -> Iterator[None]:
    """``model`` computes as its base model inside the block: every LoRA update left out."""
    modules = [m for _, m in lora_modules(model)]
    for m in modules:
        m.adapter_off = True
    try:
        yield
    finally:
        for m in modules:
            m.adapter_off = False


def merge_in_place(model: Module, *, merge: bool = True) -> Module:
    """Each LoraLinear of ``model`` replaced by a ``torch.nn.Linear`` holding W + B @ A * scale
    (``merge=False``: W alone), in the frozen weight's dtype: the plain model, to save as it is."""
    for name, a in list(lora_modules(model)):
        weight = a.merged_weight() if merge else a.base_weight().float()
        dtype = a.frozen_weight().dtype if not a.quantized else torch.float32
        plain = torch.nn.Linear(a.input_dim, a.output_dim, bias=a.bias is not None, device=weight.device, dtype=dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if a.bias is not None:
                plain.bias.copy_(a.bias)
        parent_path, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_path), attr, plain.requires_grad_(False))
    return model


def merged_tensors(model: Module, *, merge: bool = True) -> Iterable[tuple[str, Tensor]]:
    """fairseq2 name -> tensor of the merged model: W + B @ A * scale for the adapted projections
    (dequantized first under NF4), every other weight as it is. ``merge=False``: the base's W alone."""
    adapted = dict(lora_modules(model))
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name in adapted:
            a = adapted[name]
            yield f"{name}.weight", a.merged_weight() if merge else a.base_weight().float()
            if a.bias is not None:
                yield f"{name}.bias", a.bias.detach()
            continue
        if any(name.startswith(a + ".") for a in adapted):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield (f"{name}.{pname}" if name else pname), p.detach()


def read_checkpoint_tensors(model_dir: Path) -> dict[str, Tensor]:
    """The tensors of a fairseq2 checkpoint's step_N/model directory: one replicated file (DDP), or
    FSDP's shards (sdp_00.pt, sdp_01.pt, ...), each holding its rank's rows, joined along dim 0."""
    files = sorted(model_dir.glob("pp_00/tp_00/sdp_*.pt"))
    if not files:
        raise UserError(f"{model_dir} holds no checkpoint file.")
    shards: list[dict[str, Tensor]] = []
    for file in files:
        state = load_torch_file(file)
        shards.append(state["model"] if isinstance(state.get("model"), dict) else state)
    if len(shards) == 1:
        return shards[0]
    return {key: torch.cat([shard[key] for shard in shards], dim=0) for key in shards[0]}


def load_adapters(model: Module, model_dir: Path) -> None:
    """Copies a LoRA checkpoint's adapters into ``model`` (built with the same settings)."""
    state = read_checkpoint_tensors(model_dir)
    expected = {k for k in model.state_dict() if is_adapter_key(k)}
    if set(state) != expected:
        raise UserError(f"{model_dir} does not hold this model's LoRA adapters (it has {len(set(state) & expected)} of {len(expected)} adapter tensors); was it trained with other lora settings?")
    model.load_state_dict(state, strict=True)
