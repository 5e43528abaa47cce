"""A rank's share of a text corpus as a stream of packed batches, tokenized on the fly.

The path of data: the share's documents (``lmtune.data.text_corpus.read_documents``)
-> fairseq2's DataPipeline, which tokenizes them in parallel threads
(``.map(..., num_parallel_calls=N)``) and reads ahead of training (``.prefetch``)
-> each document's tokens with EOS appended -> rows of ``max_seq_len`` tokens cut
from the stream of documents -> batches of ``rows`` rows.

A batch is one flat fairseq2 *packed* SequenceBatch: its rows one after another,
each row cut into the pieces of the documents it holds (``seq_lens``), so a piece
attends only to itself and its positions restart at 0, as in packed fine-tuning
(``lmtune.data.packing``). The batch also holds the token after its last row, the
target of its last position; that token opens the next batch, so every token of
the stream but the first is a target exactly once.

Resume: the packer's buffer is never saved. The reader's state is the position of
the next unread token: (piece, byte offset of its document, tokens of that document
already read), three integers in the checkpoint (``data_reader/dp_N.pt``). Loading
it rebuilds the pipeline from that document, re-tokenizes it and skips the tokens
already read, so a resumed run reads exactly the batches an uninterrupted one reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, final

import torch
from fairseq2.data.data_pipeline import DataPipelineError, read_iterator
from fairseq2.datasets import DataReader, SequenceBatch
from fairseq2.gang import Gangs, ReduceOperation
from typing_extensions import override

from lmtune.data.text_corpus import CorpusError, Piece, read_documents


def _cause(ex: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen = 0
    cur: BaseException | None = ex
    while cur is not None and seen < 20:
        if isinstance(cur, kind):
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


@final
class TextStreamReader(DataReader[SequenceBatch]):
    """fairseq2 DataReader over one rank's share: ``num_accumulate`` batches per step, synced over the ranks."""

    def __init__(
        self,
        pieces: Sequence[Piece],
        encode: Callable[[str], torch.Tensor],
        eos_idx: int,
        gangs: Gangs,
        *,
        max_seq_len: int,
        rows: int,
        num_accumulate: int = 1,
        until_last: bool = False,
        max_num_tokens: int | None = None,
        num_parallel_calls: int = 4,
        skip_invalid: bool = False,
    ) -> None:
        """``until_last``: validation: every rank reads its whole share (a rank done early gets no
        batches), rather than all stopping when the first is done. ``max_num_tokens``: stop after that many.
        ``skip_invalid``: skip lines that are not UTF-8 or JSON (counted before training) instead of raising."""
        self._pieces = list(pieces)
        self._encode = encode
        self._eos = torch.tensor([eos_idx], dtype=torch.int64)
        self._gangs = gangs
        self._max_seq_len = max_seq_len
        self._rows = rows
        self._num_accumulate = num_accumulate
        self._until_last = until_last
        self._max_num_tokens = max_num_tokens
        self._num_parallel_calls = num_parallel_calls
        self._skip_invalid = skip_invalid
        self._docs: Iterator[dict[str, Any]] | None = None
        self._eod = False
        self._seek(0, None, 0)

    # ------------------------------------------------------------ position

    def _seek(self, piece: int, offset: int | None, token: int) -> None:
        """Puts the next unread token at ``token`` of the document at (piece, offset); None: the share's start."""
        self._piece, self._offset, self._used = piece, offset, token
        self._tokens: torch.Tensor | None = None  # the current document's tokens, EOS included
        self._num_read = 0
        self._docs = None  # the pipeline starts on the first read

    def _open(self) -> Iterator[dict[str, Any]]:
        on_skip = (lambda path, offset, why: None) if self._skip_invalid else None
        documents = read_documents(self._pieces, self._piece, self._offset, on_skip)
        encode, eos = self._encode, self._eos

        def tokenize(doc: tuple[int, int, str]) -> dict[str, Any]:
            piece, offset, text = doc
            return {"piece": piece, "offset": offset, "tokens": torch.cat([encode(text).to(torch.int64), eos])}

        pipeline = (
            read_iterator(documents, reset_fn=lambda it: it, infinite=False, skip_pickling_check=True)
            .map(tokenize, num_parallel_calls=self._num_parallel_calls)
            .prefetch(4 * self._num_parallel_calls)
            .and_return()
        )
        return iter(pipeline)

    def _fill(self) -> bool:
        """Makes the current document one with unread tokens; False at the end of the share."""
        while self._tokens is None or self._used >= len(self._tokens):
            if self._docs is None:
                self._docs = self._open()
                resuming = self._offset is not None
            else:
                resuming = False
            try:
                doc = next(self._docs)
            except StopIteration:
                return False
            except DataPipelineError as ex:
                error = _cause(ex, CorpusError)
                if error is not None:
                    raise error from None
                raise
            self._piece, self._offset, self._tokens = doc["piece"], doc["offset"], doc["tokens"]
            if not resuming:
                self._used = 0
        return True

    # ------------------------------------------------------------ batches

    def _next_batch(self) -> SequenceBatch | None:
        if self._max_num_tokens is not None and self._num_read >= self._max_num_tokens:
            return None
        chunks: list[torch.Tensor] = []
        seq_lens: list[int] = []
        for _ in range(self._rows):
            room = self._max_seq_len
            while room > 0 and self._fill():
                assert self._tokens is not None
                n = min(room, len(self._tokens) - self._used)
                chunks.append(self._tokens[self._used : self._used + n])
                seq_lens.append(n)
                self._used += n
                room -= n
            if room > 0:
                break  # the end of the share
        if self._fill():  # the last position's target, left unread: it opens the next batch
            assert self._tokens is not None
            chunks.append(self._tokens[self._used : self._used + 1])
            seq_lens[-1] += 1
        if sum(seq_lens) < 2:
            return None  # nothing to predict
        self._num_read += sum(seq_lens) - 1
        return SequenceBatch(torch.cat(chunks), seq_lens, packed=True)

    @override
    def __iter__(self) -> Self:
        return self

    @override
    def __next__(self) -> list[SequenceBatch]:
        if self._eod:
            raise StopIteration()
        batches = []
        for _ in range(self._num_accumulate):
            batch = self._next_batch()
            if batch is None:
                break
            batches.append(batch)
        count = len(batches)
        dp = self._gangs.dp
        if dp.size > 1:
            agreed = torch.tensor([count], device=dp.device)
            dp.all_reduce(agreed, ReduceOperation.SUM if self._until_last else ReduceOperation.MIN)
            if not self._until_last:
                batches = batches[: int(agreed.item())]
            count = int(agreed.item())
        if count == 0:
            self._eod = True
            raise StopIteration()
        return batches

    @override
    def reset(self) -> None:
        self._eod = False
        self._seek(0, None, 0)

    @override
    def state_dict(self) -> dict[str, object]:
        return {
            "share": [[str(p.path), p.start, p.end] for p in self._pieces],
            "piece": self._piece, "offset": self._offset, "token": self._used,
        }  # fmt: skip

    @override
    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        share = [[str(p.path), p.start, p.end] for p in self._pieces]
        if state_dict.get("share") != share:
            raise CorpusError(
                f"the checkpoint's data position is for another share of the corpus than this rank's ({len(share)} piece(s) now); "
                "resume with the same files and the same number of ranks, or start a new output directory."
            )  # fmt: skip
        self._eod = False
        self._seek(int(state_dict["piece"]), state_dict["offset"], int(state_dict["token"]))  # type: ignore[call-overload, arg-type]

    @property
    @override
    def num_accumulate(self) -> int:
        return self._num_accumulate
