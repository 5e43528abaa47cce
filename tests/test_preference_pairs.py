"""Preference records read with file:line errors, and each pair encoded as two examples that
equal the prompt and the response encoded directly, the loss on the response alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmtune.errors import UserError
from lmtune.preference.records import read_preference_pairs


def _tiny_tokenizer():  # type: ignore[no-untyped-def]
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import load_tokenizer

    spec = resolve_model(CardStore(), "tiny_llama", None).tokenizer
    return spec, load_tokenizer(spec)


def _write(tmp_path: Path, records: list[object], name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


PROMPT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "Five, I think."},
    {"role": "user", "content": "And 4 + 4?"},
]


def test_pairs_encode_as_prompt_and_response_directly(tmp_path: Path) -> None:
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.preference.pairs import encode_pairs

    spec, tokenizer = _tiny_tokenizer()
    data = _write(tmp_path, [
        {"src": "Tom has 3 apples.", "tgt_chosen": " He has 3.", "tgt_rejected": " He has 7 pears.", "reference_score_chosen": -4.5, "reference_score_rejected": -9},
        {"src": "Name a colour.", "tgt_chosen": " Red", "tgt_rejected": " Red"},  # skipped: identical
        "",
        {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "8"}], "rejected": [{"role": "assistant", "content": "Nine."}]},
    ])
    read = read_preference_pairs(data)
    assert read.identical == 1 and [p.line for p in read.pairs] == [1, 4]
    pairs = encode_pairs(ExampleEncoder(tokenizer, spec.hf_dir), read.pairs, data)
    assert len(pairs) == 2 and len(pairs.examples) == 4
    assert pairs.lines.tolist() == [1, 4] and pairs.where(1) == f"{data}:4"
    assert pairs.reference_scores[0].tolist() == [-4.5, -9.0] and np.isnan(pairs.reference_scores[1]).all()

    def seq(i: int) -> tuple[list[int], list[bool]]:
        s, e = int(pairs.examples.offsets[i]), int(pairs.examples.offsets[i + 1])
        return pairs.examples.tokens[s:e].tolist(), pairs.examples.target_mask[s:e].astype(bool).tolist()

    # fairseq2's own encoders: the prompt (BOS ...) then the response (... EOS), loss on the response.
    prompt = tokenizer.create_encoder(mode="prompt")("Tom has 3 apples.").tolist()
    for i, response in ((0, " He has 3."), (1, " He has 7 pears.")):
        expected = tokenizer.create_encoder(mode="prompt_response")(response).tolist()
        assert seq(i) == (prompt + expected, [False] * len(prompt) + [True] * len(expected))

    # The conversation: transformers' rendering, the loss on the final assistant turn only.
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(spec.hf_dir))
    head = hf.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    for i, answer in ((2, "8"), (3, "Nine.")):
        tokens, mask = seq(i)
        assert tokens == hf.apply_chat_template(PROMPT + [{"role": "assistant", "content": answer}], tokenize=True)
        assert mask == [False] * len(head) + [True] * (len(tokens) - len(head))
        assert hf.decode(tokens[len(head):]).startswith(answer)
    # The earlier assistant turn of the prompt carries no loss.
    assert "Five" in hf.decode(tokens[: len(head)])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"src": "a", "tgt_chosen": "b"}, "pairs.jsonl:2: record has 'src' but no 'tgt_rejected'; a preference pair needs 'src', 'tgt_chosen' and 'tgt_rejected'."),
        ({"src": "a", "tgt_rejected": "b"}, "pairs.jsonl:2: record has 'src' but no 'tgt_chosen'"),
        ({"src": "a", "tgt_chosen": "", "tgt_rejected": "b"}, "pairs.jsonl:2: 'tgt_chosen' must be a non-empty string."),
        ({"src": "a", "tgt_chosen": "b", "tgt_rejected": "c", "reference_score_chosen": -1.0}, "pairs.jsonl:2: record has 'reference_score_chosen' but no 'reference_score_rejected'; give both"),
        ({"src": "a", "tgt_chosen": "b", "tgt_rejected": "c", "reference_score_chosen": "x", "reference_score_rejected": -1}, "pairs.jsonl:2: 'reference_score_chosen' must be a log-probability"),
        ({"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "8"}]}, "pairs.jsonl:2: record has no 'rejected'"),
        ({"prompt": PROMPT[:3], "chosen": [{"role": "assistant", "content": "8"}], "rejected": [{"role": "assistant", "content": "9"}]}, "pairs.jsonl:2: 'prompt' ends with an assistant message"),
        ({"prompt": PROMPT, "chosen": [{"role": "user", "content": "8"}], "rejected": [{"role": "assistant", "content": "9"}]}, "pairs.jsonl:2: 'chosen' must end with an assistant message"),
        ({"prompt": PROMPT, "chosen": [{"role": "bot", "content": "8"}], "rejected": [{"role": "assistant", "content": "9"}]}, "pairs.jsonl:2 in 'chosen': messages[0] has role 'bot'"),
        ({"src": "a", "tgt": "b"}, "pairs.jsonl:2: record has 'src' but no 'tgt_chosen'"),
        ({"text": "a"}, "pairs.jsonl:2: record is neither of the preference forms"),
        ("[1, 2]", "pairs.jsonl:2: expected a JSON object"),
    ],
)
def test_a_bad_record_is_one_sentence_naming_its_line(tmp_path: Path, record: object, message: str) -> None:
    data = _write(tmp_path, [{"src": "a", "tgt_chosen": "b", "tgt_rejected": "c"}, record])
    with pytest.raises(UserError) as err:
        read_preference_pairs(data)
    assert message in str(err.value)


def test_a_file_of_identical_pairs_says_so(tmp_path: Path) -> None:
    data = _write(tmp_path, [{"src": "a", "tgt_chosen": "b", "tgt_rejected": "b"}] * 3)
    with pytest.raises(UserError, match="no preference pairs to train on \\(all 3 have the chosen response equal to the rejected one\\)"):
        read_preference_pairs(data)


def test_a_prompt_longer_than_max_seq_len_is_named_and_long_responses_are_dropped(tmp_path: Path) -> None:
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.preference.pairs import encode_pairs

    spec, tokenizer = _tiny_tokenizer()
    data = _write(tmp_path, [
        {"src": "Hi", "tgt_chosen": " yes", "tgt_rejected": " no"},
        {"src": "Hi", "tgt_chosen": " yes", "tgt_rejected": " no " * 40},
        {"src": "Hi " * 40, "tgt_chosen": " yes", "tgt_rejected": " no"},
    ])
    pairs = encode_pairs(ExampleEncoder(tokenizer, spec.hf_dir), read_preference_pairs(data).pairs, data)
    prompt_3 = int(pairs.prompt_lengths()[4])
    hi = len(tokenizer.create_encoder(mode="prompt")("Hi"))
    assert pairs.prompt_lengths()[0:4].tolist() == [hi, hi, hi, hi]
    with pytest.raises(UserError, match=f"pairs.jsonl:3: the prompt alone is {prompt_3} tokens, leaving no room for a response within max_seq_len=30;"):
        pairs.trainable(30)
    assert pairs.trainable(prompt_3 + 5).tolist() == [0, 2]
    assert pairs.trainable(1000).tolist() == [0, 1, 2]


def test_encoded_pairs_go_through_the_encoded_cache_and_come_back_equal(tmp_path: Path) -> None:
    from lmtune.data.encoded_cache import build_cache, plan_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.preference.pairs import EncodedPairs, encode_pair_file

    spec, tokenizer = _tiny_tokenizer()
    data = _write(tmp_path, [
        {"src": "a b", "tgt_chosen": " c", "tgt_rejected": " d e", "reference_score_chosen": -1, "reference_score_rejected": -2},
        {"src": "x", "tgt_chosen": " y", "tgt_rejected": " y"},
        {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "8"}], "rejected": [{"role": "assistant", "content": "Nine."}]},
    ])
    encoder = ExampleEncoder(tokenizer, spec.hf_dir)
    plan = plan_cache(tmp_path / "cache", data, spec)
    said: list[str] = []
    build_cache(plan, lambda d: encode_pair_file(encoder, data, d), said.append)
    assert said[-1].startswith("lmtune: encoded pairs.jsonl: 2 examples")  # the two pairs kept
    assert plan_cache(tmp_path / "cache", data, spec).stale is None
    loaded = EncodedPairs.load(plan.directory, data)
    direct = encode_pair_file(encoder, data)
    assert loaded.identical == direct.identical == 1 and loaded.lines.tolist() == [1, 3]
    np.testing.assert_array_equal(loaded.reference_scores, direct.reference_scores)
    for name in ("tokens", "target_mask", "offsets", "num_targets"):
        np.testing.assert_array_equal(getattr(loaded.examples, name), getattr(direct.examples, name))
