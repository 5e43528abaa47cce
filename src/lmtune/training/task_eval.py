"""Task scores during validation: greedy completions of the first N validation prompts,
scored by ``lmtune.score.tasks`` exactly as ``lmtune generate`` scores them.

Each data-parallel rank completes its share (every size-th prompt), with the model
being trained (no copy: fairseq2 has switched it to eval mode and, under FSDP,
gathered its parameters for validation); the ranks then exchange their completions
so that the scores cover all N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import Module

from lmtune.training.valid_metrics import task_metric_values

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer
    from fairseq2.gang import Gang


@dataclass(kw_only=True)
class EvalPrompts:
    prompts: list[list[int]]
    references: list[str]
    task: str
    labels: list[str] | None
    max_gen_len: int
    max_num_tokens: int


def complete(model: Module, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]], max_gen_len: int, max_num_tokens: int, device: torch.device) -> list[str]:
    """Greedy completions (text up to the stop token), in the order of ``prompts``."""
    from lmtune.generate.generator import Generator, length_batches
    from lmtune.options.generate import GeneratorOptions

    generator = Generator(model, tokenizer, GeneratorOptions(temperature=0.0, max_gen_len=max_gen_len))
    decode = tokenizer.create_decoder()
    texts: dict[int, str] = {}
    batches = length_batches([len(p) for p in prompts], max_gen_len=max_gen_len, batch_size=None, max_num_tokens=max_num_tokens)
    with torch.inference_mode():
        for batch in batches:
            for i, c in zip(batch, generator([prompts[i] for i in batch], device=device)):
                ids = c.token_ids[:-1] if c.stopped else c.token_ids
                texts[i] = decode(torch.tensor(ids, dtype=torch.int64))
    return [texts[i] for i in range(len(prompts))]


def evaluate_task(model: Module, tokenizer: Tokenizer, data: EvalPrompts, gang: Gang, device: torch.device) -> dict[str, float]:
    """The task's metric values over all prompts; every rank returns the same."""
    from lmtune.score.tasks import score

    rank, size = gang.rank, gang.size
    mine = list(range(rank, len(data.prompts), size))
    texts = complete(model, tokenizer, [data.prompts[i] for i in mine], data.max_gen_len, data.max_num_tokens, device)
    completions = dict(zip(mine, texts))
    if size > 1:
        for source in range(size):
            box: list[object] = [completions if source == rank else None]
            gang.broadcast_objects(box, source_rank=source)
            received = box[0]
            assert isinstance(received, dict)  # the sender's shard
            completions.update(received)
    pairs = [(completions[i], data.references[i]) for i in range(len(data.prompts))]
    return task_metric_values(score(data.task, pairs, data.labels, resamples=0))
