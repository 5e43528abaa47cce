"""The encoded dataset: arrays equal to the one-by-one encoding, a cache shared by every run of the
user (one entry per data file and tokenizer, built once by concurrent runs), rebuilt when stale or
damaged, never left half-written, listed and freed by `lmtune cache`, and training losses that do
not depend on it."""

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

from helpers import assert_user_error, metric_rows, run_lmtune_in_process

TINY = ["--config-file", "tiny_gsm8k", "--config", "max_num_steps=8", "publish_metrics_every_n_steps=1", "max_num_tokens=1024"]


def _tiny_tokenizer():  # type: ignore[no-untyped-def]
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import load_tokenizer

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
    from lmtune.data.encoding import ExampleEncoder, _rust_tokenizer
    from lmtune.data.parallel_encoding import encode_jsonl, line_chunks
    from lmtune.data.records import read_records

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


def test_a_cache_of_another_tokenizer_is_its_own_entry_and_another_version_is_rebuilt_saying_why(tmp_path: Path) -> None:
    import dataclasses

    from lmtune.data.encoded_cache import FINGERPRINT, ensure_cache, plan_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl

    spec, tokenizer = _tiny_tokenizer()
    data = tmp_path / "train.jsonl"
    shutil.copy(_tiny_data(), data)
    root = tmp_path / "cache"
    said: list[str] = []

    def build(plan) -> None:  # type: ignore[no-untyped-def]
        ensure_cache(plan, lambda d: encode_jsonl(data, ExampleEncoder(tokenizer, spec.hf_dir), workers=1, directory=d), said.append)

    plan = plan_cache(root, data, spec)
    assert plan.stale == "none"
    build(plan)
    assert plan_cache(root, data, spec).stale is None
    assert [p.name for p in root.iterdir() if p.is_dir()] == [plan.directory.name]  # no temporary directory left

    # Another tokenizer's encoding of the same file is an entry of its own: runs on both share the cache.
    other = dataclasses.replace(spec, config={**spec.config, "use_eot": False})
    other_plan = plan_cache(root, data, other)
    assert other_plan.stale == "none" and other_plan.directory != plan.directory

    record = json.loads((plan.directory / FINGERPRINT).read_text())
    record["fingerprint"]["lmtune"] = "0.0.1"
    (plan.directory / FINGERPRINT).write_text(json.dumps(record))
    stale = plan_cache(root, data, spec)
    assert stale.stale is not None and "written by lmtune 0.0.1" in stale.stale
    build(stale)
    assert said[-2].startswith(f"lmtune: re-encoding train.jsonl: the cache in {plan.directory} is out of date (it was written by lmtune 0.0.1")
    assert plan_cache(root, data, spec).stale is None
    build(plan_cache(root, data, spec))
    assert said[-1] == f"lmtune: reusing the encoded train.jsonl in {plan.directory} (`lmtune cache clear` to re-encode)"

    os.utime(data, ns=(1, 1))  # the data file changed: the same entry, rebuilt in place
    changed = plan_cache(root, data, spec)
    assert changed.directory == plan.directory and "the data file changed" in (changed.stale or "")


def _losses(out: Path) -> list[float]:
    return [row["NLL Loss"] for row in metric_rows(out)]


def _cache_root() -> Path:
    return Path(os.environ["LMTUNE_CACHE_DIR"]) / "encoded"


def _cache_files() -> dict[str, int]:
    return {str(p.relative_to(_cache_root())): p.stat().st_mtime_ns for p in _cache_root().rglob("*") if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_two_outs_on_the_same_data_share_one_entry_that_cache_list_shows_and_clear_frees(tmp_path: Path) -> None:
    from lmtune.commands.cache import clear_cache, list_cache

    first = tmp_path / "first"
    r = run_lmtune_in_process("instruction_finetune", str(first), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lmtune: encoded train.jsonl: 4,000 examples" in r.stderr
    files = _cache_files()
    entries = sorted({Path(f).parts[0] for f in files})
    assert len(entries) == 1 and entries[0].startswith("train-")
    assert sorted(Path(f).name for f in files if f.startswith("train-")) == ["fingerprint.json", "num_targets.npy", "offsets.npy", "target_mask.npy", "tokens.npy"]
    assert not (first / "cache/encoded").exists()
    expected = _losses(first)
    assert len(expected) == 8

    # A new OUT on the same data maps the entry as it is: no encoding, not one file rewritten.
    second = tmp_path / "second"
    r = run_lmtune_in_process("instruction_finetune", str(second), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"lmtune: reusing the encoded train.jsonl in {_cache_root()}/train-" in r.stderr and "lmtune: encoded" not in r.stderr
    assert _cache_files() == files
    assert _losses(second) == expected

    without = tmp_path / "without"
    r = run_lmtune_in_process("instruction_finetune", str(without), *TINY, "data_cache=false")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lmtune: reusing" not in r.stderr and _cache_files() == files  # the cache is neither read nor written
    assert _losses(without) == expected

    train = _cache_root() / next(e for e in entries if e.startswith("train-"))
    record = json.loads((train / "fingerprint.json").read_text())
    assert record["files"] == {name: (train / name).stat().st_size for name in ("tokens.npy", "target_mask.npy", "offsets.npy", "num_targets.npy")}
    assert record["files"]["tokens.npy"] == 128 + 4 * record["tokens"]  # a .npy header, then int32 tokens
    shown = list_cache(_cache_root())
    lines = shown.splitlines()
    assert lines[0].startswith(f"lmtune: 1 encoded data file(s) in {_cache_root()}, "), shown
    row = next(line for line in lines if line.startswith(train.name))
    assert row.split()[1:3] == ["4,000", f"{record['tokens']:,}"], row
    assert row.endswith(f"tiny_tokenizer (llama)  {_tiny_data().resolve()}"), row
    on_disk = sum(p.stat().st_blocks * 512 for p in train.iterdir()) + train.stat().st_blocks * 512
    from lmtune.commands.cache import size_text

    assert size_text(on_disk) in row, (row, on_disk)

    said = clear_cache(_cache_root(), None, 1.0)  # used just now: kept
    assert said.startswith("lmtune: freed 0 ") and train.is_dir()
    from lmtune.errors import UserError

    # A name with no letter in common with any entry, so the error lists the valid ones (a near name would get "did you mean").
    with pytest.raises(UserError, match=rf"no encoded data 'zz' in {_cache_root()}; valid: {train.name}\."):
        clear_cache(_cache_root(), "zz", None)
    with pytest.raises(UserError, match=rf"no encoded data '{train.name}0' in {_cache_root()}; did you mean '{train.name}'\?"):
        clear_cache(_cache_root(), train.name + "0", None)
    said = clear_cache(_cache_root(), train.name, None)
    assert said == f"lmtune: freed 1 encoded data file(s), {size_text(on_disk)}, in {_cache_root()}" and list(_cache_root().iterdir()) == []
    (_cache_root() / f".{train.name}.tmp-4242").mkdir()  # what a killed build leaves: `clear` removes it too
    said = clear_cache(_cache_root(), None, None)
    assert said.startswith("lmtune: freed 0 ") and list(_cache_root().iterdir()) == []
    assert list_cache(_cache_root()) == f"lmtune: no encoded data in {_cache_root()}"


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
    assert_user_error(r, f"{_cache_root()}: no room left on the disk to write the encoded", "train.jsonl", "data_cache=false")
    assert [p for p in _cache_root().iterdir() if p.is_dir()] == []  # no entry, no temporary directory
    assert (out / "lmtune.yaml").is_file()  # what was written before is kept


def test_a_killed_build_is_never_used_and_its_leftovers_are_removed(tmp_path: Path) -> None:
    from lmtune.data.encoded_cache import (
        FINGERPRINT,
        cache_dir,
        ensure_cache,
        fingerprint,
        plan_cache,
    )
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl

    spec, tokenizer = _tiny_tokenizer()
    data = tmp_path / "train.jsonl"
    shutil.copy(_tiny_data(), data)
    root = tmp_path / "cache"
    final = cache_dir(root, data, fingerprint(data, spec))
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
    assert (plan.stale, plan.damaged) == ("fingerprint.json is missing", True)
    ensure_cache(plan, lambda d: encode_jsonl(data, ExampleEncoder(tokenizer, spec.hf_dir), workers=1, directory=d), lambda s: None)
    assert sorted(p.name for p in root.iterdir()) == sorted([final.name, f".{final.name}.lock"])
    assert (final / FINGERPRINT).is_file() and plan_cache(root, data, spec).stale is None


@pytest.mark.slow
def test_a_damaged_entry_is_rebuilt_saying_which_file_and_trains_the_same_losses(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    r = run_lmtune_in_process("instruction_finetune", str(reference), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = _losses(reference)
    train = next(_cache_root().glob("train-*"))
    damages = {}
    for name in ("tokens.npy", "target_mask.npy", "offsets.npy", "num_targets.npy", "fingerprint.json"):
        path = train / name
        size = path.stat().st_size
        if name == "fingerprint.json":
            path.write_text('{"fingerprint": {"cache_format": 2,')  # cut short mid-write by hand
            damages[name] = "fingerprint.json is not valid JSON"
        else:
            with path.open("r+b") as fp:
                fp.truncate(size - 8)  # what a copy cut short or a full disk leaves
            damages[name] = f"{name} has {size - 8:,} bytes where {size:,} were written"
        out = tmp_path / name
        r = run_lmtune_in_process("instruction_finetune", str(out), *TINY)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        rebuilt = [line for line in r.stderr.splitlines() if line.startswith("lmtune: re-encoding train.jsonl:")]
        assert rebuilt == [f"lmtune: re-encoding train.jsonl: the cache in {train} is damaged ({damages[name]})."], r.stderr[-2000:]
        assert "lmtune: encoded train.jsonl: 4,000 examples" in r.stderr
        assert _losses(out) == expected, name


def test_a_rank_that_finds_the_entry_damaged_says_so_in_one_sentence(tmp_path: Path) -> None:
    from lmtune.data.encoded_cache import load_encoded
    from lmtune.errors import UserError

    (tmp_path / "fingerprint.json").write_text(json.dumps({"fingerprint": {}, "files": {"tokens.npy": 400}}))
    with pytest.raises(UserError, match=r"the encoded data is not whole on \S+ \(tokens.npy is missing\); rerun to rebuild it"):
        load_encoded(tmp_path)


@pytest.mark.slow
def test_two_runs_started_at_once_on_the_same_data_build_it_once_and_train_the_same_losses(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-m", "lmtune", "instruction_finetune", str(out), *TINY], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) for out in outs]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    both = "".join(errs)
    assert both.count("lmtune: encoded train.jsonl: 4,000 examples") == 1, both[-4000:]
    assert both.count("lmtune: reusing the encoded train.jsonl") == 1, both[-4000:]
    assert len(list(_cache_root().glob("train-*"))) == 1
    assert _losses(outs[0]) == _losses(outs[1])


def test_a_build_waits_for_the_lock_and_a_killed_holder_never_blocks_it(tmp_path: Path) -> None:
    import threading
    import time

    from lmtune.data.encoded_cache import ensure_cache, lock_path, plan_cache
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl

    spec, tokenizer = _tiny_tokenizer()
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(_tiny_data().read_text().splitlines()[:50]) + "\n")
    root = tmp_path / "cache"
    root.mkdir()
    plan = plan_cache(root, data, spec)
    # Another process holds the entry's lock (as a build would) and is then killed.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write('pid 4242 on elsewhere'); f.flush(); print('held', flush=True); time.sleep(600)", str(lock_path(plan.directory))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        killer = threading.Timer(1.0, holder.kill)
        killer.start()
        said: list[str] = []
        started = time.monotonic()
        ensure_cache(plan, lambda d: encode_jsonl(data, ExampleEncoder(tokenizer, spec.hf_dir), workers=1, directory=d), said.append)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert waited >= 0.9
    assert said[0] == f"lmtune: waiting for pid 4242 on elsewhere, which is encoding train.jsonl into {plan.directory}"
    assert said[1].startswith("lmtune: encoded train.jsonl: 50 examples")
    assert plan_cache(root, data, spec).stale is None


def test_clear_keeps_an_entry_being_built_and_a_waiter_relocks_after_a_clear(tmp_path: Path) -> None:
    import fcntl

    from lmtune.data.cache_entries import clear_entry
    from lmtune.data.encoded_cache import entry_lock, lock_path

    entry = tmp_path / "train-0123456789ab"
    entry.mkdir()
    (entry / "tokens.npy").write_bytes(b"x")
    with entry_lock(entry) as held:
        assert held
        assert clear_entry(entry) is False and entry.is_dir()  # its build holds the lock
    assert clear_entry(entry) is True and not entry.exists() and not lock_path(entry).exists()
    # A waiter that opened the lock file before a clear removed it locks the new file at the path.
    old = open(lock_path(entry), "a+")
    fcntl.flock(old, fcntl.LOCK_EX)
    lock_path(entry).unlink()
    old.close()
    with entry_lock(entry) as held:
        assert held and lock_path(entry).is_file()
