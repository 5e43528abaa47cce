"""The reference model's log-probs, computed once before training and cached beside the data.

DPO compares the policy with a frozen reference model on every pair. Holding a second model
in memory for the whole run doubles the weights on every rank; instead the reference's summed
log-probs of each pair's chosen and rejected response are computed once, before the first
step (each rank its share of the pairs, in packed batches, no gradients), and stored as a
float64 ``reference_logps.npy`` (N, 2) beside ``reference.json``, a fingerprint of the data
(the encoded cache's: the data file and the tokenizer) and of the reference model (its card's
name and architecture, its checkpoint's files, its dtype, whether it is a LoRA model with the
adapters off), all read without building the model. A rerun, a resumed run or a sweep point
with the same fingerprint reads the file and never loads the reference model; otherwise it is
computed again, with one line saying why. A pair whose
record gives ``reference_score_chosen``/``_rejected`` takes those and is not computed.
Pairs not computed (none needed them: longer than this run's max_seq_len) hold NaN; a later
run that needs one of them recomputes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import Module

from lmtune.catalog.specs import ModelSpec, TokenizerSpec
from lmtune.data.encoded_cache import tokenizer_fingerprint
from lmtune.errors import UserError
from lmtune.files import atomic_write, atomic_write_text
from lmtune.models.document_attention import use_document_attention
from lmtune.models.row_logps import use_row_logps
from lmtune.preference.packing import collate_pairs, pack_pairs, pair_logps
from lmtune.preference.pairs import EncodedPairs

REFERENCE_FORMAT = 2  # 2: the model's fingerprint from its card and files, not its built tensors
VALUES = "reference_logps.npy"
RECORD = "reference.json"


def _files_of(checkpoint: Path) -> list[dict[str, object]]:
    files = [checkpoint] if checkpoint.is_file() else sorted(p for p in checkpoint.rglob("*") if p.is_file())
    return [{"name": str(p.relative_to(checkpoint)) if p != checkpoint else p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]


def _architecture(spec: ModelSpec) -> dict[str, object]:
    return {"family": spec.family, "arch": spec.arch, "config": spec.config}


def model_fingerprint(spec: ModelSpec, *, dtype: torch.dtype, lora_base: bool) -> dict[str, object]:
    """What the reference log-probs depend on besides the data, read from the card and the files
    without building the model, so a run whose log-probs are cached never loads the reference: the
    card's name, family, architecture and config overrides, the checkpoint's files (size and
    modification time, not their bytes: hashing gigabytes would cost minutes; for a LoRA
    checkpoint its base's too), the dtype, and whether adapters were switched off."""
    base = spec.lora.base if spec.lora is not None else None
    return {
        "name": spec.name,
        "architecture": _architecture(spec),
        "checkpoint": None if spec.checkpoint is None else {"path": str(Path(spec.checkpoint).resolve()), "files": _files_of(Path(spec.checkpoint))},
        "lora_base": None if base is None else {**_architecture(base), "checkpoint": None if base.checkpoint is None else {"path": str(Path(base.checkpoint).resolve()), "files": _files_of(Path(base.checkpoint))}},
        "dtype": str(dtype).removeprefix("torch."),
        "lora": "the base model, adapters off" if lora_base else None,
    }


def check_same_tokenizer(policy: TokenizerSpec, reference: TokenizerSpec, key: str = "reference_model") -> None:
    """The reference must score the policy's token ids: its tokenizer must give the same ids."""
    mine, theirs = tokenizer_fingerprint(policy), tokenizer_fingerprint(reference)
    if mine == theirs:
        return
    if mine["family"] != theirs["family"]:
        what = f"a {theirs['family']} tokenizer, the policy's is {mine['family']}"
    elif mine["config"] != theirs["config"]:
        what = "its tokenizer settings differ"
    else:
        what = "its tokenizer files differ"
    raise UserError(f"{key}: the reference model's tokenizer {reference.name!r} is not the policy's {policy.name!r} ({what}); the reference scores the policy's token ids, so give a reference model with the policy's tokenizer.")


def reference_fingerprint(data: dict[str, object], model: dict[str, object]) -> dict[str, object]:
    """``data``: the encoded cache's fingerprint (``lmtune.data.encoded_cache.fingerprint``)."""
    return {"format": REFERENCE_FORMAT, "data": data, "model": model}


def rank_share(pair_ids: Sequence[int] | np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The contiguous slice of ``pair_ids`` that ``rank`` computes."""
    return np.array_split(np.asarray(pair_ids, dtype=np.int64), world_size)[rank]


def compute_reference_logps(model: Module, pairs: EncodedPairs, pair_ids: Sequence[int] | np.ndarray, *, max_num_tokens: int) -> np.ndarray:
    """float64 (len(pair_ids), 2): the summed log-probs of each pair's chosen and rejected
    response under ``model`` (in eval mode, without gradients), in ``pair_ids``' order."""
    ids = np.asarray(pair_ids, dtype=np.int64)
    out = np.full((len(ids), 2), np.nan)
    if len(ids) == 0:
        return out
    where = {int(p): i for i, p in enumerate(ids)}
    device = next(model.parameters()).device
    use_row_logps(model)  # the head on response positions only, as the policy's steps (lmtune.models.row_logps)
    use_document_attention(model)  # each packed sequence attends only to itself, without the pack-wide mask
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch_ids in pack_pairs(pairs, ids, max_num_tokens, seed=0):
                batch = collate_pairs(pairs, batch_ids)
                batch.to(device)
                logps = pair_logps(model, batch)
                rows = [where[p] for p in batch_ids]
                out[rows, 0] = logps.chosen.double().cpu().numpy()
                out[rows, 1] = logps.rejected.double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def gather_shares(gang, share: np.ndarray, num_ids: int) -> np.ndarray:
    """Every rank's ``share`` (from ``rank_share`` of ``num_ids`` ids) joined in rank order, on every rank."""
    if gang.size == 1:
        return share
    sizes = [len(s) for s in np.array_split(np.arange(num_ids), gang.size)]
    padded = torch.full((sizes[0], 2), float("nan"), dtype=torch.float64, device=gang.device)
    padded[: len(share)] = torch.from_numpy(share).to(gang.device)
    gathered = torch.empty((gang.size * sizes[0], 2), dtype=torch.float64, device=gang.device)
    gang.all_gather(gathered, padded)
    parts = [gathered[r * sizes[0] : r * sizes[0] + n] for r, n in enumerate(sizes)]
    return torch.cat(parts).cpu().numpy()


def with_data_scores(pairs: EncodedPairs, values: np.ndarray) -> np.ndarray:
    """``values`` with each pair's reference scores from the data where the data gives them."""
    given = ~np.isnan(np.asarray(pairs.reference_scores))
    return np.where(given, pairs.reference_scores, values)


def pairs_to_compute(pairs: EncodedPairs, needed: Sequence[int] | np.ndarray) -> np.ndarray:
    """The ``needed`` pairs whose record gives no reference scores."""
    ids = np.asarray(needed, dtype=np.int64)
    return ids[np.isnan(np.asarray(pairs.reference_scores)[ids]).any(axis=1)]


def stale_reason(directory: Path, expected: dict[str, object], needed: np.ndarray) -> str | None:
    """None when ``directory`` holds reference log-probs of ``expected`` for every ``needed`` pair; else why not."""
    if not (directory / RECORD).is_file():
        return "none"
    try:
        found = json.loads((directory / RECORD).read_text())["fingerprint"]
        values = np.load(directory / VALUES)
    except (OSError, ValueError, KeyError, TypeError):
        return "they are unreadable"
    if found.get("format") != expected["format"]:
        return f"they are in format {found.get('format')}, this lmtune writes format {expected['format']}"
    if found.get("data") != expected["data"]:
        return "the data changed since (the file's size or modification time, or the tokenizer, differ)"
    if found.get("model") != expected["model"]:
        return "the reference model differs (its name, architecture, checkpoint files, dtype or adapters)"
    if found != expected:
        return "their fingerprint differs"
    if values.ndim != 2 or values.shape[1] != 2 or (len(needed) and (int(np.max(needed)) >= len(values) or np.isnan(values[needed]).any())):
        return "they lack pairs this run trains on (a larger max_seq_len?)"
    return None


def write_reference(directory: Path, fingerprint: dict[str, object], values: np.ndarray) -> None:
    """The record goes first and comes back last, so values without their record are never read."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RECORD).unlink(missing_ok=True)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as fp:
            np.save(fp, np.asarray(values, dtype=np.float64))

    atomic_write(directory / VALUES, save)
    atomic_write_text(directory / RECORD, json.dumps({"fingerprint": fingerprint, "pairs": len(values)}, indent=2) + "\n")


def cached_reference_logps(
    directory: Path,
    fingerprint: dict[str, object],
    pairs: EncodedPairs,
    needed: Sequence[int] | np.ndarray,
    compute: Callable[[np.ndarray], np.ndarray],
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    writer: bool = True,
) -> np.ndarray:
    """float64 (N, 2) reference log-probs of every pair of ``pairs`` (NaN for pairs not needed):
    read from ``directory`` when its fingerprint matches and it covers ``needed``, else
    ``compute(ids)`` for the needed pairs without data scores, written, and returned.
    With several ranks every rank calls this (they all read the same verdict from the same
    files), ``compute`` runs each rank's share and gathers them (``rank_share``,
    ``gather_shares``), and only the ``writer`` (rank 0) speaks and writes; the caller holds
    OUT's lock and puts a barrier after it."""
    needed = np.asarray(needed, dtype=np.int64)
    stale = stale_reason(directory, fingerprint, needed)
    if not writer:
        say = lambda s: None  # noqa: E731
    if stale is None:
        say(f"lmtune: reusing the reference log-probs in {directory} (delete it to recompute)")
        return np.load(directory / VALUES)
    if stale != "none":
        say(f"lmtune: recomputing the reference log-probs: the ones in {directory} are out of date ({stale}).")
    values = with_data_scores(pairs, np.full((len(pairs), 2), np.nan))
    ids = pairs_to_compute(pairs, needed)
    if len(ids):
        values[ids] = compute(ids)
    if writer:
        write_reference(directory, fingerprint, values)
    return values
