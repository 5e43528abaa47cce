"""Turning records into token ids and a loss mask.

Prompt/response records use fairseq2's own tokenizer encoders: the prompt gets
BOS, the response gets EOS, and only response tokens carry loss. Chat records go
through the tokenizer's chat template (transformers renders it); a token carries
loss when it falls inside an assistant turn, found by rendering each conversation
prefix, which works for any template that renders prefixes stably (Llama 3, Qwen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.data.records import Record
from lmtune.errors import UserError
from lmtune.fairseq2_internals import encoder_hf_tokenizer, encoder_prefix_suffix

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(kw_only=True)
class Example:
    tokens: list[int]
    target_mask: list[bool]


class ExampleEncoder:
    def __init__(self, tokenizer: object, chat_tokenizer_dir: Path | None) -> None:
        self._tokenizer = tokenizer
        self._prompt_encoder = tokenizer.create_encoder(mode="prompt")  # type: ignore[attr-defined]
        self._response_encoder = tokenizer.create_encoder(mode="prompt_response")  # type: ignore[attr-defined]
        self._chat_dir = chat_tokenizer_dir
        self._hf: PreTrainedTokenizerBase | None = None

    def _chat_tokenizer(self, record: Record) -> PreTrainedTokenizerBase:
        if self._hf is None:
            if self._chat_dir is None:
                raise UserError(f"{record.where}: chat records need a Hugging Face tokenizer (tokenizer.json with a chat template); this tokenizer has none, use 'src'/'tgt' records instead.")
            from transformers import AutoTokenizer

            from lmtune.safe_load import hf_trust_remote_code

            self._hf = AutoTokenizer.from_pretrained(str(self._chat_dir), trust_remote_code=hf_trust_remote_code(self._chat_dir))
            if not self._hf.chat_template:
                raise UserError(f"{self._chat_dir}: the tokenizer has no chat template, so chat records in {record.file} cannot be encoded; add 'chat_template' to tokenizer_config.json or use 'src'/'tgt' records.")
        return self._hf

    def _render(self, record: Record, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        hf = self._chat_tokenizer(record)
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert isinstance(text, str)  # tokenize=False renders one conversation to one string
        return text

    def encode(self, record: Record, *, last_turn_only: bool = False) -> Example:
        """``last_turn_only``: loss on the final assistant turn alone (a preference pair's
        response), not on the earlier assistant turns of its prompt."""
        if record.messages is None:
            prompt = self._prompt_encoder(record.src).tolist()
            response = self._response_encoder(record.tgt).tolist()
            return Example(tokens=prompt + response, target_mask=[False] * len(prompt) + [True] * len(response))

        messages = record.messages
        full = self._render(record, messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render(record, messages[:i], True)
            through = self._render(record, messages[: i + 1], False)
            if not (through.startswith(before) and full.startswith(through)):
                raise UserError(f"{record.where}: the chat template does not render this conversation's turns as a stable prefix, so assistant turns cannot be located.")
            spans.append((len(before), len(through)))
        if last_turn_only:
            spans = spans[-1:]
        enc = self._chat_tokenizer(record)(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
        return Example(tokens=list(enc["input_ids"]), target_mask=mask)

    def encode_all(self, records: list[Record]) -> list[Example]:
        """``encode`` of each record; prompt/response records in one call of the Rust tokenizer
        when fairseq2's encoder wraps a Hugging Face fast tokenizer (the same ids, without
        transformers' per-call overhead, half of each call here)."""
        rust = _rust_tokenizer(self._prompt_encoder, self._response_encoder)
        if rust is None:
            return [self.encode(r) for r in records]
        pairs = [r for r in records if r.messages is None]
        encoded = rust.encode_batch([t for r in pairs for t in (r.src, r.tgt)], add_special_tokens=False)
        (p_pre, p_suf), (r_pre, r_suf) = encoder_prefix_suffix(self._prompt_encoder), encoder_prefix_suffix(self._response_encoder)  # type: ignore[misc]
        examples = []
        k = 0
        for r in records:
            if r.messages is not None:
                examples.append(self.encode(r))
                continue
            prompt = p_pre + encoded[k].ids + p_suf
            response = r_pre + encoded[k + 1].ids + r_suf
            k += 2
            examples.append(Example(tokens=prompt + response, target_mask=[False] * len(prompt) + [True] * len(response)))
        return examples

    def encode_prompt(self, record: Record) -> list[int]:
        """The tokens a model is given to generate the response."""
        if record.messages is None:
            return self._prompt_encoder(record.src).tolist()
        messages = record.messages
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        text = self._render(record, messages, True)
        return list(self._chat_tokenizer(record)(text, add_special_tokens=False)["input_ids"])

    def reference(self, record: Record) -> str | None:
        if record.messages is None:
            return record.tgt
        if record.messages[-1]["role"] == "assistant":
            return record.messages[-1]["content"]
        return None


def _rust_tokenizer(*encoders: object):
    """The ``tokenizers.Tokenizer`` under fairseq2's HuggingFaceTokenEncoder, when calling it
    directly gives what ``encoder(text)`` gives: no truncation, padding or special-token
    splitting set on it (transformers turns those off for each call); else None."""
    try:
        from fairseq2.data.tokenizers.hg import HuggingFaceTokenEncoder
    except ImportError:
        return None
    if not all(type(e) is HuggingFaceTokenEncoder for e in encoders):
        return None
    hf = [encoder_hf_tokenizer(e) for e in encoders]
    rust = getattr(hf[0], "_tokenizer", None)
    if rust is None or any(getattr(h, "_tokenizer", None) is not rust for h in hf):
        return None
    if rust.truncation is not None or rust.padding is not None or rust.encode_special_tokens != getattr(hf[0], "split_special_tokens", False):
        return None
    if any(encoder_prefix_suffix(e) is None for e in encoders):
        return None
    return rust
