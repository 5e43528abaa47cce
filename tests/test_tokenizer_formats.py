"""Every tokenizer format lmtune claims gives the reference library's token ids.

Each tokenizer is registered with a user card, resolved and loaded the way the CLI
does, and compared with tiktoken (Llama 3 tokenizer.model), sentencepiece (Llama 2
.model) or transformers' AutoTokenizer (tokenizer.json directories), including the
BOS/EOS the prompt and response encoders add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import TokenizerSpec, resolve_tokenizer
from lmtune.data.encoding import ExampleEncoder
from lmtune.data.records import Record
from lmtune.errors import UserError
from lmtune.models.loading import load_tokenizer
from tiny_builders import (
    LLAMA3_SPECIAL,
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    bpe_ranks,
    train_sentencepiece_model,
    write_hf_llama2_tokenizer,
    write_hf_llama3_tokenizer,
    write_hf_qwen_tokenizer,
    write_tiktoken_model,
)

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café — 日本語 😀 Ünïcödé",
    "cafe\u0301 decomposed",  # NFC-normalised by Qwen's tokenizer
    "12345 678 3.14159 $19.99 48+24=72",
    "a  b\t\tc\n\n  d   ",
    "   leading and trailing   ",
    "line1\r\nline2\n\n\nline3",
    "It's 56. #### 56",
    "",
]
CHAT = [{"role": "user", "content": "What is 7 times 8?"}, {"role": "assistant", "content": "56"}, {"role": "user", "content": "And 56 + 1?"}]


@dataclass
class Files:
    ranks: dict[bytes, int]
    qwen_ranks: dict[bytes, int]
    tiktoken_model: Path
    sp_model: Path
    hf_llama2: Path
    hf_llama3: Path
    hf_llama3_instruct: Path
    hf_qwen_base: Path
    hf_qwen_instruct: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("tokenizers")
    ranks, qwen_ranks = bpe_ranks(LLAMA3_SPLIT), bpe_ranks(QWEN2_SPLIT)
    sp_model = train_sentencepiece_model(root / "llama2/tokenizer.model")
    return Files(
        ranks, qwen_ranks,
        write_tiktoken_model(root / "llama3/original/tokenizer.model", ranks),
        sp_model,
        write_hf_llama2_tokenizer(root / "llama2_hf", sp_model),
        write_hf_llama3_tokenizer(root / "llama3_hf", ranks),
        write_hf_llama3_tokenizer(root / "llama3_instruct_hf", ranks, instruct=True),
        write_hf_qwen_tokenizer(root / "qwen_hf", qwen_ranks, instruct=False),
        write_hf_qwen_tokenizer(root / "qwen_instruct_hf", qwen_ranks, instruct=True),
    )


def _write_cards(user_dir: Path, cards: list[dict[str, object]]) -> None:
    (user_dir / "tiny_tokenizers.yaml").write_text(yaml.safe_dump_all(cards, sort_keys=False))


class Encoded:
    """lmtune's tokenizer for a spec: prompt (BOS + text) and response (text + EOS) ids."""

    def __init__(self, spec: TokenizerSpec) -> None:
        self.tokenizer = load_tokenizer(spec)
        self._prompt = self.tokenizer.create_encoder(mode="prompt")
        self._response = self.tokenizer.create_encoder(mode="prompt_response")
        self._decoder = self.tokenizer.create_decoder()

    def prompt(self, text: str) -> list[int]:
        return self._prompt(text).tolist()

    def response(self, text: str) -> list[int]:
        return self._response(text).tolist()

    def decode(self, ids: list[int]) -> str:
        import torch

        return self._decoder(torch.tensor(ids, dtype=torch.int64))


def _reference_tiktoken(ranks: dict[bytes, int]):  # type: ignore[no-untyped-def]
    """Meta's Llama 3 tokenizer: the ranks, its split regex, 256 special tokens after them."""
    import tiktoken

    special = {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIAL)}
    return tiktoken.Encoding("tiny_llama3", pat_str=LLAMA3_SPLIT, mergeable_ranks=ranks, special_tokens=special)


def test_llama3_tiktoken_model_matches_tiktoken(files: Files, isolated_user_cards: Path) -> None:
    # The README's flow: point the shipped llama3 family card at the original/ file.
    _write_cards(isolated_user_cards, [{"name": "llama3@user", "tokenizer": str(files.tiktoken_model)}])
    store = CardStore()
    ref = _reference_tiktoken(files.ranks)
    n = len(files.ranks)
    bos, eos, eot = (ref.encode_single_token(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    assert (bos, eos, eot) == (n, n + 1, n + 9)  # 128000, 128001, 128009 in the real Llama 3
    for card, end in (("llama3_2_1b", eos), ("llama3_2_1b_instruct", eot)):
        spec = resolve_tokenizer(store, card)
        assert spec.path == files.tiktoken_model and spec.config["impl"] == "tiktoken"  # sniffed from the file
        lm = Encoded(spec)
        info = lm.tokenizer.vocab_info
        assert (info.size, info.bos_idx, info.eos_idx, info.pad_idx) == (n + 256, bos, end, n + 4)
        for text in TEXTS:
            ids = ref.encode(text)
            assert lm.prompt(text) == [bos] + ids, text
            assert lm.response(text) == ids + [end], text
            assert lm.decode(ids) == text
    assert any(len(ref.encode(t)) < len(t.encode()) for t in TEXTS)  # merges do happen


def test_llama2_sentencepiece_model_matches_sentencepiece(files: Files, isolated_user_cards: Path) -> None:
    import sentencepiece as spm

    _write_cards(isolated_user_cards, [
        {"name": "my_llama2_tokenizer", "tokenizer": str(files.sp_model), "tokenizer_family": "llama"},  # sniffed
        {"name": "llama2@user", "tokenizer": str(files.sp_model)},  # the shipped card says impl: sp
    ])
    ref = spm.SentencePieceProcessor(model_file=str(files.sp_model))
    assert (ref.bos_id(), ref.eos_id(), ref.unk_id()) == (1, 2, 0)
    for card in ("my_llama2_tokenizer", "llama2_7b"):
        spec = resolve_tokenizer(CardStore(), card)
        assert spec.config["impl"] == "sp" and spec.path == files.sp_model
        lm = Encoded(spec)
        assert lm.tokenizer.vocab_info.size == ref.vocab_size()
        for text in TEXTS:
            ids = ref.encode(text)
            # Meta's Llama 2 reference: encode(s, bos=True, eos=False) / encode(s, bos=False, eos=True).
            assert lm.prompt(text) == [1] + ids, text
            assert lm.response(text) == ids + [2], text
            assert lm.decode(ids) == ref.decode(ids)
    assert any(ref.id_to_piece(i).startswith("<0x") for t in TEXTS for i in ref.encode(t))  # byte fallback is exercised


def test_llama2_hf_directory_loads_its_sentencepiece_model(files: Files, isolated_user_cards: Path) -> None:
    """Llama-2-*-hf ships tokenizer.json beside tokenizer.model; both must agree with transformers."""
    from transformers import AutoTokenizer

    _write_cards(isolated_user_cards, [
        {"name": "my_llama2_hf", "tokenizer": str(files.hf_llama2), "tokenizer_family": "llama"},
        {"name": "llama2@user", "tokenizer": str(files.hf_llama2)},  # impl: sp given, a directory named
    ])
    ref = AutoTokenizer.from_pretrained(files.hf_llama2)
    for card in ("my_llama2_hf", "llama2_7b"):
        spec = resolve_tokenizer(CardStore(), card)
        assert spec.config["impl"] == "sp" and spec.path == files.hf_llama2 / "tokenizer.model"
        assert spec.hf_dir == files.hf_llama2  # chat templates still come from the HF files
        lm = Encoded(spec)
        for text in TEXTS:
            assert lm.prompt(text) == ref(text)["input_ids"], text
            assert lm.response(text) == ref(text, add_special_tokens=False)["input_ids"] + [ref.eos_token_id], text


def test_llama3_hf_directories_match_transformers_and_tiktoken(files: Files, isolated_user_cards: Path) -> None:
    from transformers import AutoTokenizer

    _write_cards(isolated_user_cards, [
        {"name": "my_llama3_hf", "tokenizer": str(files.hf_llama3), "tokenizer_family": "llama"},
        # A card may name tokenizer.json itself; Instruct models end turns with <|eot_id|>.
        {"name": "my_llama3_instruct_hf", "tokenizer": str(files.hf_llama3_instruct / "tokenizer.json"),
         "tokenizer_family": "llama", "tokenizer_config": {"use_eot": True}},
    ])
    tiktoken_ref = _reference_tiktoken(files.ranks)
    for card, directory in (("my_llama3_hf", files.hf_llama3), ("my_llama3_instruct_hf", files.hf_llama3_instruct)):
        spec = resolve_tokenizer(CardStore(), card)
        assert spec.config["impl"] == "hg" and spec.path == directory and spec.hf_dir == directory
        ref = AutoTokenizer.from_pretrained(directory)
        lm = Encoded(spec)
        assert lm.tokenizer.vocab_info.eos_idx == ref.eos_token_id
        for text in TEXTS:
            ids = ref(text, add_special_tokens=False)["input_ids"]
            assert ids == tiktoken_ref.encode(text), text  # the same BPE through both libraries
            assert lm.prompt(text) == ref(text)["input_ids"] == [ref.bos_token_id] + ids, text
            assert lm.response(text) == ids + [ref.eos_token_id], text
        chat = Record(file=Path("chat.jsonl"), line=1, messages=CHAT)
        expected = ref.apply_chat_template(CHAT, add_generation_prompt=True)
        assert ExampleEncoder(lm.tokenizer, spec.hf_dir).encode_prompt(chat) == expected
        assert expected.count(tiktoken_ref.encode_single_token("<|eot_id|>")) == 3


def test_qwen_hf_directories_match_transformers(files: Files, isolated_user_cards: Path) -> None:
    from transformers import AutoTokenizer

    _write_cards(isolated_user_cards, [
        {"name": "qwen25@user", "tokenizer": str(files.hf_qwen_base)},
        {"name": "qwen25_instruct@user", "tokenizer": str(files.hf_qwen_instruct)},  # use_im_end: true
    ])
    n = len(files.qwen_ranks)
    for card, directory, eos in (("qwen25_7b", files.hf_qwen_base, "<|endoftext|>"), ("qwen25_7b_instruct", files.hf_qwen_instruct, "<|im_end|>")):
        spec = resolve_tokenizer(CardStore(), card)
        assert spec.family == "qwen" and spec.hf_dir == directory
        ref = AutoTokenizer.from_pretrained(directory)
        assert ref.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [n, n + 1, n + 2]
        assert ref.eos_token == eos
        lm = Encoded(spec)
        for text in TEXTS:
            ids = ref(text)["input_ids"]  # Qwen adds no BOS
            assert lm.prompt(text) == ids, text
            assert lm.response(text) == ids + [ref.eos_token_id], text
        assert ref("cafe\u0301")["input_ids"] == ref("caf\u00e9")["input_ids"]  # NFC
        chat = Record(file=Path("chat.jsonl"), line=1, messages=CHAT)
        expected = ref.apply_chat_template(CHAT, add_generation_prompt=True)
        assert ExampleEncoder(lm.tokenizer, spec.hf_dir).encode_prompt(chat) == expected
        assert expected.count(n + 1) == 5  # one <|im_start|> each: system, 3 turns, generation prompt


def test_tokenizer_directory_errors_name_the_card_and_directory(files: Files, isolated_user_cards: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_cards(isolated_user_cards, [
        {"name": "no_files", "tokenizer": str(empty), "tokenizer_family": "llama"},
        {"name": "sp_without_model", "tokenizer": str(files.hf_llama3), "tokenizer_family": "llama", "tokenizer_config": {"impl": "sp"}},
    ])
    store = CardStore()
    with pytest.raises(UserError, match=rf"card 'no_files': tokenizer directory {empty} has neither tokenizer.json nor tokenizer.model"):
        resolve_tokenizer(store, "no_files")
    with pytest.raises(UserError, match="impl 'sp' needs a tokenizer.model file"):
        resolve_tokenizer(store, "sp_without_model")


def test_tokenizer_builders_are_deterministic(files: Files, tmp_path: Path) -> None:
    assert bpe_ranks(LLAMA3_SPLIT) == files.ranks
    assert train_sentencepiece_model(tmp_path / "again.model").read_bytes() == files.sp_model.read_bytes()
    again = write_hf_qwen_tokenizer(tmp_path / "qwen", files.qwen_ranks)
    assert (again / "tokenizer.json").read_bytes() == (files.hf_qwen_instruct / "tokenizer.json").read_bytes()
