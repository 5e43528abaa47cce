"""The model family a LoRA run names in fairseq2's recipe: the base's own, but loading nothing.

fairseq2 0.8.1's trainer loads the model (whole, in the training dtype) before the recipe's
``setup_model`` sees it. A QLoRA run would then hold the full float32 base before quantizing
it, and that would be its peak memory. Registered under ``<family>+lora_base`` (the recipe's
``register``), this family is the real one in every respect (architectures, FSDP, activation
checkpointing, compilation, the family name written to ``model.yaml``) except that loading a
checkpoint returns the model on the meta device, with no weights in it. ``setup_model``
(``lmtune.adapters.build.lora_training_model``) then reads the base tensor by tensor, quantizing each projection
as it arrives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fairseq2.assets import AssetCard
from fairseq2.data_type import DataType
from fairseq2.gang import Gangs
from fairseq2.models import ModelFamily
from fairseq2.nn.fsdp import FSDPWrapper
from fairseq2.runtime.dependency import DependencyContainer, DependencyResolver
from torch import Tensor
from torch.nn import Module

SUFFIX = "+lora_base"


def lora_base_family_key(family: str) -> str:
    return family + SUFFIX


def base_family_name(key: str) -> str:
    return key.removesuffix(SUFFIX)


class EmptyLoadModelFamily(ModelFamily):
    """``base`` with ``load_model`` / ``load_custom_model`` creating the model on the meta device."""

    def __init__(self, base: ModelFamily) -> None:
        self._base = base

    def load_model(self, card: AssetCard, gangs: Gangs, dtype: DataType, config: object | None, load_rank0_only: bool, mmap: bool) -> Module:
        return self._empty(self._base.get_model_config(card) if config is None else config, gangs, dtype)

    def load_custom_model(self, path: Path, config: object, gangs: Gangs, dtype: DataType, load_rank0_only: bool, mmap: bool, restrict: bool | None) -> Module:
        return self._empty(config, gangs, dtype)

    def _empty(self, config: object, gangs: Gangs, dtype: DataType) -> Module:
        # A family that cannot build on the meta device (transformers-backed: its constructors compute
        # buffers) is built with fresh weights instead, which the base's are read over.
        return self._base.create_new_model(config, gangs, dtype, meta=self._base.supports_meta, init_rank0_only=True)

    # Everything else is the base family's.
    def get_archs(self) -> set[str]:
        return self._base.get_archs()

    def maybe_get_arch_config(self, arch: str) -> object | None:
        return self._base.maybe_get_arch_config(arch)

    def get_model_config(self, card: AssetCard) -> object:
        return self._base.get_model_config(card)

    def create_new_model(self, config: object, gangs: Gangs, dtype: DataType, meta: bool, init_rank0_only: bool) -> Module:
        return self._base.create_new_model(config, gangs, dtype, meta, init_rank0_only)

    def iter_checkpoint(self, path: Path, config: object, gangs: Gangs, mmap: bool, restrict: bool | None) -> Iterator[tuple[str, Tensor]]:
        return self._base.iter_checkpoint(path, config, gangs, mmap, restrict)

    def compile(self, model: Module, *args: Any, **kwargs: Any) -> None:
        self._base.compile(model, *args, **kwargs)

    def apply_fsdp(self, model: Module, granularity: str, wrapper: FSDPWrapper) -> Module:
        return self._base.apply_fsdp(model, granularity, wrapper)

    def apply_layerwise_ac(self, model: Module, every_nth_layer: int) -> Module:
        return self._base.apply_layerwise_ac(model, every_nth_layer)

    @property
    def name(self) -> str:
        return self._base.name

    @property
    def kls(self) -> type[Module]:
        return self._base.kls

    @property
    def config_kls(self) -> type[object]:
        return self._base.config_kls

    @property
    def supports_meta(self) -> bool:
        return self._base.supports_meta

    @property
    def supports_model_parallelism(self) -> bool:
        return self._base.supports_model_parallelism

    @property
    def supports_compilation(self) -> bool:
        return self._base.supports_compilation

    @property
    def supports_fsdp(self) -> bool:
        return self._base.supports_fsdp

    @property
    def supports_layerwise_ac(self) -> bool:
        return self._base.supports_layerwise_ac


def register_lora_base_families(container: DependencyContainer) -> None:
    """``llama+lora_base``, ``qwen+lora_base``, ... beside fairseq2's own families (a recipe's ``register``)."""
    from lmtune.adapters.lora import LORA_FAMILIES

    for family in LORA_FAMILIES:

        def create(resolver: DependencyResolver, family: str = family) -> ModelFamily:
            return EmptyLoadModelFamily(resolver.resolve(ModelFamily, key=family))

        container.register(ModelFamily, create, key=lora_base_family_key(family), singleton=True)
