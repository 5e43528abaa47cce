"""Sequence-length audit: how long a dataset's examples are once encoded, and what
each batching strategy would spend on padding at a given max_seq_len.

The arithmetic is pure functions over token counts, so it is checked by hand in the
tests. Only ``training_order`` (fairseq2's shuffle) and ``audit`` (packing) reach
outside; ``lmtune.commands.audit`` loads the tokenizer and encodes the records.

Percentiles are nearest-rank (numpy's ``inverted_cdf``): p99 = L means at least 99%
of the examples have at most L tokens, always the length of a real example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PERCENTILES = (50, 90, 95, 99)
COVERAGE = 0.99  # share of examples the suggested max_seq_len keeps
# A multiple of 64 rather than a power of two: a power of two can nearly double the
# length (p99 = 520 -> 1024) and with it activation memory, while 64 already keeps
# GPU kernels on full tiles (tensor cores, flash attention's 64/128-token blocks)
# and overshoots by at most 63 tokens.
MULTIPLE = 64


# ------------------------------------------------------------------ lengths


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """The smallest value with at least p% of the values at or below it (nearest rank)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values) - 1e-9))
    return sorted_values[rank - 1]


@dataclass(kw_only=True)
class LengthStats:
    count: int
    mean: float
    percentiles: dict[int, int]
    max: int


def length_stats(lengths: Sequence[int]) -> LengthStats:
    s = sorted(lengths)
    return LengthStats(count=len(s), mean=sum(s) / len(s), percentiles={p: percentile(s, p) for p in PERCENTILES}, max=s[-1])


def suggest_max_seq_len(lengths: Sequence[int], model_max: int | None, coverage: float = COVERAGE, multiple: int = MULTIPLE) -> tuple[int, int]:
    """(max_seq_len, examples it would drop): the smallest multiple of ``multiple`` that
    keeps at least ``coverage`` of the examples, never above the model's maximum."""
    need = percentile(sorted(lengths), coverage * 100)
    value = math.ceil(need / multiple) * multiple
    if model_max is not None:
        value = min(value, model_max)
    return value, sum(1 for n in lengths if n > value)


# --------------------------------------------------------------- batching


def fixed_size_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive examples, ``batch_size`` at a time; the last batch may be short."""
    return [list(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size)]


def length_batches(lengths: Sequence[int], bucket_sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """fairseq2's ``bucket_by_length`` (drop_remainder=False) over lengths in reading order.

    ``bucket_sizes`` is [(batch size, longest length), ...] in increasing length, as
    ``lmtune.data.batching.bucket_sizes`` makes them. Each example joins the first bucket
    it fits; a bucket is emitted as soon as it is full. At the end, the leftovers go
    out from the longest bucket down, each topped up from the shorter buckets' tails.
    """
    buckets: list[list[int]] = [[] for _ in bucket_sizes]
    out: list[list[int]] = []
    longest = bucket_sizes[-1][1]
    for n in lengths:
        if n > longest:
            raise ValueError(f"length {n} is above the longest bucket ({longest})")
        for b, (size, seq_len) in enumerate(bucket_sizes):
            if n <= seq_len:
                buckets[b].append(n)
                if len(buckets[b]) >= size:
                    out.append(buckets[b])
                    buckets[b] = []
                break
    for b in range(len(buckets) - 1, -1, -1):
        while buckets[b]:
            batch = buckets[b]
            buckets[b] = []
            room = bucket_sizes[b][0] - len(batch)
            for other in range(b - 1, -1, -1):
                while room > 0 and buckets[other]:
                    batch.append(buckets[other].pop())
                    room -= 1
                if room == 0:
                    break
            out.append(batch)
    return out


def padded_positions(batches: Sequence[Sequence[int]]) -> int:
    """Token positions computed when every batch is padded to its longest example."""
    return sum(len(b) * max(b) for b in batches if b)


@dataclass(kw_only=True)
class Strategy:
    name: str
    batches: int  # batches per epoch (rows, for packing)
    tokens: int  # real tokens
    positions: int  # positions computed, padding included

    @property
    def padding(self) -> float:
        return 1 - self.tokens / self.positions if self.positions else 0.0


def padded_strategy(name: str, batches: Sequence[Sequence[int]]) -> Strategy:
    return Strategy(name=name, batches=len(batches), tokens=sum(sum(b) for b in batches), positions=padded_positions(batches))


def row_fill(rows: Sequence[Sequence[int]], lengths: Sequence[int], capacity: int) -> float:
    """Share of the rows' ``capacity`` tokens that hold example tokens."""
    if not rows:
        return 0.0
    return sum(lengths[i] for row in rows for i in row) / (len(rows) * capacity)


def training_order(n: int, seed: int) -> list[int]:
    """The order lmtune reads n examples in: fairseq2's full shuffle with the run's shuffle seed."""
    from fairseq2.data.data_pipeline import read_sequence

    return list(read_sequence(list(range(n))).shuffle(0, seed=seed).and_return())


# ------------------------------------------------------------------ report


@dataclass(kw_only=True)
class Audit:
    lengths: list[int]  # tokens per example, as instruction_finetune encodes them
    targets: list[int]  # response (loss-carrying) tokens per example
    max_seq_len: int
    max_num_tokens: int
    batch_size: int
    model_max: int | None
    too_long: int  # examples longer than max_seq_len (skipped in training)
    no_target: int  # examples without a response token (skipped in training)
    strategies: list[Strategy]
    fill: float | None  # packing's row fill
    suggested: tuple[int, int]


def audit(lengths: Sequence[int], targets: Sequence[int], *, max_seq_len: int, max_num_tokens: int, batch_size: int, model_max: int | None, shuffle_seed: int) -> Audit:
    """Every figure of the report; batches are built on the examples training would keep,
    in the order it would read them (``lmtune.data.batching.build_pipeline``)."""
    from lmtune.data.batching import bucket_sizes
    from lmtune.data.packing import pack_examples

    sizes = bucket_sizes(max_seq_len, max_num_tokens)  # a UserError if no full-length example fits a batch
    kept = [n for n, t in zip(lengths, targets) if n <= max_seq_len and t > 0]
    strategies: list[Strategy] = []
    fill = None
    if kept:
        ordered = [kept[i] for i in training_order(len(kept), shuffle_seed)]
        strategies.append(padded_strategy(f"padded, {batch_size} per batch, random order", fixed_size_batches(ordered, batch_size)))
        strategies.append(padded_strategy(f"length batching, <= {max_num_tokens} tokens", length_batches(ordered, sizes)))
        rows = pack_examples(kept, max_seq_len, shuffle_seed)
        total = sum(kept)
        strategies.append(Strategy(name=f"packing, rows of {max_seq_len}", batches=len(rows), tokens=total, positions=total))  # variable-length attention: no padding
        fill = row_fill(rows, kept, max_seq_len)
    return Audit(
        lengths=list(lengths),
        targets=list(targets),
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        batch_size=batch_size,
        model_max=model_max,
        too_long=sum(1 for n in lengths if n > max_seq_len),
        no_target=sum(1 for n, t in zip(lengths, targets) if n <= max_seq_len and t == 0),
        strategies=strategies,
        fill=fill,
        suggested=suggest_max_seq_len(lengths, model_max),
    )


def format_report(a: Audit, title: str) -> str:
    lines = [title, ""]
    header = f"{'':10}{'count':>8}{'mean':>9}" + "".join(f"{'p' + str(p):>7}" for p in PERCENTILES) + f"{'max':>7}"
    lines.append(header)
    for name, values in (("tokens", a.lengths), ("response", a.targets)):
        s = length_stats(values)
        lines.append(f"{name:10}{s.count:>8}{s.mean:>9.1f}" + "".join(f"{s.percentiles[p]:>7}" for p in PERCENTILES) + f"{s.max:>7}")
    lines.append("")

    n = len(a.lengths)
    lines.append(f"longer than max_seq_len={a.max_seq_len}: {a.too_long} of {n} ({a.too_long / n:.1%}), skipped in training")
    if a.no_target:
        lines.append(f"without a response token: {a.no_target} of {n}, skipped in training")
    lines.append("")
    if not a.strategies:
        lines.append("batching: nothing to batch, training would skip every example.")
    else:
        label = "batching (one epoch, one rank)"
        width = max(len(label), *(len(s.name) for s in a.strategies))
        lines.append(f"{label:{width}}  {'batches':>9}  {'positions':>10}  {'padding':>8}")
        for strategy in a.strategies[:-1]:
            lines.append(f"{strategy.name:{width}}  {strategy.batches:>9}  {strategy.positions:>10}  {strategy.padding:>8.1%}")
        p = a.strategies[-1]
        lines.append(f"{p.name:{width}}  {str(p.batches) + ' rows':>9}  {p.positions:>10}  {p.padding:>8.1%}  rows {a.fill:.1%} full")
    lines.append("")

    value, dropped = a.suggested
    uncapped, _ = suggest_max_seq_len(a.lengths, None)
    if uncapped > value:
        why = f"the model's maximum; keeping {COVERAGE:.0%} of examples would need {uncapped}"
    else:
        why = f"the smallest multiple of {MULTIPLE} keeping >= {COVERAGE:.0%} of examples"
    lines.append(f"suggested max_seq_len: {value} ({why}); drops {dropped} of {n}")
    return "\n".join(lines) + "\n"
