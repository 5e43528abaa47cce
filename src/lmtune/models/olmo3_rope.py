"""OLMo 3's rotary encodings as transformers computes them: YaRN on the full-attention layers only.

fairseq2 0.8.1's OLMo factory gives every layer of an OLMo 3 model with YaRN one shared YaRN
encoder ("matching HuggingFace", says its comment). transformers 4.57's ``Olmo3Model``, which the
published checkpoints are run with, keeps two: its sliding-window layers use plain RoPE (its
``rotary_embs["sliding_attention"]`` is built with ``rope_type="default"``) and only its
full-attention layers use YaRN. On a tiny random OLMo 3 (4 layers, window 8, YaRN factor 8) the
logits differ by 5.2 with fairseq2's factory and by 5e-6 with this one. Models without YaRN, OLMo 2
included, are built exactly as fairseq2 builds them.

The fix lives in the olmo family's model factory, so every model fairseq2 creates or loads for
lmtune (training, LoRA bases, generation, export) has it: ``use_transformers_olmo3_rope`` wraps the
family's provider in the dependency container, as lmtune.safe_load wraps the tensor loader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairseq2.models.olmo import OLMOConfig
    from fairseq2.models.transformer_lm import TransformerLM


def create_olmo_model(config: OLMOConfig) -> TransformerLM:
    """fairseq2's OLMo model, with plain RoPE on the sliding-window layers of a model with YaRN."""
    from fairseq2.gang import get_current_gangs
    from fairseq2.models.olmo.factory import OLMOFactory
    from fairseq2.nn.position_encoder import ReferenceRotaryEncoder

    from lmtune.fairseq2_internals import set_olmo_sliding_rope

    factory = OLMOFactory(config, get_current_gangs())
    if config.sliding_window is not None and config.yarn_scale_config is not None:
        # What fairseq2's OLMo 2 layers get: theta only, no scaling.
        plain = ReferenceRotaryEncoder(config.model_dim // config.num_attn_heads, config.max_seq_len, theta=config.rope_theta)
        set_olmo_sliding_rope(factory, plain)
    return factory.create_model()


def use_transformers_olmo3_rope(container: Any) -> None:
    """Makes the ``olmo`` model family of ``container`` build with ``create_olmo_model``; once is enough."""
    from fairseq2.models import ModelFamily
    from fairseq2.models.olmo import OLMO_FAMILY

    from lmtune.fairseq2_internals import dependency_registration, set_model_factory

    registration = dependency_registration(container, ModelFamily, OLMO_FAMILY)
    provider = registration.provider
    if getattr(provider, "olmo3_rope_as_transformers", False) is True:
        return

    def provide(resolver: Any) -> Any:
        family = provider(resolver)
        set_model_factory(family, create_olmo_model)
        return family

    provide.olmo3_rope_as_transformers = True  # type: ignore[attr-defined]
    registration.provider = provide
