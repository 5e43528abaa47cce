"""Any causal LM transformers builds from a local directory, called as lmtune calls a fairseq2 decoder.

lmtune's native families are fairseq2 models; Gemma 3, Phi-3, Granite, GPT-NeoX, SmolLM... are not.
``TransformersCausalLM`` wraps ``AutoModelForCausalLM`` (the same module, so its weights are the
checkpoint's and ``save_pretrained`` is the export) and takes the call lmtune's training unit makes
(``lmtune.training.nll_unit.target_nll``): ``model(seqs, layout, targets=, target_mask=, reduction=)``.

Why not fairseq2's ``hg`` family: it downloads from the Hub and builds its mask from padding only,
so a packed batch would attend across examples. Here every example of a batch, packed or padded,
gets positions restarting at 0 and a block-diagonal causal 4D mask, so a packed example's logits
are the logits it has alone. Nothing is ever fetched: ``local_files_only=True`` and no remote code.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.nn import Module

from lmtune.errors import UserError

if TYPE_CHECKING:
    from fairseq2.nn import BatchLayout


def example_ids(layout: BatchLayout, shape: Sequence[int]) -> Tensor:
    """Per token, which example of its row it belongs to (0, 1, ...); pad tokens get ids of their
    own (negative, one per token), so they attend to themselves only and no row is all masked."""
    rows, width = (1, shape[0]) if layout.packed else (shape[0], shape[1])
    ids = -1 - torch.arange(rows * width, device=layout.position_indices.device).view(rows, width)
    if layout.packed:
        begins = layout.seq_begin_indices
        for i, (begin, end) in enumerate(zip(begins[:-1], begins[1:], strict=True)):
            ids[0, begin:end] = i
    else:
        for row, length in enumerate(layout.seq_lens):
            ids[row, :length] = 0
    return ids


def document_causal_mask(ids: Tensor, dtype: torch.dtype, *, window: int | None = None) -> Tensor:
    """The additive (rows, 1, S, S) mask: a token sees the earlier tokens of its own example only
    (the last ``window`` of them, itself included, for a sliding-window layer, as transformers counts)."""
    width = ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
    if window is not None:
        causal = causal.triu(-(window - 1))
    allowed = (ids[:, :, None] == ids[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class TransformersCausalLM(Module):
    """A transformers causal LM (``self.hf``) that lmtune trains, evaluates and generates with."""

    def __init__(self, hf: Module, *, pad_idx: int | None = None) -> None:
        super().__init__()
        self.hf = hf
        self.pad_idx = pad_idx

    def logits(self, seqs: Tensor, layout: BatchLayout) -> Tensor:
        """(rows, S, vocab) for a padded batch, (S, vocab) for a packed one (as fairseq2 returns them)."""
        input_ids = seqs[None] if layout.packed else seqs
        ids = example_ids(layout, seqs.shape)
        positions = layout.position_indices.view(ids.shape).clamp(min=0)
        dtype = next(self.hf.parameters()).dtype
        out = self.hf(input_ids=input_ids, attention_mask=self._attention_mask(ids, dtype), position_ids=positions, use_cache=False)
        logits: Tensor = out.logits
        return logits[0] if layout.packed else logits

    def _attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor | dict[str, Tensor]:
        full = document_causal_mask(ids, dtype)
        window = sliding_window_of(self.hf)
        if window is None or not has_layer_types(self.hf):
            return full
        # Models with sliding and full layers (Gemma 3, Qwen2 with layer_types) take one mask per layer type.
        return {"full_attention": full, "sliding_attention": document_causal_mask(ids, dtype, window=window)}

    def forward(
        self,
        seqs: Tensor,
        seqs_layout: BatchLayout,
        targets: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
        target_mask: Tensor | None = None,
        reduction: Literal["sum", "mean"] = "sum",
        return_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        from fairseq2.nn.functional import cross_entropy

        logits = self.logits(seqs, seqs_layout)
        if targets is None:
            return logits
        if target_mask is None and seqs_layout.padded:
            # Pad positions are no example's tokens, whatever the pad id (a transformers model may have none).
            target_mask = (seqs_layout.position_indices >= 0).view(targets.shape)
        # fairseq2's TransformerLM loss, in float32 whatever the model's dtype.
        loss = cross_entropy(logits.float(), targets, self.pad_idx, label_smoothing=label_smoothing, target_mask=target_mask, reduction=reduction)
        return (loss, logits) if return_logits else loss

    @torch.no_grad()
    def greedy(self, prompt: Sequence[int], *, max_new_tokens: int, eos_idx: int | Collection[int] | None = None) -> list[int]:
        """Greedy tokens after ``prompt`` (with transformers' KV cache), stopping at ``eos_idx`` (one id or several)."""
        stops = {eos_idx} if isinstance(eos_idx, int) else set(eos_idx or ())
        ids = torch.tensor([list(prompt)], device=next(self.hf.parameters()).device)
        out: list[int] = []
        past: Any = None
        step = ids
        for _ in range(max_new_tokens):
            result = self.hf(input_ids=step, past_key_values=past, use_cache=True)
            past = result.past_key_values
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            if token in stops:
                break
            step = torch.tensor([[token]], device=ids.device)
        return out

    def save_hf_dir(self, out_dir: Path, *, tokenizer_dir: Path | None = None) -> None:
        """The trained weights as a Hugging Face directory (``save_pretrained``) with the tokenizer files
        of ``tokenizer_dir``; written beside ``out_dir`` and moved in place whole."""
        import shutil

        from lmtune.files import replace_dir

        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        self.hf.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]
        if tokenizer_dir is not None:
            for file in sorted(tokenizer_dir.iterdir()):
                if file.is_file() and (file.name.startswith("tokenizer") or file.name in TOKENIZER_SIDE_FILES):
                    shutil.copy2(file, staging / file.name)
        replace_dir(staging, out_dir)


    @torch.no_grad()
    def packs_examples_apart(self, *, tolerance: float = 1e-4) -> bool:
        """Whether this architecture honours per-example positions and the 4D mask: two short
        examples packed give each one's logits alone. Some transformers models rebuild their own mask
        or ignore ``position_ids``; a run then batches by length instead (``packing_or_length_batching``)."""
        if sliding_window_of(self.hf) is not None and not has_layer_types(self.hf):
            return False  # its own sliding mask is replaced by the 4D mask, so the window would be lost
        device = next(self.hf.parameters()).device
        vocab = int(self.hf.get_input_embeddings().weight.shape[0])  # type: ignore[operator]
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randint(0, vocab, (n,), generator=gen).to(device) for n in (3, 4))
        from fairseq2.nn import BatchLayout

        flat = torch.cat([a, b])
        was_training = self.training
        self.eval()
        try:
            packed = self.logits(flat, BatchLayout.of(flat, [3, 4], packed=True)).float()
            alone = [self.hf(input_ids=x[None], use_cache=False).logits[0].float() for x in (a, b)]
        finally:
            self.train(was_training)
        return bool((packed[:3] - alone[0]).abs().max() <= tolerance and (packed[3:] - alone[1]).abs().max() <= tolerance)

def sliding_window_of(hf: Module) -> int | None:
    config = getattr(hf, "config", None)
    window = getattr(config, "sliding_window", None)
    return window if isinstance(window, int) and getattr(config, "use_sliding_window", True) is not False else None


def has_layer_types(hf: Module) -> bool:
    """Whether the model names each layer's attention (``config.layer_types``): those take a mask per type."""
    layer_types = getattr(getattr(hf, "config", None), "layer_types", None)
    return isinstance(layer_types, list) and "sliding_attention" in layer_types


TOKENIZER_SIDE_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def load_transformers_causal_lm(directory: Path, *, random_init: bool = False, dtype: torch.dtype = torch.float32, seed: int | None = None, pad_idx: int | None = None) -> TransformersCausalLM:
    """The causal LM of a local Hugging Face directory: its weights, or fresh ones from its config
    (``random_init``); never the Hub."""
    from transformers import AutoModelForCausalLM

    from lmtune.catalog.transformers_dir import (
        multimodal_architecture,
        transformers_config,
    )

    config = transformers_config(directory)
    multimodal = multimodal_architecture(directory)
    if multimodal is not None:
        from lmtune.models.multimodal_text import say_vision_left_out

        say_vision_left_out(directory, multimodal)
    try:
        if random_init or multimodal is not None:
            if seed is not None:
                torch.manual_seed(seed)
            hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
            if not random_init:
                load_text_weights(hf, directory)
        else:
            hf = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=dtype, local_files_only=True, attn_implementation="sdpa")
    except ValueError as ex:
        first = str(ex).strip().splitlines()[0]
        raise UserError(f"{directory / 'config.json'}: transformers has no causal LM for this config ({first}).") from None
    return TransformersCausalLM(hf, pad_idx=pad_idx)


def load_text_weights(hf: Module, directory: Path) -> None:
    """A multimodal directory's language-model tensors into its causal LM (``multimodal_text``); the
    lm_head alone may be missing, when tied to the embeddings."""
    from safetensors.torch import load_file

    from lmtune.models.multimodal_text import text_model_state_dict

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"{directory} has no *.safetensors; lmtune reads a multimodal directory's weights from its safetensors.")
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(text_model_state_dict(load_file(str(file))))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = getattr(hf.config, "tie_word_embeddings", False)
    missing = [key for key in missing if not (tied and key == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"{directory}: its language-model tensors are not {type(hf).__name__}'s (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    hf.tie_weights()  # type: ignore[operator]


def packing_or_length_batching(model: TransformersCausalLM, packing: bool, *, say: bool = True) -> bool:
    """``packing`` when the architecture keeps packed examples apart; otherwise False, said once."""
    if not packing or model.packs_examples_apart():
        return packing
    if say:
        import logging

        name = type(model.hf).__name__
        logging.getLogger("lmtune").warning(f"{name} does not keep packed examples apart (its logits change when packed), so this run batches examples by length instead of packing them.")
    return False
