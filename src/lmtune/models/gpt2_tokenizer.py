"""GPT-2's tokenizer for fairseq2: byte-level BPE read from a Hugging Face ``tokenizer.json`` directory.

GPT-2 has one special token, ``<|endoftext|>``: it ends a document (so it is EOS, and what
pretraining puts between documents) and transformers also names it BOS and UNK. Nothing goes
before a text, as with transformers' GPT-2 tokenizer; a response ends with EOS, so a
fine-tuned model learns to stop. A prompt gets nothing after it: the model continues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import final

from fairseq2.data.tokenizers import (
    TokenDecoder,
    TokenEncoder,
    Tokenizer,
    VocabularyInfo,
)
from fairseq2.data.tokenizers.hg import (
    HuggingFaceTokenDecoder,
    HuggingFaceTokenEncoder,
    HuggingFaceTokenModel,
    load_hg_token_model,
)
from fairseq2.device import Device
from typing_extensions import override

END_OF_TEXT = "<|endoftext|>"


@dataclass(kw_only=True)
class Gpt2TokenizerConfig:
    eos_token: str = END_OF_TEXT
    """The token that ends a response (and separates pretraining documents)."""


@final
class Gpt2Tokenizer(Tokenizer):
    def __init__(self, model: HuggingFaceTokenModel, eos_token: str) -> None:
        self._model = model
        self._eos_token = eos_token

    @override
    def create_encoder(self, *, task: str | None = None, lang: str | None = None, mode: str | None = None, device: Device | None = None, pin_memory: bool = False) -> TokenEncoder:
        if task is not None or lang is not None:
            raise ValueError("GPT-2's tokenizer has no tasks or languages.")
        if mode in (None, "default", "prompt_response"):
            suffix = [self._eos_token]
        elif mode in ("prompt", "as_is"):
            suffix = []
        else:
            raise ValueError(f"mode '{mode}' is not one of GPT-2's tokenizer's: default, prompt, prompt_response, as_is.")
        return HuggingFaceTokenEncoder(self._model, prefix_tokens=[], suffix_tokens=suffix, device=device, pin_memory=pin_memory)

    @override
    def create_raw_encoder(self, *, device: Device | None = None, pin_memory: bool = False) -> TokenEncoder:
        return HuggingFaceTokenEncoder(self._model, device=device, pin_memory=pin_memory)

    @override
    def create_decoder(self, *, skip_special_tokens: bool = False) -> TokenDecoder:
        return HuggingFaceTokenDecoder(self._model, skip_special_tokens=skip_special_tokens)

    @property
    @override
    def vocab_info(self) -> VocabularyInfo:
        return self._model.vocab_info


def load_gpt2_tokenizer(path: Path, config: Gpt2TokenizerConfig) -> Tokenizer:
    """``path``: a directory with ``tokenizer.json`` (and usually ``tokenizer_config.json``). BOS,
    UNK and PAD are the directory's own (GPT-2's has no PAD); EOS is ``config.eos_token``."""
    model = load_hg_token_model(path, eos_token=config.eos_token)
    return Gpt2Tokenizer(model, config.eos_token)
