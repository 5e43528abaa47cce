"""Completions for a list of prompts with fairseq2's sequence generators.

Prompts -> batches of similar length (right-padded, as fairseq2 expects) -> a
``SamplingSequenceGenerator`` (greedy is top-k 1) or ``BeamSearchSequenceGenerator``
-> completions cut at their stop token or at ``max_gen_len``.

Stop tokens: fairseq2 ends a sequence on one EOS id, but a chat model ends its
turn on its own token (``<|eot_id|>``, ``<|im_end|>``) beside the tokenizer's EOS.
When sampling, the sampler is wrapped so that a sampled stop id reaches fairseq2
as EOS and the sequence ends on that very step; a step hook remembers which stop
id it was. Beam search folds the stop ids' probability into EOS instead (and
reports EOS as the stop token).

Length: fairseq2 forces EOS on the last step of its budget, so lmtune asks for
one step more than ``max_gen_len`` and drops that forced EOS. A batch's budget
follows its longest prompt, so shorter prompts may run past ``max_gen_len``: they
are cut back to it, and batches of similar length keep that waste small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from fairseq2.generation.sampling import Sampler
from torch import Tensor

from lmtune.catalog.stop_tokens import stop_token_ids
from lmtune.options.generate import GeneratorOptions

if TYPE_CHECKING:
    from fairseq2.data.tokenizers import Tokenizer
    from fairseq2.generation import SequenceGenerator
    from fairseq2.models.clm import CausalLM



@dataclass(kw_only=True)
class Completion:
    token_ids: list[int]
    """The generated ids, ending with the stop token when the model produced one."""
    stopped: bool
    """True if generation ended on a stop token, False if it reached the length limit."""


class _StopAwareSampler(Sampler):
    """Samples with ``inner`` from the model's own distribution and hands any stop id
    to fairseq2 as EOS.

    fairseq2 bans EOS until the batch's longest prompt is consumed, so in a batch of
    mixed lengths a short prompt could not stop in time. ``keep_eos_probs`` runs as
    a step processor, before that ban, and ``sample`` puts the EOS column back; rows
    still reading their prompt are overridden by fairseq2 whatever is sampled.
    """

    def __init__(self, inner: Sampler, eos_idx: int, extra_stop_ids: list[int]) -> None:
        self._inner = inner
        self._eos_idx = eos_idx
        self._extra = torch.tensor(extra_stop_ids, dtype=torch.int64)
        self._eos_probs: Tensor | None = None
        self.sampled: Tensor | None = None

    def keep_eos_probs(self, seqs: Tensor, probs: Tensor, lprob: bool = False) -> None:
        self._eos_probs = probs[:, self._eos_idx].clone()

    def sample(self, probs: Tensor) -> Tensor:
        if self._eos_probs is not None:
            probs[:, self._eos_idx] = self._eos_probs
            self._eos_probs = None
        ids = self._inner.sample(probs)
        self.sampled = ids
        if self._extra.numel() == 0:
            return ids
        return torch.where(torch.isin(ids, self._extra.to(ids.device)), self._eos_idx, ids)


class _StopRecorder:
    """A step hook: which stop id each prompt's sequence actually ended on."""

    def __init__(self, sampler: _StopAwareSampler, eos_idx: int) -> None:
        self._sampler = sampler
        self._eos_idx = eos_idx
        self.stop_of: dict[int, int] = {}

    def __call__(self, prompt_indices: Tensor, seqs: Tensor, step_scores: Tensor | None, prefill: bool) -> None:
        sampled, self._sampler.sampled = self._sampler.sampled, None
        if prefill or sampled is None:  # the forced last step samples nothing
            return
        # Rows still reading a padded prompt are recorded too, but a row's last
        # record is always the step it ended on, which is the one that counts.
        for row in (seqs[:, -1] == self._eos_idx).nonzero().squeeze(-1).tolist():
            self.stop_of[int(prompt_indices[row])] = int(sampled[row])


def _fold_stops_into_eos(eos_idx: int, extra: list[int]):
    """A step processor for beam search: ending on any stop token is ending on EOS."""
    ids = [eos_idx, *extra]

    def process(seqs: Tensor, probs: Tensor, lprob: bool = False) -> None:
        if lprob:
            probs[:, eos_idx] = torch.logsumexp(probs[:, ids], dim=-1)
            probs[:, extra] = -torch.inf
        else:
            probs[:, eos_idx] = probs[:, ids].sum(dim=-1)
            probs[:, extra] = 0.0

    return process


class Generator:
    """One fairseq2 sequence generator, configured once and called per batch."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, options: GeneratorOptions, stop_ids: Sequence[int] | None = None) -> None:
        from fairseq2.data.tokenizers import VocabularyInfo
        from fairseq2.generation.beam_search import BeamSearchSequenceGenerator
        from fairseq2.generation.sampling import (
            SamplingSequenceGenerator,
            TopKSampler,
            TopPSampler,
        )

        vocab = tokenizer.vocab_info
        self.stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
        if not self.stop_ids:
            raise ValueError("the tokenizer has no EOS token, so generation would never stop.")
        eos, extra = self.stop_ids[0], self.stop_ids[1:]
        # pad_idx=None: fairseq2 would otherwise never emit the pad token, which
        # transformers' generate allows (and Qwen's pad token is also its EOS).
        gen_vocab = VocabularyInfo(vocab.size, vocab.unk_idx, vocab.bos_idx, eos, None)
        self.options = options
        self.model = model
        self._recorder: _StopRecorder | None = None
        self._wrapped = hasattr(model, "greedy")  # lmtune.models.transformers_family: transformers' own KV cache
        if self._wrapped:
            if options.beam_size > 1 or not (options.temperature == 0 or options.top_k == 1):
                from lmtune.errors import UserError

                raise UserError("a transformers-backed model (model_family: transformers) generates greedily only; set generator_config.temperature=0 and beam_size=1.")
            return
        lm = cast("CausalLM", model)  # fairseq2's Llama and Qwen models are CausalLMs
        self._generator: SequenceGenerator
        budget = options.max_gen_len + 1  # the last step is fairseq2's forced EOS, dropped below
        if options.beam_size > 1:
            self._generator = BeamSearchSequenceGenerator(
                lm, gen_vocab, beam_size=options.beam_size, max_gen_len=budget,
                temperature=options.temperature or 1.0, step_processors=[_fold_stops_into_eos(eos, extra)] if extra else None,
            )  # fmt: skip
            return
        greedy = options.temperature == 0 or options.top_k == 1
        inner: Sampler
        if greedy:
            inner, temperature = TopKSampler(1), 1.0
        elif options.top_k is not None:
            inner, temperature = TopKSampler(options.top_k), options.temperature
        else:
            inner, temperature = TopPSampler(options.top_p), options.temperature
        sampler = _StopAwareSampler(inner, eos, extra)
        self._generator = SamplingSequenceGenerator(
            lm, gen_vocab, sampler, max_gen_len=budget, temperature=temperature, step_processors=[sampler.keep_eos_probs],
        )
        self._recorder = _StopRecorder(sampler, eos)
        self._generator.register_step_hook(self._recorder)

    @property
    def max_seq_len(self) -> int:
        if self._wrapped:
            return int(self.model.hf.config.max_position_embeddings)  # type: ignore[union-attr,arg-type]
        return int(self.model.max_seq_len)  # type: ignore[arg-type]

    def __call__(self, prompts: Sequence[Sequence[int]], device: torch.device | None = None) -> list[Completion]:
        from fairseq2.nn.utils.padding import pad_seqs

        if self._wrapped:
            return [self._greedy_wrapped(p) for p in prompts]
        seqs, layout = pad_seqs([torch.tensor(p, dtype=torch.int64) for p in prompts], device=device)
        if self._recorder is not None:
            self._recorder.stop_of = {}
        output = self._generator(seqs, layout)
        limit = min(self.max_seq_len, max(len(p) for p in prompts) + self.options.max_gen_len + 1)
        completions = []
        for i, hypotheses in enumerate(output.hypotheses):
            gen = hypotheses[0].seq.tolist()
            stop_id = self._recorder.stop_of.get(i) if self._recorder is not None else None
            completions.append(self._finish(gen, len(prompts[i]), limit, stop_id))
        return completions

    def _greedy_wrapped(self, prompt: Sequence[int]) -> Completion:
        budget = min(self.options.max_gen_len, self.max_seq_len - len(prompt))
        gen = self.model.greedy(prompt, max_new_tokens=budget, eos_idx=self.stop_ids)  # type: ignore[operator]
        return Completion(token_ids=gen, stopped=bool(gen) and gen[-1] in self.stop_ids)

    def _finish(self, gen: list[int], prompt_len: int, limit: int, stop_id: int | None) -> Completion:
        n = self.options.max_gen_len
        if prompt_len + len(gen) >= limit:  # ran to the end of the budget: the last id is the forced EOS
            return Completion(token_ids=gen[:-1][:n], stopped=False)
        if len(gen) > n:  # a short prompt in a batch of longer ones ran past max_gen_len
            return Completion(token_ids=gen[:n], stopped=False)
        if stop_id is not None:
            gen[-1] = stop_id  # fairseq2 saw EOS; keep the stop id the model produced
        return Completion(token_ids=gen, stopped=True)


def length_batches(lengths: Sequence[int], *, max_gen_len: int, batch_size: int | None, max_num_tokens: int, beam_size: int = 1) -> list[list[int]]:
    """Indices grouped longest first; a batch holds batch_size prompts, or as many as
    fit max_num_tokens counting each as (longest prompt + max_gen_len) x beam_size.

    Beam search batches only prompts of one length: fairseq2 bans EOS until the
    longest prompt of a batch is consumed, and beam search has no sampler to undo it.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            current = batches[-1]
            width = (lengths[current[0]] + max_gen_len) * beam_size
            full = len(current) >= batch_size if batch_size is not None else (len(current) + 1) * width > max_num_tokens
            if beam_size > 1 and lengths[current[0]] != lengths[i]:
                full = True
            if not full:
                current.append(i)
                continue
        batches.append([i])
    return batches
