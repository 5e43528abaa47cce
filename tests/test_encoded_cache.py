"""The encoded dataset: arrays equal to the one-by-one encoding, a cache that is reused, rebuilt
when stale, never left half-written, and training losses that do not depend on it."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_user_error, metric_rows, run_lmtune

TINY = ["--config-file", "tiny_gsm8k", "--config", "max_num_steps=8", "publish_metrics_every_n_steps=1", "max_num_tokens=1024"]


def _tiny_tokenizer():  # type: ignore[no-untyped-def]
    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import load_tokenizer
    from lmtune.catalog.specs import resolve_model

    spec = resolve_model(CardStore(), "tiny_llama", None).tokenizer
    return spec, load_tokenizer(spec)


def _tiny_data() -> Path:
    from lmtune.resources import assets_dir

    return assets_dir() / "tiny/gsm8k/sft/train.jsonl"


def _mixed_data(tmp_path: Path) -> Path:
    """src/tgt and chat records, a blank line, Windows line ends: what chunk cuts must survive."""
    lines = _tiny_data().read_text().splitlines()[:300]
    chat = {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]}
    odd = {"src": "Héllo wörld 😀 <|begin_of_text|> tabs\tand  spaces", "tgt": " <|eot_id|> ünïcode\u2028line"}
    lines[10:10] = [json.dumps(chat), "", json.dumps(odd, ensure_ascii=False)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def test_parallel_arrays_equal_one_by_one_encoding(tmp_path: Path) -> None:
    from lmtune.data.encoded_examples import EncodedExamples
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl, line_chunks
    from lmtune.data.records import read_records

    from lmtune.data.encoding import _rust_tokenizer

    spec, tokenizer = _tiny_tokenizer()
    encoder = ExampleEncoder(tokenizer, spec.hf_dir)
    # src/tgt records take the batched Rust call; chat records and the reference go one by one.
    assert _rust_tokenizer(encoder._prompt_encoder, encoder._response_encoder) is not None
    data = _mixed_data(tmp_path)
    expected = [encoder.encode(r) for r in read_records(data)]
    assert len(line_chunks(data, 4096)) > 4  # several chunks, so the workers really share the file

    in_memory = encode_jsonl(data, encoder, workers=2, chunk_bytes=4096)
    (tmp_path / "arrays").mkdir()
    mapped = encode_jsonl(data, encoder, workers=2, chunk_bytes=4096, directory=tmp_path / "arrays")
    assert isinstance(mapped.tokens, np.memmap)
    for got in (in_memory, mapped, EncodedExamples.from_examples(expected)):
        assert len(got) == len(expected) == 302
        assert got.lengths.tolist() == [len(e.tokens) for e in expected]
        assert got.num_targets.tolist() == [sum(e.target_mask) for e in expected]
        for i, e in enumerate(expected):
            item = got.item(i)
            assert item["tokens"].tolist() == e.tokens
            assert item["target_mask"].tolist() == e.target_mask


def test_a_worker_reports_the_file_and_line_of_a_bad_record(tmp_path: Path) -> None:
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl
    from lmtune.errors import UserError

    spec, tokenizer = _tiny_tokenizer()
    lines = _tiny_data().read_text().splitlines()[:200]
    lines[150] = '{"src": "a"}'
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"{data}:151: record has 'src' but no 'tgt'"):
        encode_jsonl(data, ExampleEncoder(tokenizer, spec.hf_dir), workers=2, chunk_bytes=2048)


def test_a_cache_of_another_tokenizer_or_version_is_rebuilt_saying_why(tmp_path: Path) -> None:
    import dataclasses

    from lmtune.data.encoded_cache import FINGERPRINT, build_cache, plan_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl

    spec, tokenizer = _tiny_tokenizer()
    data = tmp_path / "train.jsonl"
    shutil.copy(_tiny_data(), data)
    root = tmp_path / "cache"
    said: list[str] = []

    def build(plan) -> None:  # type: ignore[no-untyped-def]
        build_cache(plan, lambda d: encode_jsonl(data, ExampleEncoder(tokenizer, spec.hf_dir), workers=1, directory=d), said.append)

    plan = plan_cache(root, data, spec)
    assert plan.stale == "none"
    build(plan)
    assert plan_cache(root, data, spec).stale is None
    assert [p.name for p in root.iterdir()] == [plan.directory.name]  # no temporary directory left

    other = dataclasses.replace(spec, config={**spec.config, "use_eot": False})
    assert plan_cache(root, data, other).stale == "it was encoded with another tokenizer (its files or settings differ)"

    record = json.loads((plan.directory / FINGERPRINT).read_text())
    record["fingerprint"]["lmtune"] = "0.0.1"
    (plan.directory / FINGERPRINT).write_text(json.dumps(record))
    stale = plan_cache(root, data, spec)
    assert stale.stale is not None and "written by lmtune 0.0.1" in stale.stale
    build(stale)
    assert said[-2].startswith(f"lmtune: re-encoding train.jsonl: the cache in {plan.directory} is out of date (it was written by lmtune 0.0.1")
    assert plan_cache(root, data, spec).stale is None

    os.utime(data, ns=(1, 1))  # the data file changed
    assert "the data file changed" in (plan_cache(root, data, spec).stale or "")


def _losses(out: Path) -> list[float]:
    return [row["NLL Loss"] for row in metric_rows(out)]


def _cache_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "cache/encoded").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_rerun_reuses_the_cache_and_losses_do_not_depend_on_it(tmp_path: Path) -> None:
    first = tmp_path / "first"
    r = run_lmtune("instruction_finetune", str(first), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lmtune: encoded train.jsonl: 4,000 examples" in r.stderr
    files = _cache_files(first)
    assert sorted(Path(f).name for f in files) == ["fingerprint.json", "num_targets.npy", "offsets.npy", "target_mask.npy", "tokens.npy"]
    expected = _losses(first)
    assert len(expected) == 8

    # The same OUT trained afresh (its run removed, its cache kept) maps the cache as it is.
    for p in first.iterdir():
        if p.name != "cache":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    r = run_lmtune("instruction_finetune", str(first), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lmtune: reusing the encoded train.jsonl in" in r.stderr and "lmtune: encoded" not in r.stderr
    assert _cache_files(first) == files  # not one file rewritten
    assert _losses(first) == expected

    without = tmp_path / "without"
    r = run_lmtune("instruction_finetune", str(without), *TINY, "data_cache=false")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (without / "cache/encoded").exists()  # OUT/cache also holds fairseq2's torch caches
    assert _losses(without) == expected


def _limit_file_size() -> None:
    # The kernel refuses to grow a file past 100 KB (EFBIG; Python ignores SIGXFSZ): a disk that fills.
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


@pytest.mark.slow
def test_a_full_disk_is_one_sentence_and_leaves_no_half_written_cache(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "lmtune", "instruction_finetune", str(out), *TINY],
        capture_output=True, text=True, env=env, timeout=600, preexec_fn=_limit_file_size,
    )  # fmt: skip
    assert_user_error(r, f"{out}/cache/encoded: no room left on the disk to write the encoded", "train.jsonl", "data_cache=false")
    assert list((out / "cache/encoded").iterdir()) == []
    assert (out / "lmtune.yaml").is_file()  # what was written before is kept


def test_a_killed_build_is_never_used_and_its_leftovers_are_removed(tmp_path: Path) -> None:
    from lmtune.data.encoded_cache import FINGERPRINT, build_cache, cache_dir, plan_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl

    spec, tokenizer = _tiny_tokenizer()
    data = tmp_path / "train.jsonl"
    shutil.copy(_tiny_data(), data)
    root = tmp_path / "cache"
    final = cache_dir(root, data)
    # What kill -9 leaves: a hidden temporary directory with some arrays, and no cache under the final name.
    leftover = root / f".{final.name}.tmp-4242"
    leftover.mkdir(parents=True)
    (leftover / "tokens.npy").write_bytes(b"\x93NUMPY half")
    plan = plan_cache(root, data, spec)
    assert plan.stale == "none"
    # A directory under the final name without its fingerprint (written last) is not a cache either.
    final.mkdir()
    (final / "tokens.npy").write_bytes(b"\x93NUMPY half")
    plan = plan_cache(root, data, spec)
    assert plan.stale == "it is unreadable"
    build_cache(plan, lambda d: encode_jsonl(data, ExampleEncoder(tokenizer, spec.hf_dir), workers=1, directory=d), lambda s: None)
    assert sorted(p.name for p in root.iterdir()) == [final.name]
    assert (final / FINGERPRINT).is_file() and plan_cache(root, data, spec).stale is None
