"""Every place lmtune reaches into fairseq2's private attributes or swaps one of its methods.

fairseq2 0.8.1 leaves a few things lmtune needs without a public door: the trainer's early
stopper and step limit, the token encoders' prefix/suffix ids and Rust tokenizer, a tiktoken
tokenizer's encoding, and the model methods lmtune replaces with faster ones (the LM loss on
target rows, the SwiGLU forward), the gradients between the backward pass and clipping, and the olmo
family's model factory (OLMo 3's sliding layers get plain rope, as in transformers). They live here, each behind ``check_version()``, so a fairseq2
upgrade is one review of this file and another version fails in one sentence instead of silently.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.trainer import Trainer
    from torch import Tensor

WRITTEN_FOR = "0.8.1"
"""The fairseq2 version whose internals this module was written against (and tested with)."""


@cache
def installed_version() -> str | None:
    try:
        return version("fairseq2")
    except PackageNotFoundError:
        return None


def check_version() -> None:
    """Raises one sentence when the installed fairseq2 is not the version these internals were written for."""
    found = installed_version()
    if found != WRITTEN_FOR:
        installed = f"fairseq2 {found} is installed" if found is not None else "fairseq2 is not installed"
        raise UserError(f"lmtune's use of fairseq2's internals was written for fairseq2 {WRITTEN_FOR}, and {installed}; install fairseq2=={WRITTEN_FOR}.")


# ------------------------------------------------------------ the trainer


def set_early_stopper(trainer: object, stopper: object) -> None:
    """fairseq2 0.8.1's Trainer takes an early stopper, but its recipe factory passes none."""
    check_version()
    trainer._early_stopper = stopper  # type: ignore[attr-defined]  # noqa: SLF001


def drop_step_limit(trainer: object) -> None:
    """With a step limit set, fairseq2 0.8.1's post-step check never looks at a stop request;
    without one, ``request_stop()`` ends the run after the current step."""
    check_version()
    trainer._max_num_steps = None  # type: ignore[attr-defined]  # noqa: SLF001


# ------------------------------------------------------------ tokenizers


def encoder_prefix_suffix(encoder: object) -> tuple[list[int], list[int]] | None:
    """The token ids a fairseq2 Hugging Face encoder puts before and after a text; None when it keeps none."""
    check_version()
    if not (hasattr(encoder, "_prefix_indices") and hasattr(encoder, "_suffix_indices")):
        return None
    return encoder._prefix_indices, encoder._suffix_indices  # noqa: SLF001


def encoder_hf_tokenizer(encoder: object) -> Any:
    """The transformers tokenizer under a fairseq2 ``HuggingFaceTokenEncoder`` (None when there is none)."""
    check_version()
    return getattr(getattr(encoder, "_model", None), "_tok", None)


def tiktoken_encoding(tokenizer: object) -> Any:
    """The ``tiktoken.Encoding`` under a fairseq2 tiktoken tokenizer."""
    check_version()
    return tokenizer._model.encoding  # type: ignore[attr-defined]  # noqa: SLF001


# ------------------------------------------------------------ swapped methods


def replace_fused_loss(model: object, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replaces ``model.compute_fused_loss`` (a fairseq2 TransformerLM's training loss, which
    ``compile_loss`` also replaces) with ``make(the current one)``."""
    check_version()
    model.compute_fused_loss = make(model.compute_fused_loss)  # type: ignore[attr-defined]


def replace_forward(module: object, forward: Callable[..., Any]) -> None:
    """Gives one fairseq2 module instance ``forward(module, ...)`` as its forward."""
    check_version()
    module.forward = forward.__get__(module)  # type: ignore[attr-defined]


def call_before_grad_clip(trainer: Trainer, before: Callable[[], None]) -> None:
    """Calls ``before()`` in each step once the gradients are final (normalized by the target
    count, unscaled) and before fairseq2 0.8.1's trainer clips them and the optimizer zeroes them:
    its ``_do_run_step`` computes ``grad_norm`` through ``self._model_dp_facade.clip_grad_norm``."""
    check_version()
    facade = trainer._model_dp_facade  # noqa: SLF001
    clip = facade.clip_grad_norm

    def clip_after(max_norm: float | None) -> Tensor:
        before()
        return clip(max_norm)

    facade.clip_grad_norm = clip_after  # type: ignore[method-assign]  # an instance attribute: only this trainer's facade is swapped


# ------------------------------------------------------------ the dependency container


def dependency_registration(container: object, kind: type, key: str | None = None) -> Any:
    """The registration of ``kind`` (under ``key``) in fairseq2 0.8.1's dependency container, whose
    provider lmtune.safe_load and lmtune.models.olmo3_rope replace in place: the container refuses a
    second registration of a type (and any registration after its first resolve)."""
    check_version()
    registration = getattr(container, "_registrations", {}).get((kind, key))
    if registration is None or not hasattr(registration, "provider"):
        raise RuntimeError(f"fairseq2 0.8.1's dependency container holds no registration of {kind.__name__}" + (f" under '{key}'" if key else ""))
    return registration


def set_model_factory(family: object, factory: Callable[[Any], Any]) -> None:
    """Gives one fairseq2 0.8.1 ``StandardModelFamily`` instance another model factory (its ``_factory``,
    called with the model config inside the device and dtype context of every create and load)."""
    check_version()
    if not hasattr(family, "_factory"):
        raise RuntimeError(f"fairseq2 0.8.1's {type(family).__name__} has no model factory to replace")
    family._factory = factory  # noqa: SLF001


def set_olmo_sliding_rope(factory: object, encoder: object) -> None:
    """fairseq2 0.8.1's ``OLMOFactory`` hands its sliding-window layers ``_sliding_rope_encoder``
    (the YaRN encoder of the full-attention layers when the config has YaRN)."""
    check_version()
    if not hasattr(factory, "_sliding_rope_encoder"):
        raise RuntimeError("fairseq2 0.8.1's OLMOFactory has no sliding-window rotary encoder to replace")
    factory._sliding_rope_encoder = encoder  # noqa: SLF001


def has_registration(container: object, kind: type, key: str) -> bool:
    """Whether fairseq2 0.8.1's dependency container holds a provider of ``kind`` under ``key``, asked
    without resolving anything (a container takes no registration after its first resolve)."""
    check_version()
    return (kind, key) in getattr(container, "_registrations", {})
