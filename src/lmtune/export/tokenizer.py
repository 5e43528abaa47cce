"""Tokenizer files of a Hugging Face export, made to encode exactly as lmtune's tokenizer does.

- A Hugging Face tokenizer directory is copied; only the BOS handling and the
  special tokens in tokenizer_config.json are adjusted to lmtune's tokenizer.
- A Llama 3 tiktoken file becomes a byte-level BPE tokenizer.json built from its ranks.
- A SentencePiece model becomes a tokenizer.json through transformers' Llama converter, with
  the model's own normalizer (character map, whitespace collapsing) rebuilt in front of it.

In every case ``tokenizer(text)`` must give the ids lmtune's prompt encoder gives
(the BOS prefix included), since vLLM's completion endpoint tokenizes that way;
probe strings are checked before the export is accepted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.catalog.specs import TokenizerSpec
from lmtune.catalog.stop_tokens import stop_token_ids
from lmtune.errors import UserError
from lmtune.export.hf_config import SpecialIds
from lmtune.fairseq2_internals import tiktoken_encoding

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer as Fairseq2Tokenizer

# Copied from a Hugging Face tokenizer directory when present (tokenizer.json and
# tokenizer_config.json are rewritten).
COPIED_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")

PROBE_TEXTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "  leading spaces,\ttabs,\n\nnewlines and trailing spaces   ",
    "12345 + 678 = 13023 #### 13023",
    "Ünïcödé: naïve café — 東京 🙂",
    "don't won't we'll I'm it's",
)
PROBE_CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "12 + 30 = 42 #### 42"},
    {"role": "user", "content": "And 42 * 2?"},
]


def write_hf_tokenizer(spec: TokenizerSpec, out_dir: Path, model_max_length: int) -> SpecialIds:
    """Writes tokenizer.json and tokenizer_config.json (and copies) into out_dir; returns the special ids."""
    from lmtune.models.loading import load_tokenizer

    tokenizer = load_tokenizer(spec)
    vocab = tokenizer.vocab_info
    impl = spec.config.get("impl")
    config: dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    source_dir = spec.hf_dir
    if source_dir is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
        if (source_dir / "tokenizer_config.json").is_file():
            config = json.loads((source_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        for name in COPIED_FILES:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, out_dir / name)
    elif impl == "tiktoken":
        backend = _tiktoken_backend(tokenizer, spec.path)
        if spec.config.get("use_eot"):
            # An Instruct model: give it the Llama 3 chat layout fairseq2 itself uses for Llama 3.
            from fairseq2.models.llama.tokenizer import LLAMA3_HG_CHAT_TEMPLATE

            config["chat_template"] = LLAMA3_HG_CHAT_TEMPLATE
    elif impl == "sp":
        backend = _sentencepiece_backend(spec.path)
    else:
        raise UserError(f"tokenizer '{spec.name}' ({spec.path}) is neither a Hugging Face tokenizer directory, a tiktoken file nor a SentencePiece model; lmtune cannot export it.")

    prefix = _ids(tokenizer.create_encoder(mode="prompt").prefix_indices)
    changed = _set_prompt_prefix(backend, prefix)
    backend.save(str(out_dir / "tokenizer.json"))

    def token(idx: int | None) -> str | None:
        return None if idx is None else backend.id_to_token(idx)

    for key, idx in (("bos_token", vocab.bos_idx), ("eos_token", vocab.eos_idx), ("pad_token", vocab.pad_idx), ("unk_token", vocab.unk_idx)):
        if idx is not None:
            config[key] = token(idx)
    if (changed or "add_bos_token" in config) and prefix in ([], [vocab.bos_idx]):
        # Explicit, so that transformers 4 and 5 alike rebuild the same BOS-only post-processor.
        config["add_bos_token"] = bool(prefix)
        config["add_eos_token"] = False
    config["model_max_length"] = model_max_length
    # Decoder-only models take no token_type_ids; without this, model.generate(**tokenizer(text)) fails.
    config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    stops = stop_token_ids(tokenizer)
    check_encodings(tokenizer, out_dir, source_dir)
    return SpecialIds(bos=vocab.bos_idx, eos=vocab.eos_idx, pad=vocab.pad_idx, stops=stops)


def _ids(tensor: object) -> list[int]:
    return [] if tensor is None else [int(i) for i in tensor.tolist()]  # type: ignore[attr-defined]


def _set_prompt_prefix(backend: object, prefix: list[int]) -> bool:
    """Makes ``encode(text, add_special_tokens=True)`` put lmtune's prompt prefix (e.g. BOS) first,
    nothing last; False when the tokenizer already does."""
    from tokenizers import processors

    raw = backend.encode("a", add_special_tokens=False).ids  # type: ignore[attr-defined]
    if backend.encode("a", add_special_tokens=True).ids == prefix + raw:  # type: ignore[attr-defined]
        return False
    names = [backend.id_to_token(i) for i in prefix]  # type: ignore[attr-defined]
    single = " ".join([*names, "$A:0"])
    pair = " ".join([*names, "$A:0", *(f"{n}:1" for n in names), "$B:1"])
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=sorted(set(zip(names, prefix))))
    current = backend.post_processor  # type: ignore[attr-defined]
    # A ByteLevel post-processor only trims offsets; keep it ahead of the template, as Llama 3's own file does.
    backend.post_processor = processors.Sequence([current, template]) if isinstance(current, processors.ByteLevel) else template  # type: ignore[attr-defined]
    return True


def _tiktoken_backend(tokenizer: object, path: Path):
    """Byte-level BPE from the tiktoken ranks, with fairseq2's special tokens at fairseq2's ids."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = tiktoken_encoding(tokenizer)
    specials = sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])
    backend = TikTokenConverter(vocab_file=str(path), pattern=encoding._pat_str, additional_special_tokens=[t for t, _ in specials]).converted()
    for text, idx in specials:
        if backend.token_to_id(text) != idx:
            raise UserError(f"{path}: special token {text} would get id {backend.token_to_id(text)} in the Hugging Face tokenizer but has id {idx} in lmtune's; the tiktoken file has gaps in its ranks.")
    return backend


def _sentencepiece_backend(path: Path):
    """transformers' Llama converter for the pieces, with a normalizer rebuilt from the model's own spec."""
    from transformers import LlamaTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(path.read_bytes())
    spec = proto.normalizer_spec
    if proto.trainer_spec.treat_whitespace_as_suffix or not spec.escape_whitespaces:
        raise UserError(f"{path}: this SentencePiece model marks spaces as a suffix or does not escape them; lmtune can export only models that prefix words with '\u2581' (all Llama and Mistral models do).")
    try:
        fast = LlamaTokenizerFast(vocab_file=str(path), from_slow=True, legacy=True, add_bos_token=True, add_eos_token=False, add_prefix_space=spec.add_dummy_prefix)
    except Exception as ex:
        raise UserError(f"{path}: cannot convert this SentencePiece model to a Hugging Face tokenizer ({ex}).") from None
    backend = fast.backend_tokenizer
    backend.normalizer = sentencepiece_normalizer(spec.precompiled_charsmap, spec.remove_extra_whitespaces, spec.add_dummy_prefix)
    return backend


def sentencepiece_normalizer(charsmap: bytes, remove_extra_whitespaces: bool, add_dummy_prefix: bool):
    """SentencePiece's normalization as a `tokenizers` normalizer. The converter keeps only the
    dummy prefix; SentencePiece's default (nmt_nfkc, remove_extra_whitespaces) also maps the text
    through its character map and drops leading, trailing and repeated spaces. Only U+0020 counts
    as a space there (the map turns tabs and the like into it first), hence regexes, not Strip."""
    from tokenizers import Regex, normalizers

    steps = [normalizers.Precompiled(charsmap)] if charsmap else []
    if remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if add_dummy_prefix:
        steps.append(normalizers.Prepend("\u2581"))  # Prepend leaves an empty text empty, as SentencePiece does
    steps.append(normalizers.Replace(" ", "\u2581"))
    return normalizers.Sequence(steps)


def check_encodings(tokenizer: Fairseq2Tokenizer, out_dir: Path, source_dir: Path | None) -> None:
    """The exported tokenizer must encode the probes as lmtune does, plain and as prompts, and
    render the probe chat exactly as the source directory does."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lmtune.safe_load import hf_trust_remote_code

    hf_logging.set_verbosity_error()  # the probes may be longer than a tiny model's model_max_length
    hf = AutoTokenizer.from_pretrained(str(out_dir), trust_remote_code=False)  # lmtune's own export
    raw = tokenizer.create_raw_encoder()
    prompt = tokenizer.create_encoder(mode="prompt")
    for text in PROBE_TEXTS:
        for lmtune_ids, hf_ids, how in (
            (raw(text).tolist(), hf(text, add_special_tokens=False)["input_ids"], "as plain text"),
            (prompt(text).tolist(), hf(text)["input_ids"], "as a prompt"),
        ):
            if lmtune_ids != hf_ids:
                raise UserError(f"the exported tokenizer encodes {text!r} {how} as {hf_ids[:12]}... but lmtune's tokenizer as {lmtune_ids[:12]}...; the export was not written.")
    if source_dir is not None and hf.chat_template:
        source = AutoTokenizer.from_pretrained(str(source_dir), trust_remote_code=hf_trust_remote_code(source_dir))
        want = source.apply_chat_template(PROBE_CHAT, add_generation_prompt=True, tokenize=False)
        got = hf.apply_chat_template(PROBE_CHAT, add_generation_prompt=True, tokenize=False)
        if want != got or source(want, add_special_tokens=False)["input_ids"] != hf(got, add_special_tokens=False)["input_ids"]:
            raise UserError("the exported tokenizer renders or encodes a chat differently from the source tokenizer's chat template; the export was not written.")
