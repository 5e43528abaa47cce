"""GPT-2 as a fairseq2 model family: learned positions, LayerNorm, a GELU MLP, biases, a tied head.

Built from fairseq2's own blocks (``TransformerLM``, pre-LN ``StandardTransformerLMDecoderLayer``,
``StandardMultiheadAttention``, ``StandardFeedForwardNetwork``, ``LearnedPositionEncoder``), so
packing, generation with a KV cache, FSDP, activation checkpointing and lmtune's speed paths work
as they do for Llama. Positions come from each example's ``BatchLayout``, so in a packed batch
they restart at 0 for every example, as they would if the examples ran alone.

GPT-2's tensors as transformers stores them, and back: ``lmtune.models.gpt2_hf``. Its tokenizer
(byte-level BPE from a ``tokenizer.json``): ``lmtune.models.gpt2_tokenizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import torch
from fairseq2.models.transformer import (
    CausalAttentionBias,
    StandardFeedForwardNetwork,
    StandardMultiheadAttention,
    TransformerEmbeddingFrontend,
    TransformerNormOrder,
    create_default_sdpa,
)
from fairseq2.models.transformer_lm import (
    StandardTransformerLMDecoder,
    StandardTransformerLMDecoderLayer,
    TransformerLM,
)
from fairseq2.nn import (
    LearnedPositionEncoder,
    Linear,
    StandardEmbedding,
    StandardLayerNorm,
    TiedProjection,
)
from torch import nn

if TYPE_CHECKING:
    from fairseq2.runtime.dependency import DependencyContainer
    from fairseq2.utils.validation import ValidationResult

GPT2_FAMILY: Final = "gpt2"

# transformers' GPT2Config names for the GELU GPT-2 uses ("gelu_new" is the tanh approximation).
GELU_APPROXIMATIONS: Final = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


@dataclass(kw_only=True)
class Gpt2Config:
    """GPT-2 small by default (transformers' ``GPT2Config()``: 124M parameters)."""

    model_dim: int = 768
    """n_embd."""
    max_seq_len: int = 1024
    """n_positions: the learned position table's length."""
    vocab_size: int = 50_257
    num_layers: int = 12
    """n_layer."""
    num_attn_heads: int = 12
    """n_head."""
    ffn_inner_dim: int = 3072
    """n_inner (transformers' default: 4 * n_embd)."""
    activation: str = "gelu_new"
    """transformers' ``activation_function``: gelu_new (GPT-2's tanh approximation) or gelu."""
    layer_norm_eps: float = 1e-5
    dropout_p: float = 0.1
    """On the embeddings, the attention weights and each residual branch (GPT-2's embd/attn/resid_pdrop)."""
    init_std: float = 0.02
    """initializer_range; the two output projections of a layer get init_std / sqrt(2 * num_layers)."""

    def validate(self) -> ValidationResult:
        """fairseq2's check of a config (its recipes run it on a card's model_config; so does lmtune.models.loading)."""
        from fairseq2.utils.validation import ValidationResult

        result = ValidationResult()
        if self.activation not in GELU_APPROXIMATIONS:
            result.add_error(f"`activation` must be one of GPT-2's ({', '.join(GELU_APPROXIMATIONS)}), but is '{self.activation}' instead.")
        if self.num_attn_heads < 1 or self.model_dim % self.num_attn_heads:
            result.add_error(f"`model_dim` ({self.model_dim}) must be a multiple of `num_attn_heads` ({self.num_attn_heads}).")
        if not 0.0 <= self.dropout_p < 1.0:
            result.add_error(f"`dropout_p` must be in [0, 1), but is {self.dropout_p} instead.")
        return result


def register_gpt2_configs(container: DependencyContainer) -> None:
    from fairseq2.runtime.config_registry import ConfigRegistrar

    arch = ConfigRegistrar(container, Gpt2Config)

    @arch("gpt2")
    def gpt2() -> Gpt2Config:
        return Gpt2Config()

    @arch("gpt2_medium")
    def gpt2_medium() -> Gpt2Config:
        return Gpt2Config(model_dim=1024, num_layers=24, num_attn_heads=16, ffn_inner_dim=4096)

    @arch("gpt2_large")
    def gpt2_large() -> Gpt2Config:
        return Gpt2Config(model_dim=1280, num_layers=36, num_attn_heads=20, ffn_inner_dim=5120)

    @arch("gpt2_xl")
    def gpt2_xl() -> Gpt2Config:
        return Gpt2Config(model_dim=1600, num_layers=48, num_attn_heads=25, ffn_inner_dim=6400)

    @arch("gpt2_tiny")
    def gpt2_tiny() -> Gpt2Config:
        """For tests and trying things on a CPU: 2 layers of 64, 256 tokens of context."""
        return Gpt2Config(model_dim=64, max_seq_len=256, vocab_size=512, num_layers=2, num_attn_heads=4, ffn_inner_dim=256, dropout_p=0.0)


class Gpt2PositionEncoder(LearnedPositionEncoder):  # type: ignore[misc]  # fairseq2 marks it @final; only the initialisation differs
    """fairseq2's learned positions (row 0 is padding's, always zero) initialised as GPT-2's wpe."""

    def __init__(self, encoding_dim: int, max_seq_len: int, std: float) -> None:
        self.init_std = std
        super().__init__(encoding_dim, max_seq_len)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)
        with torch.no_grad():
            self.weight[0].fill_(0.0)


def create_gpt2_model(config: Gpt2Config) -> TransformerLM:
    result = config.validate()
    if result.has_error():
        raise ValueError(f"not a GPT-2 configuration: {result}")
    std, p = config.init_std, config.dropout_p
    residual_std = std / (2 * config.num_layers) ** 0.5

    def init_linear(scale: float) -> Callable[[Linear], None]:
        def init(proj: Linear) -> None:
            nn.init.normal_(proj.weight, std=scale)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

        return init

    def layer_norm() -> StandardLayerNorm:
        return StandardLayerNorm(config.model_dim, bias=True, eps=config.layer_norm_eps)

    def init_embed(embed: StandardEmbedding) -> None:
        nn.init.normal_(embed.weight, std=std)

    embed = StandardEmbedding(config.vocab_size, config.model_dim, init_fn=init_embed)
    pos_encoder = Gpt2PositionEncoder(config.model_dim, config.max_seq_len, std)
    frontend = TransformerEmbeddingFrontend(config.model_dim, embed, pos_encoder, no_scale=True, dropout_p=p)
    activation = nn.GELU(approximate=GELU_APPROXIMATIONS[config.activation])
    layers = []
    for _ in range(config.num_layers):
        # create_default_sdpa: lmtune's per-example attention for packed batches when a recipe sets it.
        self_attn = StandardMultiheadAttention(
            config.model_dim, config.num_attn_heads, create_default_sdpa(CausalAttentionBias(), dropout_p=p),
            qkv_proj_init_fn=init_linear(std), output_proj_init_fn=init_linear(residual_std), bias=True, output_proj_bias=True,
        )  # fmt: skip
        ffn = StandardFeedForwardNetwork(config.model_dim, config.ffn_inner_dim, bias=True, inner_activation=activation, proj_init_fn=init_linear(std))
        # StandardFeedForwardNetwork takes one init for both projections; GPT-2 scales the output one down.
        ffn.output_proj.init_fn = init_linear(residual_std)
        ffn.output_proj.reset_parameters()
        layers.append(StandardTransformerLMDecoderLayer(self_attn, layer_norm(), ffn, layer_norm(), norm_order=TransformerNormOrder.PRE, dropout_p=p))
    decoder = StandardTransformerLMDecoder(layers, layer_norm())
    head = TiedProjection(embed.weight, bias=None)
    return TransformerLM(config.model_dim, frontend, decoder, head, None, config.max_seq_len)


def register_gpt2_family(container: DependencyContainer) -> None:
    """The ``gpt2`` model and tokenizer families, beside fairseq2's own. fairseq2 runs this as an
    extension whenever it starts (the ``fairseq2.extension`` entry point in pyproject.toml); a
    recipe's ``register`` and the in-process resolver of ``lmtune.models.loading`` call it too, for an
    install whose metadata predates the entry point. Registering twice does nothing."""
    from fairseq2.composition import register_model_family, register_tokenizer_family
    from fairseq2.models import ModelFamily

    from lmtune.fairseq2_internals import has_registration

    if has_registration(container, ModelFamily, GPT2_FAMILY):
        return
    from fairseq2.models.transformer_lm import (
        apply_ac_to_transformer_lm,
        apply_fsdp_to_transformer_lm,
        compile_transformer_lm,
    )

    from lmtune.models.gpt2_hf import convert_gpt2_state_dict
    from lmtune.models.gpt2_tokenizer import (
        Gpt2Tokenizer,
        Gpt2TokenizerConfig,
        load_gpt2_tokenizer,
    )

    register_model_family(
        container, GPT2_FAMILY, kls=TransformerLM, config_kls=Gpt2Config, factory=create_gpt2_model, state_dict_converter=convert_gpt2_state_dict,
        compiler=compile_transformer_lm, fsdp_applier=apply_fsdp_to_transformer_lm, layerwise_ac_applier=apply_ac_to_transformer_lm,
    )  # fmt: skip
    register_gpt2_configs(container)
    register_tokenizer_family(container, GPT2_FAMILY, Gpt2Tokenizer, Gpt2TokenizerConfig, loader=load_gpt2_tokenizer)
