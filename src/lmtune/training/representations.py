"""Hidden states of fixed validation examples, taken inside the trainer for ``lmtune drift``.

``representations.every_n_steps=N``: before training (step 0) and after every N-th step, rank 0
runs the first K validation examples through the model being trained and saves, for each chosen
layer, each example's hidden states averaged over its own tokens (``lmtune.training.representation_store``).
Layer 0 is the embedding output (the decoder frontend's, before the first layer); layer i is
decoder layer i's output (before the final norm).

It must not change training: the model runs in eval mode under ``no_grad``, the RNG state is
saved and restored around it, and it runs where fairseq2 publishes metrics (rank 0, outside the
timed compute, before the other ranks' barrier), so tokens/s leaves it out. The examples go as
packed batches of at most ``max_num_tokens`` tokens: each attends only to itself and keeps its own
positions, and its mean covers its own tokens, so no padding or neighbour enters it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from lmtune.data.encoded_examples import EncodedExamples
from lmtune.errors import UserError
from lmtune.training.representation_store import save_step


def check_representations(every_n_steps: int | None, num_examples: int, layers: list[int] | None, has_valid: bool, num_layers: int, data_parallelism: str) -> None:
    """The representations.* keys, checked before training starts."""
    if every_n_steps is None:
        return
    if every_n_steps < 1 or num_examples < 1:
        key, value = ("every_n_steps", every_n_steps) if every_n_steps < 1 else ("num_examples", num_examples)
        raise UserError(f"config key 'representations.{key}' must be at least 1, got {value}.")
    if not has_valid:
        raise UserError("representations.every_n_steps needs a validation split (valid.jsonl beside the training data, or valid_dataset=...), whose first representations.num_examples examples it saves.")
    if data_parallelism == "fsdp":
        raise UserError("representations.every_n_steps needs data_parallelism=ddp: rank 0 runs the examples alone, and under fsdp no rank holds the whole model.")
    bad = [layer for layer in layers or [] if not 0 <= layer <= num_layers]
    if bad or (layers is not None and not layers):
        raise UserError(f"representations.layers={layers} is not valid for this model: give layer indices from 0 (the embedding output) to {num_layers} (the last decoder layer), or null for all.")


def choose_examples(examples: EncodedExamples, max_seq_len: int, num_examples: int, what: str) -> np.ndarray:
    """The first ``num_examples`` examples training keeps; fewer (with a line) when the split is smaller."""
    kept = examples.trainable(max_seq_len, what)
    if len(kept) < num_examples:
        print(f"lmtune: representations.num_examples={num_examples}, but {what} has {len(kept)} usable examples; saving representations of all {len(kept)}.", file=sys.stderr)
    return kept[:num_examples]


def packed_batches(lengths: Sequence[int], max_num_tokens: int) -> list[list[int]]:
    """Consecutive positions grouped into batches of at most ``max_num_tokens`` tokens (one example alone when longer)."""
    batches: list[list[int]] = [[]]
    total = 0
    for i, n in enumerate(lengths):
        if batches[-1] and total + n > max_num_tokens:
            batches.append([])
            total = 0
        batches[-1].append(i)
        total += n
    return [b for b in batches if b]


class RepresentationProbe:
    """Saves step N's pooled hidden states of the chosen examples into OUT/representations/."""

    def __init__(self, model: Module, examples: EncodedExamples, indices: np.ndarray, layers: list[int] | None, out_dir: Path, valid_file: Path, every_n_steps: int, max_num_tokens: int, device: torch.device) -> None:
        self._model = model
        self._examples = examples
        self._indices = [int(i) for i in indices]
        num_layers = len(model.decoder.layers)  # type: ignore[union-attr, arg-type]
        self.layers = list(range(num_layers + 1)) if layers is None else list(layers)
        self._out_dir = out_dir
        self._valid_file = valid_file
        self.every_n_steps = every_n_steps
        self._max_num_tokens = max_num_tokens
        self._device = device

    def maybe_take(self, step: int) -> None:
        if step % self.every_n_steps == 0:
            self.take(step)

    def take(self, step: int) -> Path:
        states = self.compute()
        info = {
            "layers": self.layers, "num_examples": len(self._indices), "examples": f"the first {len(self._indices)} kept examples of {self._valid_file}",
            "layer_0": "embedding output", "layer_i": "output of decoder layer i", "pooling": "mean over each example's tokens",
        }  # fmt: skip
        return save_step(self._out_dir, step, states, info)

    def compute(self) -> np.ndarray:
        """(layers, examples, model_dim) float32 on the host."""
        model = self._model
        was_training = model.training
        devices = [self._device] if self._device.type == "cuda" else []
        out = None
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            try:
                lengths = [int(n) for n in self._examples.lengths[self._indices]]
                done = 0
                for batch in packed_batches(lengths, self._max_num_tokens):
                    pooled = self._pooled([self._indices[b] for b in batch])  # (layers, batch, dim)
                    if out is None:
                        out = np.empty((len(self.layers), len(self._indices), pooled.shape[-1]), dtype=np.float32)
                    out[:, done : done + len(batch)] = pooled
                    done += len(batch)
            finally:
                model.train(was_training)
        assert out is not None
        return out

    def _pooled(self, indices: list[int]) -> np.ndarray:
        from fairseq2.nn import BatchLayout

        items = [self._examples.item(i)["tokens"] for i in indices]
        lens = [len(t) for t in items]
        seqs = torch.cat(items).to(self._device)
        layout = BatchLayout.of(seqs, lens, packed=True)
        wanted = set(self.layers)
        captured: dict[int, Tensor] = {}

        def keep(layer_idx: int, hidden: Tensor, layout: BatchLayout, num_layers: int) -> bool:
            if layer_idx + 1 in wanted:
                captured[layer_idx + 1] = _segment_means(hidden, lens)
            return True

        model = self._model
        embedded, embedded_layout = model.decoder_frontend(seqs, layout)  # type: ignore[operator]
        if 0 in wanted:
            captured[0] = _segment_means(embedded, lens)
        if wanted - {0}:
            handle = model.decoder.register_layer_hook(keep)  # type: ignore[union-attr, operator]
            try:
                model.decoder(embedded, embedded_layout)  # type: ignore[operator]
            finally:
                handle.remove()
        return torch.stack([captured[layer] for layer in self.layers]).cpu().numpy()


def _segment_means(hidden: Tensor, lens: list[int]) -> Tensor:
    """(tokens, dim) of a packed batch -> (examples, dim): each example's mean over its own tokens, in float32."""
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    return torch.stack([part.mean(dim=0) for part in flat.split(lens)])
