"""lmtune audit: length statistics against an independent tokenization, the batching
arithmetic by hand and against lmtune's real pipeline, bad input as one sentence."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, assert_user_error, run_lmtune_in_process
from lmtune.data.audit import (
    fixed_size_batches,
    length_batches,
    length_stats,
    padded_positions,
    padded_strategy,
    percentile,
    row_fill,
    suggest_max_seq_len,
)

TOKENIZER_DIR = REPO / "assets" / "tiny" / "tokenizer"
TINY_TRAIN = REPO / "assets" / "tiny" / "gsm8k" / "sft" / "train.jsonl"


# ------------------------------------------------------------ pure arithmetic


def test_percentile_is_nearest_rank_like_numpy_inverted_cdf() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 51) == 3
    assert percentile([10] * 99 + [300], 99) == 10
    assert percentile([10] * 98 + [100, 300], 99) == 100
    rng = random.Random(0)
    for n in (1, 7, 100, 1001):
        values = sorted(rng.randint(1, 500) for _ in range(n))
        for p in (50, 90, 95, 99, 100):
            assert percentile(values, p) == int(np.percentile(values, p, method="inverted_cdf")), (n, p)


def test_length_stats_by_hand() -> None:
    s = length_stats([5, 1, 3, 2, 4])
    assert (s.count, s.mean, s.max) == (5, 3.0, 5)
    assert s.percentiles == {50: 3, 90: 5, 95: 5, 99: 5}


def test_padded_fixed_size_batches_by_hand() -> None:
    lengths = [3, 5, 2, 8, 4]
    batches = fixed_size_batches(lengths, 2)
    assert batches == [[3, 5], [2, 8], [4]]
    # Each batch padded to its longest: 2*5 + 2*8 + 1*4 = 30 positions for 22 tokens.
    assert padded_positions(batches) == 30
    s = padded_strategy("padded", batches)
    assert (s.batches, s.tokens, s.positions) == (3, 22, 30)
    assert s.padding == pytest.approx(8 / 30)


def test_length_batches_by_hand() -> None:
    sizes = [(4, 8), (2, 16)]  # up to 4 examples of <= 8 tokens, or 2 of <= 16
    # 12 fills the long bucket with 10; 2 fills the short bucket; 9 is left over alone.
    assert length_batches([3, 10, 5, 12, 7, 2, 9], sizes) == [[10, 12], [3, 5, 7, 2], [9]]
    # Leftovers go out from the longest bucket down, topped up from the shorter buckets' tails.
    batches = length_batches([3, 10, 5, 6], sizes)
    assert batches == [[10, 6], [3, 5]]
    assert padded_positions(batches) == 2 * 10 + 2 * 5


def test_suggested_max_seq_len_by_hand() -> None:
    assert suggest_max_seq_len([10] * 99 + [300], None) == (64, 1)
    assert suggest_max_seq_len([10] * 98 + [100, 300], None) == (128, 1)
    assert suggest_max_seq_len([64] * 100, None) == (64, 0)
    assert suggest_max_seq_len([65] * 100, None) == (128, 0)
    assert suggest_max_seq_len([10] * 98 + [100, 300], 96) == (96, 2)  # never above the model's maximum


def test_row_fill_by_hand() -> None:
    assert row_fill([[0, 1], [2]], [60, 30, 50], 100) == pytest.approx(140 / 200)


# ------------------------------------------- against lmtune's real batching


def _examples(lengths: list[int]):  # type: ignore[no-untyped-def]
    from lmtune.data.encoding import Example

    return [Example(tokens=list(range(n)), target_mask=[False] + [True] * (n - 1)) for n in lengths]


def _pipeline_seq_lens(lengths: list[int], **kw: object) -> list[list[int]]:
    from lmtune.data.batching import build_pipeline

    pipeline = build_pipeline(_examples(lengths), dp_rank=0, dp_size=1, pad_idx=0, **kw)  # type: ignore[arg-type]
    return [list(b.seq_lens) for b in pipeline]


def test_batches_equal_lmtune_pipeline_without_packing() -> None:
    """The audit's batches are the ones build_pipeline (fairseq2's shuffle and
    bucket_by_length) yields, leftovers included, so its padding figure is lmtune's."""
    from lmtune.data.audit import training_order
    from lmtune.data.batching import bucket_sizes

    rng = random.Random(3)
    lengths = [rng.choice([rng.randint(2, 30), rng.randint(30, 250)]) for _ in range(700)]
    order = training_order(len(lengths), 7)
    assert sorted(order) == list(range(len(lengths)))
    ordered = [lengths[i] for i in order]

    real = _pipeline_seq_lens(lengths, max_seq_len=256, max_num_tokens=1024, batch_size=None, shuffle_seed=7)
    assert length_batches(ordered, bucket_sizes(256, 1024)) == real
    real = _pipeline_seq_lens(lengths, max_seq_len=256, max_num_tokens=1024, batch_size=8, shuffle_seed=7)
    assert fixed_size_batches(ordered, 8) == real


# ---------------------------------------------------------------- the command


def _hf_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"))


def _reference_lengths(path: Path) -> tuple[list[int], list[int]]:
    """Independently of fairseq2: prompts get <|begin_of_text|>, responses <|eot_id|>
    (the tiny tokenizer ends turns with it); chat records are rendered by the template
    and their assistant tokens marked by its {% generation %} blocks."""
    from transformers import AutoTokenizer

    hf = _hf_tokenizer()
    chat = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    bos, eot = hf.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"])
    lengths, targets = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if "messages" in r:
            out = chat.apply_chat_template(r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            lengths.append(len(out["input_ids"]))
            targets.append(sum(out["assistant_masks"]))
            continue
        src = [bos] + hf(r["src"], add_special_tokens=False)["input_ids"]
        tgt = hf(r["tgt"], add_special_tokens=False)["input_ids"] + [eot]
        lengths.append(len(src) + len(tgt))
        targets.append(len(tgt))
    return lengths, targets


def _parse(stdout: str) -> dict[str, object]:
    """The report's numbers: percentile rows, strategy rows, skipped count, suggestion."""
    out: dict[str, object] = {}
    for name in ("tokens", "response"):
        m = re.search(rf"^{name}\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", stdout, re.M)
        assert m, stdout
        out[name] = (int(m[1]), float(m[2]), *(int(m[i]) for i in range(3, 8)))
    for key, pattern in (
        ("padded", r"^padded, \d+ per batch, random order\s+(\d+)\s+(\d+)\s+([\d.]+)%$"),
        ("length", r"^length batching, <= \d+ tokens\s+(\d+)\s+(\d+)\s+([\d.]+)%$"),
        ("packing", r"^packing, rows of \d+\s+(\d+) rows\s+(\d+)\s+([\d.]+)%\s+rows ([\d.]+)% full$"),
    ):
        m = re.search(pattern, stdout, re.M)
        assert m, stdout
        out[key] = tuple(float(g) for g in m.groups())
    m = re.search(r"^longer than max_seq_len=(\d+): (\d+) of (\d+)", stdout, re.M)
    assert m, stdout
    out["too_long"] = (int(m[1]), int(m[2]), int(m[3]))
    m = re.search(r"^suggested max_seq_len: (\d+) .*; drops (\d+) of (\d+)$", stdout, re.M)
    assert m, stdout
    out["suggested"] = (int(m[1]), int(m[2]))
    return out


def _expected_stats(values: list[int]) -> tuple[object, ...]:
    a = np.array(values)
    pcts = (int(np.percentile(a, p, method="inverted_cdf")) for p in (50, 90, 95, 99))
    return (len(a), round(float(a.mean()), 1), *pcts, int(a.max()))


@pytest.mark.slow
def test_tiny_default_matches_an_independent_tokenization() -> None:
    r = run_lmtune_in_process("audit", "tiny_gsm8k", "--model", "tiny_llama")
    assert r.returncode == 0, r.stderr[-3000:]
    got = _parse(r.stdout)
    lengths, targets = _reference_lengths(TINY_TRAIN)
    assert got["tokens"] == _expected_stats(lengths)
    assert got["response"] == _expected_stats(targets)
    # Defaults: the tiny model's max_seq_len (512, below 2048), nothing longer.
    assert got["too_long"] == (512, 0, len(lengths))
    need = int(np.percentile(lengths, 99, method="inverted_cdf"))
    assert got["suggested"] == (-(-need // 64) * 64, sum(n > -(-need // 64) * 64 for n in lengths))
    rows, positions, padding, _fill = got["packing"]  # type: ignore[misc]
    assert positions == sum(lengths) and padding == 0.0
    for key in ("padded", "length"):
        _, positions, padding = got[key]  # type: ignore[misc]
        assert positions >= sum(lengths)
        assert padding == pytest.approx(100 * (1 - sum(lengths) / positions), abs=0.05)


def _handmade(tmp_path: Path) -> Path:
    rng = random.Random(11)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    lines = []
    for i in range(60):
        src = " ".join(rng.choice(words) for _ in range(rng.choice([2, 5, 12, 40]))) + "?"
        tgt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        if i % 4 == 0:
            lines.append({"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": src}, {"role": "assistant", "content": tgt}]})
        else:
            lines.append({"src": src, "tgt": tgt})
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    return path


def test_handmade_jsonl_with_chat_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmtune.cli import main
    from lmtune.data.audit import training_order

    path = _handmade(tmp_path)
    lengths, targets = _reference_lengths(path)
    max_seq_len = 128
    assert 0 < sum(n > max_seq_len for n in lengths) < len(lengths)  # some examples are skipped

    assert main(["audit", str(path), "--model", "tiny_llama", "--max-seq-len", str(max_seq_len), "--max-num-tokens", "512", "--batch-size", "4", "--seed", "5"]) == 0
    got = _parse(capsys.readouterr().out)
    assert got["tokens"] == _expected_stats(lengths)
    assert got["response"] == _expected_stats(targets)
    assert got["too_long"] == (max_seq_len, sum(n > max_seq_len for n in lengths), len(lengths))

    # The padded fixed-size figure by hand: the kept examples in training order, 4 at a time.
    kept = [n for n in lengths if n <= max_seq_len]
    ordered = [kept[i] for i in training_order(len(kept), 5 + 1)]
    positions = sum(len(ordered[i : i + 4]) * max(ordered[i : i + 4]) for i in range(0, len(ordered), 4))
    assert got["padded"] == (-(-len(kept) // 4), positions, pytest.approx(round(100 * (1 - sum(kept) / positions), 1)))
    assert got["packing"][1] == sum(kept)  # type: ignore[index]


# ----------------------------------------------------------------- bad input


def test_missing_dataset_is_one_sentence(tmp_path: Path) -> None:
    r = run_lmtune_in_process("audit", str(tmp_path / "nope.jsonl"), "--model", "tiny_llama")
    assert_user_error(r, "nope.jsonl", "no such file")


def test_unknown_model_is_one_sentence() -> None:
    r = run_lmtune_in_process("audit", "tiny_gsm8k", "--model", "tiny_lama")
    assert_user_error(r, "unknown model 'tiny_lama'", "tiny_llama")


def test_malformed_record_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"src": "a", "tgt": "b"}\n{"src": "a"\n')
    r = run_lmtune_in_process("audit", str(path), "--model", "tiny_llama")
    assert_user_error(r, f"{path}:2", "not valid JSON")


def test_bad_numbers_are_one_sentence() -> None:
    assert_user_error(run_lmtune_in_process("audit", "tiny_gsm8k"), "--model")
    assert_user_error(run_lmtune_in_process("audit", "tiny_gsm8k", "--model", "tiny_llama", "--batch-size", "0"), "--batch-size")


def test_help_is_fast_and_light() -> None:
    code = "import sys\nfrom lmtune.cli import main\ntry:\n    main(['audit', '--help'])\nexcept SystemExit:\n    pass\nprint('HEAVY', [m for m in ('torch', 'fairseq2', 'transformers', 'numpy') if m in sys.modules])\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stdout, r.stdout[-500:] + r.stderr[-2000:]
    assert "--max-num-tokens" in r.stdout
