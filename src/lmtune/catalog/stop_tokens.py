"""The tokens that end a generation: the tokenizer's EOS, then the end-of-turn and
end-of-text tokens of the chat formats lmtune knows (Llama 3, Qwen, Llama 2) that its
vocabulary has. Generation stops on them, and the export lists them in
generation_config.json, so transformers and vLLM stop where lmtune does."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer

STOP_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>", "</s>")


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of a fairseq2 tokenizer's stop tokens, EOS first."""
    eos = tokenizer.vocab_info.eos_idx
    ids = [] if eos is None else [int(eos)]
    encode = tokenizer.create_raw_encoder()
    decode = tokenizer.create_decoder()
    for name in STOP_TOKENS:
        try:
            t = encode(name)
        except Exception:  # an encoder that refuses special-token text has no such token
            continue
        if len(t) == 1 and decode(t) == name and int(t[0]) not in ids:
            ids.append(int(t[0]))
    return ids
