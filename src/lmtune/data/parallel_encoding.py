"""Encoding a JSONL file into flat arrays with worker processes.

The file is cut into chunks of whole lines (about ``chunk_bytes`` each); forked workers
parse and encode chunks with ``lmtune.data.encoding.ExampleEncoder`` (the same code as one
by one, so the tokens and loss masks are identical), and the parent appends their arrays in
file order, either to ``.npy`` files in a directory or to arrays in memory. Workers are
forked so they inherit the loaded tokenizer instead of loading it again (seconds each).
Only a few chunks are in flight at once, so the parent holds chunks, not the dataset.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lmtune.data.encoded_examples import DTYPES, FILES, EncodedExamples
from lmtune.data.encoding import ExampleEncoder
from lmtune.data.records import parse_line

CHUNK_BYTES = 1 << 20

_encoder: ExampleEncoder | None = None  # set in the parent just before forking the workers

Chunk = tuple[int, int, int]  # byte start, byte end, number of its first line
Encoded = dict[str, np.ndarray]  # FILES, with "lengths" in place of "offsets"


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 32))


def line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Byte ranges of whole lines, each about ``chunk_bytes``, with their first line's number."""
    size = path.stat().st_size
    chunks = []
    start, line = 0, 1
    with path.open("rb") as fp:
        while start < size:
            fp.seek(start + chunk_bytes)
            fp.readline()  # to the end of the line the cut falls in
            end = min(fp.tell(), size)
            fp.seek(start)
            newlines = fp.read(end - start).count(b"\n")
            chunks.append((start, end, line))
            start, line = end, line + newlines
    return chunks


def encode_chunk(path: Path, chunk: Chunk, encoder: ExampleEncoder | None = None) -> Encoded:
    encoder = encoder or _encoder
    assert encoder is not None
    start, end, first_line = chunk
    with path.open("rb") as fp:
        fp.seek(start)
        text = fp.read(end - start).decode("utf-8")
    # Line numbers as read_records counts them (text mode: universal newlines).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records = [parse_line(path, first_line + k, line, True) for k, line in enumerate(lines) if line.strip()]
    tokens: list[int] = []
    mask: list[bool] = []
    lengths: list[int] = []
    num_targets: list[int] = []
    for example in encoder.encode_all(records):
        tokens.extend(example.tokens)
        mask.extend(example.target_mask)
        lengths.append(len(example.tokens))
        num_targets.append(sum(example.target_mask))
    return {
        "tokens": np.array(tokens, dtype=DTYPES["tokens"]),
        "target_mask": np.array(mask, dtype=DTYPES["target_mask"]),
        "lengths": np.array(lengths, dtype=np.int64),
        "num_targets": np.array(num_targets, dtype=DTYPES["num_targets"]),
    }


class NpyAppender:
    """A 1-D ``.npy`` file written piece by piece: the header is rewritten with the length at the end."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self.fp: BinaryIO = path.open("wb")
        self.header_len = len(self._header(0))
        self.fp.write(self._header(0))

    def _header(self, count: int) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (count,)})
        return buf.getvalue()

    def append(self, values: np.ndarray) -> None:
        self.fp.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.count += len(values)

    def close(self) -> None:
        header = self._header(self.count)
        # 1-D headers pad to 128 bytes for any length, so the data never moves.
        assert len(header) == self.header_len, (len(header), self.header_len)
        self.fp.seek(0)
        self.fp.write(header)
        self.fp.flush()
        os.fsync(self.fp.fileno())
        self.fp.close()


def _chunks_encoded(path: Path, encoder: ExampleEncoder, chunks: list[Chunk], workers: int) -> Iterator[Encoded]:
    """Encoded chunks in file order; up to 2 per worker in flight."""
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield encode_chunk(path, chunk, encoder)
        return
    global _encoder
    _encoder = encoder
    # Rust tokenizers warn (and turn their threads off) in a child forked after using them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending: deque[Future[Encoded]] = deque()
            todo = iter(chunks)
            for chunk in todo:
                pending.append(pool.submit(encode_chunk, path, chunk))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(encode_chunk, path, nxt))
                yield done
    finally:
        _encoder = None


def encode_jsonl(path: Path, encoder: ExampleEncoder, *, workers: int, directory: Path | None = None, chunk_bytes: int = CHUNK_BYTES) -> EncodedExamples:
    """Every record of ``path`` encoded; written as ``.npy`` files into ``directory`` (then
    memory-mapped) or kept in memory when it is None."""
    chunks = line_chunks(path, chunk_bytes)
    encoded = _chunks_encoded(path, encoder, chunks, workers)
    if directory is None:
        parts = list(encoded)
        lengths = np.concatenate([p["lengths"] for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return EncodedExamples(
            np.concatenate([p["tokens"] for p in parts]), np.concatenate([p["target_mask"] for p in parts]),
            offsets, np.concatenate([p["num_targets"] for p in parts]),
        )  # fmt: skip

    files = {name: NpyAppender(directory / f"{name}.npy", DTYPES[name]) for name in FILES}
    try:
        total = 0
        files["offsets"].append(np.zeros(1, dtype=np.int64))
        for part in encoded:
            files["tokens"].append(part["tokens"])
            files["target_mask"].append(part["target_mask"])
            files["num_targets"].append(part["num_targets"])
            files["offsets"].append(total + np.cumsum(part["lengths"]))
            total += int(part["lengths"].sum())
        for f in files.values():
            f.close()
    finally:
        for f in files.values():
            f.fp.close()
    return EncodedExamples.load(directory)
