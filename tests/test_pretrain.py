"""`lmtune pretrain`: plain-text corpora, shares over ranks, the streamed reader and its exact resume,
training from scratch on tiny_llama, bad input, and generate / export on its checkpoints."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_user_error, losses, metric_rows, run_lmtune_in_process
from lmtune.data.text_corpus import (
    JSONL,
    TEXT,
    CorpusFile,
    Piece,
    read_documents,
    shares,
)

WORDS = "the cat dog sat on a mat and ran to big red blue house tree sun moon over under".split()


def _sentence(rng: random.Random, lo: int = 3, hi: int = 15) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_corpus(root: Path, seed: int = 0, n: int = 200) -> dict[str, Path]:
    """A paragraph .txt, a .jsonl and a held-out .txt; documents up to ~120 tokens, so many cross rows."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "a.txt", "w") as f:
        for _ in range(n):
            f.write("\n".join(_sentence(rng) for _ in range(rng.randint(1, 3))) + "\n\n")
    with open(root / "b.jsonl", "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": _sentence(rng, 5, 40), "id": rng.random()}) + "\n")
    with open(root / "valid.txt", "w") as f:
        for _ in range(30):
            f.write(_sentence(rng) + "\n\n")
    return {"a": root / "a.txt", "b": root / "b.jsonl", "valid": root / "valid.txt"}


def _docs(pieces: list[Piece]) -> list[str]:
    return [text for _, _, text in read_documents(pieces, on_skip=lambda *a: None)]


# ---------------------------------------------------------------- documents and shares


def test_documents_are_paragraphs_of_text_and_lines_of_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_bytes("\ufeffOne line 1\r\nline 2\r\n\r\n  \n\nTwo\n \t \nThree\n  indented\n\n\nno newline at the end".encode())
    assert _docs([Piece(path=txt, format=TEXT, start=0, end=txt.stat().st_size)]) == ["One line 1\nline 2", "Two", "Three\n  indented", "no newline at the end"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": ""}\n{"text": "two\\nlines", "meta": 3}\r\n{"text": "  "}\n{"text": "three"}')
    assert _docs([Piece(path=jsonl, format=JSONL, start=0, end=jsonl.stat().st_size)]) == ["one", "two\nlines", "three"]


@pytest.mark.parametrize("fmt", [TEXT, JSONL])
def test_every_way_to_cut_a_file_reads_each_document_exactly_once(tmp_path: Path, fmt: str) -> None:
    """Documents crossing a cut belong to the piece they start in; blank, whitespace-only and invalid lines included."""
    path = tmp_path / ("c.txt" if fmt == TEXT else "c.jsonl")
    if fmt == TEXT:
        data = b"alpha one\r\nalpha two\r\n\r\n \t\n\nbeta\n\ngam\xffma bad\ngamma\n   \ndelta"
    else:
        data = b'{"text": "a"}\n\n{"text": "b\\u00e9"}\r\n{"bad json\n{"text": "c"}\n\xff\n{"text": "d"}'
    path.write_bytes(data)
    size = len(data)
    whole = _docs([Piece(path=path, format=fmt, start=0, end=size)])
    assert len(whole) == 4, whole
    for a in range(size + 1):
        for b in range(a, size + 1):
            pieces = [Piece(path=path, format=fmt, start=lo, end=hi) for lo, hi in ((0, a), (a, b), (b, size)) if lo < hi]
            got = [d for p in pieces for d in _docs([p])]
            assert got == whole, (a, b, got)


def test_shares_are_whole_files_or_byte_ranges_covering_the_corpus(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate([50, 10, 40, 30, 20]):
        (tmp_path / f"f{i}.txt").write_text("x" * size)
        files.append(CorpusFile(path=tmp_path / f"f{i}.txt", size=size))
    by_files = shares(files, 2)
    names = [[p.path.name for p in s] for s in by_files]
    assert sorted(sum(names, [])) == [f"f{i}.txt" for i in range(5)]  # every file once
    assert all(p.start == 0 and p.end == p.path.stat().st_size for s in by_files for p in s)
    assert [sum(p.end for p in s) for s in by_files] == [80, 70]  # largest first to the lighter rank
    assert names == [["f0.txt", "f1.txt", "f4.txt"], ["f2.txt", "f3.txt"]]  # each in corpus order
    by_ranges = shares(files[:2], 3)  # fewer files than ranks: byte ranges of the files end to end
    assert [[(p.path.name, p.start, p.end) for p in s] for s in by_ranges] == [[("f0.txt", 0, 20)], [("f0.txt", 20, 40)], [("f0.txt", 40, 50), ("f1.txt", 0, 10)]]


def test_every_rank_must_get_a_document_to_train_on(tmp_path: Path) -> None:
    from lmtune.data.text_corpus import check_corpus
    from lmtune.errors import UserError

    path = tmp_path / "one.txt"
    path.write_text("a single paragraph\nof two lines\n")
    files = [CorpusFile(path=path, size=path.stat().st_size)]
    assert check_corpus(files, 1, skip_invalid=False, what="dataset").documents == [1]
    with pytest.raises(UserError, match="rank 1 of 2 would read no document"):
        check_corpus(files, 2, skip_invalid=False, what="dataset")
    assert check_corpus(files, 2, skip_invalid=False, what="valid_dataset", every_rank=False).documents == [1, 0]


# ---------------------------------------------------------------- the streamed reader


def _tokenizer():  # type: ignore[no-untyped-def]
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import load_tokenizer

    return load_tokenizer(resolve_model(CardStore(), "tiny_llama", None).tokenizer)  # type: ignore[arg-type]


def _reader(pieces: list[Piece], tokenizer, **kw):  # type: ignore[no-untyped-def]
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    from lmtune.data.text_stream import TextStreamReader

    return TextStreamReader(pieces, tokenizer.create_raw_encoder(), tokenizer.vocab_info.eos_idx, create_fake_gangs(CPU), **kw)


def _read_all(reader) -> list:  # type: ignore[no-untyped-def]
    return [b for batches in reader for b in batches]


def test_reader_streams_the_corpus_as_rows_of_documents_joined_with_eos(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path)
    tok = _tokenizer()
    pieces = [Piece(path=paths["a"], format=TEXT, start=0, end=paths["a"].stat().st_size), Piece(path=paths["b"], format=JSONL, start=0, end=paths["b"].stat().st_size)]
    eos = tok.vocab_info.eos_idx
    encode = tok.create_raw_encoder()
    expected = torch.cat([torch.cat([encode(d), torch.tensor([eos])]) for d in _docs(pieces)])
    batches = _read_all(_reader(pieces, tok, max_seq_len=32, rows=3))
    # Each batch is 3 rows of 32 tokens and the next batch's first token; together, exactly the stream.
    for b in batches[:-1]:
        assert len(b.seqs) == 3 * 32 + 1 and b.packed
    stream = torch.cat([batches[0].seqs[:1]] + [b.seqs[1:] for b in batches])
    assert torch.equal(stream, expected)
    for b in batches[:-1]:
        # Pieces end at an EOS or at a row boundary (every 32 tokens), never span one.
        ends = torch.tensor(b.seq_lens[:-1]).cumsum(0)
        for end in ends.tolist():
            assert end % 32 == 0 or b.seqs[end - 1] == eos, end
        assert all(n <= 32 for n in b.seq_lens[:-1]) and b.seq_lens[-1] <= 33


def test_reader_resumes_bit_for_bit_from_its_state(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path)
    tok = _tokenizer()
    pieces = [Piece(path=paths["a"], format=TEXT, start=0, end=paths["a"].stat().st_size), Piece(path=paths["b"], format=JSONL, start=0, end=paths["b"].stat().st_size)]
    reference = _read_all(_reader(pieces, tok, max_seq_len=48, rows=2, num_accumulate=2))
    assert len(reference) > 20
    mid_document = 0
    for k in (1, 2, 5, 9, len(reference) // 2 - 1):
        first = _reader(pieces, tok, max_seq_len=48, rows=2, num_accumulate=2)
        for _ in range(k):
            next(first)
        state = first.state_dict()
        mid_document += state["token"] > 0
        torch.save(state, tmp_path / "dp_00.pt")  # as fairseq2 writes it into a checkpoint
        resumed = _reader(pieces, tok, max_seq_len=48, rows=2, num_accumulate=2)
        resumed.load_state_dict(torch.load(tmp_path / "dp_00.pt", weights_only=True))
        rest = _read_all(resumed)
        assert len(rest) == len(reference) - 2 * k
        for a, b in zip(rest, reference[2 * k :]):
            assert torch.equal(a.seqs, b.seqs) and list(a.seq_lens) == list(b.seq_lens)
    assert mid_document >= 3  # most positions were inside a document
    # reset() starts the share again: the next epoch reads the same stream.
    again = _reader(pieces, tok, max_seq_len=48, rows=2, num_accumulate=2)
    _read_all(again)
    again.reset()
    assert torch.equal(next(again)[0].seqs, reference[0].seqs)


def test_reader_names_the_file_and_line_of_text_that_turned_invalid(tmp_path: Path) -> None:
    """A file changed after the check before training: the reader stops with the same one sentence."""
    from lmtune.data.text_corpus import CorpusError

    path = tmp_path / "a.txt"
    path.write_bytes(b"fine text\n\nmore\n\n" * 50 + b"bro\xc3\x28ken\n")
    reader = _reader([Piece(path=path, format=TEXT, start=0, end=path.stat().st_size)], _tokenizer(), max_seq_len=16, rows=2)
    with pytest.raises(CorpusError, match=f"^{path}:201: invalid UTF-8 \\(byte 0xc3 at column 4\\)"):
        _read_all(reader)
    skipping = _reader([Piece(path=path, format=TEXT, start=0, end=path.stat().st_size)], _tokenizer(), max_seq_len=16, rows=2, skip_invalid=True)
    assert _read_all(skipping)


def test_a_rerun_reuses_the_corpus_check_until_a_file_changes(tmp_path: Path) -> None:
    from lmtune.runs.pretrain import _write_check_cache, check_text

    paths = write_corpus(tmp_path / "corpus", n=20)
    out = tmp_path / "out"
    out.mkdir()
    first = check_text(str(paths["a"]), "dataset", 2, False, out)
    assert first[1] is not None and sum(first[0].documents) == 20
    _write_check_cache(out, {"dataset": first})
    again = check_text(str(paths["a"]), "dataset", 2, False, out)
    assert again[1] is None and again[0] == first[0]  # from OUT/corpus_check.json
    assert check_text(str(paths["a"]), "dataset", 1, False, out)[1] is not None  # another number of ranks
    with open(paths["a"], "a") as f:
        f.write("one more document\n")
    changed = check_text(str(paths["a"]), "dataset", 2, False, out)
    assert changed[1] is not None and sum(changed[0].documents) == 21


@pytest.mark.slow
def test_packed_rows_score_each_document_piece_on_its_own(tmp_path: Path) -> None:
    """The training loss of a batch equals the sum of each document piece run alone (per-document attention)."""
    from fairseq2.datasets import SequenceBatch
    from fairseq2.models.transformer import (
        get_default_sdpa_factory,
        set_default_sdpa_factory,
    )

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.document_attention import DocumentSDPA
    from lmtune.training.nll_unit import target_nll as token_nll

    paths = write_corpus(tmp_path)
    tok = _tokenizer()
    batch = next(_reader([Piece(path=paths["valid"], format=TEXT, start=0, end=paths["valid"].stat().st_size)], tok, max_seq_len=40, rows=3))[0]
    assert len(batch.seq_lens) > 4
    before = get_default_sdpa_factory()
    set_default_sdpa_factory(DocumentSDPA)  # what the recipe sets with fairseq2's default attention
    try:
        model = load_any_model(resolve_model(CardStore(), "tiny_llama", None), seed=0)
    finally:
        set_default_sdpa_factory(before)
    assert any(isinstance(m, DocumentSDPA) for m in model.modules())
    with torch.no_grad():
        loss, targets = token_nll(model, batch)
        assert targets.num_elements == 3 * 40
        by_piece = torch.zeros(())
        start = 0
        for n in batch.seq_lens:
            piece = batch.seqs[start : start + n]
            target = batch.seqs[start + 1 : start + n + 1]
            m = len(target)  # the last piece's last token is only a target
            seqs, layout = SequenceBatch(piece[:m].unsqueeze(0), None).as_input()  # alone, positions from 0
            logits = model(seqs, layout)
            by_piece += torch.nn.functional.cross_entropy(logits[0], target, reduction="sum")
            start += n
    torch.testing.assert_close(loss, by_piece, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- training runs


def _args(paths: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--config", "model=tiny_llama", "init=random", f"dataset=[{paths['a']},{paths['b']}]", f"valid_dataset={paths['valid']}",
        "max_seq_len=64", "batch_size=4", "max_num_steps=40", "checkpoint_every_n_steps=10", "validate_every_n_steps=20",
        "publish_metrics_every_n_steps=1", "learning_rate=3e-3", "lr_scheduler.num_warmup_steps=5", "keep_last_n_checkpoints=2",
        "tokenizer_threads=2", *extra,
    ]  # fmt: skip


def _valid(out: Path) -> dict[int, tuple[float, float]]:
    return {m["Step"]: (m["NLL Loss"], m["Perplexity"]) for m in metric_rows(out, "valid")}


def _complete_steps(out: Path) -> list[int]:
    ckpt = out / "checkpoints"
    return sorted(int(p.name[5:]) for p in ckpt.glob("step_*") if p.name[5:].isdigit()) if ckpt.is_dir() else []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=30)  # ~6k tokens: 40 steps of 256 read it twice


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: dict[str, Path]) -> Path:
    """tiny_llama from random weights, 40 steps, crossing a data epoch."""
    out = tmp_path_factory.mktemp("trained") / "out"
    r = run_lmtune_in_process("pretrain", str(out), *_args(corpus))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lmtune: pretraining tiny_llama (random initial weights)" in r.stderr
    assert "dataset: 2 file(s)" in r.stderr and " 60 documents" in r.stderr
    return out


@pytest.mark.slow
def test_from_scratch_the_loss_falls_and_validation_reports_perplexity(trained: Path) -> None:
    train = losses(trained)
    assert sorted(train) == list(range(1, 41))
    assert train[1] > math.log(400)  # random weights: about ln(vocabulary)
    assert sum(train[s] for s in range(36, 41)) / 5 < 0.5 * train[1]
    rows = metric_rows(trained)
    assert all(r["Padding"] == 0 for r in rows)
    # Every batch is 4 rows of 64 targets but the last of an epoch (what is left of the corpus);
    # each epoch reads the same stream again.
    short = [r["Step"] for r in rows if r["Number of Target Elements"] != 4 * 64]
    epoch_ends = [r["Step"] for r, nxt in zip(rows, rows[1:] + [None]) if nxt is None or nxt["Data Epoch"] > r["Data Epoch"]]
    assert len(epoch_ends) >= 2 and set(short) <= set(epoch_ends)
    tokens = [sum(r["Number of Target Elements"] for r in rows if r["Data Epoch"] == e) for e in (1, 2)]
    assert tokens[0] == tokens[1]
    valid = _valid(trained)
    assert sorted(valid) == [20, 40]
    for loss, perplexity in valid.values():
        assert perplexity == pytest.approx(math.exp(loss), rel=1e-9)
    assert valid[40][0] < valid[20][0] < math.log(400)


@pytest.mark.slow
def test_killed_run_resumes_mid_stream_to_identicallosses(tmp_path: Path, corpus: dict[str, Path], trained: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "pretrain", str(out), *_args(corpus)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _complete_steps(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = _complete_steps(out)
    assert steps_at_kill and steps_at_kill[-1] < 40, steps_at_kill
    state = torch.load(out / f"checkpoints/step_{steps_at_kill[-1]}/data_reader/dp_00.pt", weights_only=False)
    assert set(state) == {"share", "piece", "offset", "token"}
    r = run_lmtune_in_process("pretrain", str(out), *_args(corpus))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {steps_at_kill[-1]}" in r.stderr
    expected, resumed = losses(trained), losses(out)
    assert sorted(resumed) == list(range(1, 41))
    for step in range(steps_at_kill[-1] + 1, 41):
        assert resumed[step] == expected[step], (step, resumed[step], expected[step])
    assert _valid(out)[40] == _valid(trained)[40]


@pytest.mark.slow
def test_generate_and_write_hf_config_work_on_its_checkpoints(tmp_path: Path, trained: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"src": s, "tgt": "mat"}) + "\n" for s in ["the cat sat", "a big red"]))
    gen = tmp_path / "gen"
    r = run_lmtune_in_process("generate", str(gen), "--config", f"checkpoint_dir={trained / 'checkpoints'}", "model=last_checkpoint", f"dataset={prompts}", "generator_config.max_gen_len=16")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (gen / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["completion"].strip() for row in rows)
    r = run_lmtune_in_process("write_hf_config", str(trained), "--verify")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((trained / "checkpoints/step_40/hf/config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.slow
def test_continues_from_a_checkpoints_weights(tmp_path: Path, corpus: dict[str, Path], trained: Path) -> None:
    """model=last_checkpoint: a second stage starts from the trained weights, not from random ones."""
    out = tmp_path / "stage2"
    r = run_lmtune_in_process("pretrain", str(out), *_args(corpus, "init=checkpoint", "model=last_checkpoint", f"resume_checkpoint_dir={trained / 'checkpoints'}", "max_num_steps=3", "checkpoint_every_n_steps=3", "valid_dataset=null"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(out)[1] < 0.6 * losses(trained)[1]


def test_the_gpt2_small_card_has_gpt2_smalls_shape_and_size() -> None:
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import model_from_card
    from lmtune.models.loading import model_config, model_family

    store = CardStore()
    config = model_config(model_from_card(store, store.require("llama_gpt2_small", "model"), need_weights=False))
    assert (config.num_layers, config.model_dim, config.num_attn_heads, config.max_seq_len, config.vocab_size) == (12, 768, 12, 1024, 32000)
    model = model_family("llama").create_new_model(config, create_fake_gangs(CPU), torch.float32, meta=True, init_rank0_only=False)
    # GPT-2 small: 124.4M with its 50,257-token vocabulary; here 123.7M with Llama 2's 32,000 and a SwiGLU of 2560.
    assert sum(p.numel() for p in model.parameters()) == 123_685_632


def test_the_gpt2_small_preset_trains_gpt2_small_itself() -> None:
    """configs/gpt2_small_pretrain.yaml names gpt2_small: lmtune's GPT-2 (family gpt2) with GPT-2 small's shape and size."""
    import yaml
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import model_from_card
    from lmtune.models.loading import model_config, model_family
    from lmtune.resources import configs_dir

    assert yaml.safe_load((configs_dir() / "gpt2_small_pretrain.yaml").read_text())["model"] == "gpt2_small"
    store = CardStore()
    spec = model_from_card(store, store.require("gpt2_small", "model"), need_weights=False)
    assert spec.family == "gpt2"
    config = model_config(spec)
    assert (config.num_layers, config.model_dim, config.num_attn_heads, config.max_seq_len, config.vocab_size, config.ffn_inner_dim) == (12, 768, 12, 1024, 50257, 3072)
    model = model_family("gpt2").create_new_model(config, create_fake_gangs(CPU), torch.float32, meta=True, init_rank0_only=False)
    # transformers' GPT2LMHeadModel(GPT2Config()): 124,439,808; fairseq2's position table has one more (padding's) row.
    assert sum(p.numel() for p in model.parameters()) == 124_439_808 + 768


# ---------------------------------------------------------------- two ranks


def _torchrun(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m", "lmtune", "pretrain", str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["files", "byte_ranges"])
def test_two_ranks_read_disjoint_shares(tmp_path: Path, corpus: dict[str, Path], split: str) -> None:
    if split == "files":
        dataset, files = f"dataset=[{corpus['a']},{corpus['b']}]", [corpus["a"], corpus["b"]]
    else:
        dataset, files = f"dataset={corpus['a']}", [corpus["a"]]  # one file, two ranks: a byte range each
    out = tmp_path / "out"
    r = _torchrun(out, *_args(corpus, dataset, "max_num_steps=6", "checkpoint_every_n_steps=6", "valid_dataset=null"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "over 2 ranks" in r.stderr
    shares_read = [torch.load(out / f"checkpoints/step_6/data_reader/dp_{rank:02d}.pt", weights_only=False)["share"] for rank in (0, 1)]
    ranges = sorted((path, start, end) for share in shares_read for path, start, end in share)
    # Together the ranks' pieces cover every byte of the corpus once.
    expected = []
    for path in files:
        covered = [(s, e) for p, s, e in ranges if p == str(path.resolve())]
        assert covered[0][0] == 0 and covered[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
        expected += covered
    assert len(ranges) == len(expected)
    if split == "files":
        assert [len(s) for s in shares_read] == [1, 1] and shares_read[0][0][0] != shares_read[1][0][0]
    else:
        assert shares_read[0][0][2] == shares_read[1][0][1]  # rank 1 starts where rank 0 ends


# ---------------------------------------------------------------- bad input


def _quick(paths: dict[str, Path], dataset: str, *extra: str) -> list[str]:
    return _args(paths, dataset, "max_num_steps=2", "checkpoint_every_n_steps=2", "valid_dataset=null", *extra)


@pytest.mark.slow
def test_binary_file_among_text_files_is_refused_or_skipped(tmp_path: Path, corpus: dict[str, Path]) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_bytes(corpus["a"].read_bytes())
    (folder / "model.txt").write_bytes(b"PK\x03\x04\x00\x00binary" * 10)
    out = tmp_path / "out"
    r = run_lmtune_in_process("pretrain", str(out), *_quick(corpus, f"dataset={folder}"))
    assert_user_error(r, f"{folder / 'model.txt'} is a binary file", "skip_invalid=true")
    assert not out.exists()  # nothing written
    r = run_lmtune_in_process("pretrain", str(out), *_quick(corpus, f"dataset={folder}", "skip_invalid=true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping 1 binary file(s)" in r.stderr and "dataset: 1 file(s)" in r.stderr


@pytest.mark.slow
def test_invalid_utf8_names_file_and_line_or_is_skipped_with_a_count(tmp_path: Path, corpus: dict[str, Path]) -> None:
    bad = tmp_path / "bad.txt"
    lines = corpus["a"].read_bytes().split(b"\n")
    lines[6] = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    lines[40] = b"\xff\xfe"
    bad.write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    r = run_lmtune_in_process("pretrain", str(out), *_quick(corpus, f"dataset={bad}"))
    assert_user_error(r, f"{bad}:7: invalid UTF-8 (byte 0xe9 at column 4)", "skip_invalid=true")
    assert not out.exists()
    r = run_lmtune_in_process("pretrain", str(out), *_quick(corpus, f"dataset={bad}", "skip_invalid=true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping 2 invalid line(s) (skip_invalid=true; the first: {bad}:7: invalid UTF-8" in r.stderr


@pytest.mark.slow
def test_invalid_json_line_names_file_and_line(tmp_path: Path, corpus: dict[str, Path]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"content": "no text field"}\n')
    r = run_lmtune_in_process("pretrain", str(tmp_path / "out"), *_quick(corpus, f"dataset={bad}"))
    assert_user_error(r, f"{bad}:3: not a JSON object with a string \"text\" field")
    bad.write_text('{"text": "fine"}\n{"text": "unterminated\n')
    r = run_lmtune_in_process("pretrain", str(tmp_path / "out"), *_quick(corpus, f"dataset={bad}"))
    assert_user_error(r, f"{bad}:2: not valid JSON")


@pytest.mark.slow
def test_corpus_without_text_is_refused(tmp_path: Path, corpus: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.txt").write_text("\n  \n\t\n")
    (empty / "c.jsonl").write_text('{"text": ""}\n\n')
    r = run_lmtune_in_process("pretrain", str(tmp_path / "out"), *_quick(corpus, f"dataset={empty}"))
    assert_user_error(r, "no readable text in 3 file(s)")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.md").write_text("text, but not .txt")
    r = run_lmtune_in_process("pretrain", str(tmp_path / "out"), *_quick(corpus, f"dataset={tmp_path / 'none'}"))
    assert_user_error(r, "holds no .txt or .jsonl file")
    r = run_lmtune_in_process("pretrain", str(tmp_path / "out"), *_quick(corpus, f"dataset={tmp_path / 'missing.txt'}"))
    assert_user_error(r, "no such file or directory")
    r = run_lmtune_in_process("pretrain", str(tmp_path / "out"), *_quick(corpus, f"dataset={corpus['a']}", "init=checkpoint", "model=llama3_2_1b"))
    assert_user_error(r, "model card 'llama3_2_1b' has no checkpoint; set init=random")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_corrupted_corpus_on_resume_keeps_the_checkpoints(tmp_path: Path, corpus: dict[str, Path]) -> None:
    data = tmp_path / "a.txt"
    data.write_bytes(corpus["a"].read_bytes())
    out = tmp_path / "out"
    args = _quick(corpus, f"dataset={data}")
    assert run_lmtune_in_process("pretrain", str(out), *args).returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*") if "logs" not in p.parts)
    with open(data, "ab") as f:
        f.write(b"\n\nbroken \xc3\x28 text\n")
    lines = data.read_bytes().count(b"\n")
    r = run_lmtune_in_process("pretrain", str(out), *args, "max_num_steps=4")
    assert_user_error(r, f"{data}:{lines}: invalid UTF-8")
    assert sorted(p.relative_to(out) for p in out.rglob("*") if "logs" not in p.parts) == before
