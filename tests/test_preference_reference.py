"""Reference log-probs computed once and cached: equal to a direct computation, reused while
the data and the model are the same, recomputed with one line saying why when not."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmtune.preference.pairs import EncodedPairs


def _tiny():  # type: ignore[no-untyped-def]
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import load_tokenizer

    spec = resolve_model(CardStore(), "tiny_llama", None)
    torch.manual_seed(0)
    return spec, load_any_model(spec), load_tokenizer(spec.tokenizer)


def _data(path: Path, n: int = 6, scores_on: tuple[int, ...] = ()) -> Path:
    lines = []
    for i in range(n):
        r = {"src": f"Question {i}: what is {i} + {i}?", "tgt_chosen": f" It is {2 * i}.", "tgt_rejected": f" Maybe {i * 3 + 1}, or so."}
        if i in scores_on:
            r.update(reference_score_chosen=-1.5 - i, reference_score_rejected=-7.25)
        lines.append(json.dumps(r))
    path.write_text("\n".join(lines) + "\n")
    return path


def _encode(spec, tokenizer, data: Path) -> EncodedPairs:  # type: ignore[no-untyped-def]
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.preference.pairs import encode_pairs
    from lmtune.preference.records import read_preference_pairs

    return encode_pairs(ExampleEncoder(tokenizer, spec.tokenizer.hf_dir), read_preference_pairs(data).pairs, data)


def _alone(model: torch.nn.Module, pairs: EncodedPairs, p: int) -> list[float]:
    """Pair p's chosen and rejected log-probs, each sequence run by itself, summed by hand."""
    from fairseq2.datasets import SequenceBatch

    out = []
    with torch.no_grad():
        for half in (0, 1):
            x = pairs.examples.item(2 * p + half)
            seqs, layout = SequenceBatch(x["tokens"].unsqueeze(0), None).as_input()
            logp = torch.log_softmax(model.eval()(seqs, layout)[0].double(), dim=-1)
            out.append(sum(float(logp[t - 1, x["tokens"][t]]) for t in range(1, len(x["tokens"])) if x["target_mask"][t]))
    return out


def _fingerprints(spec, model, data: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from lmtune.data.encoded_cache import fingerprint
    from lmtune.preference.reference import model_fingerprint, reference_fingerprint

    return reference_fingerprint(fingerprint(data, spec.tokenizer), model_fingerprint(spec, dtype=torch.float32, lora_base=False))


def test_cached_values_equal_a_direct_computation_and_are_reused(tmp_path: Path) -> None:
    from lmtune.preference.reference import (
        cached_reference_logps,
        compute_reference_logps,
    )

    spec, model, tokenizer = _tiny()
    data = _data(tmp_path / "pairs.jsonl", scores_on=(2,))
    pairs = _encode(spec, tokenizer, data)
    cache = tmp_path / "cache"
    asked: list[list[int]] = []

    def compute(ids: np.ndarray) -> np.ndarray:
        asked.append(ids.tolist())
        return compute_reference_logps(model, pairs, ids, max_num_tokens=256)

    said: list[str] = []
    needed = [0, 1, 2, 4, 5]  # pair 3 is not trained on (say, too long): not computed
    values = cached_reference_logps(cache, _fingerprints(spec, model, data), pairs, needed, compute, said.append)
    assert asked == [[0, 1, 4, 5]] and said == []  # pair 2 has its scores in the data
    assert values[2].tolist() == [-3.5, -7.25] and np.isnan(values[3]).all()
    for p in (0, 1, 4, 5):
        assert values[p].tolist() == pytest.approx(_alone(model, pairs, p), rel=1e-6, abs=1e-5)

    def refuse(ids: np.ndarray) -> np.ndarray:
        raise AssertionError("the cache should have been reused")

    again = cached_reference_logps(cache, _fingerprints(spec, model, data), pairs, needed, refuse, said.append)
    np.testing.assert_array_equal(again, values)
    assert said == [f"lmtune: reusing the reference log-probs in {cache} (delete it to recompute)"]

    # Pair 3 needed now: computed again, saying why.
    said.clear()
    cached_reference_logps(cache, _fingerprints(spec, model, data), pairs, range(6), compute, said.append)
    assert asked[-1] == [0, 1, 3, 4, 5]
    assert said == [f"lmtune: recomputing the reference log-probs: the ones in {cache} are out of date (they lack pairs this run trains on (a larger max_seq_len?))."]


def test_a_changed_data_file_or_model_triggers_the_rebuild_line(tmp_path: Path) -> None:
    from lmtune.preference.reference import (
        cached_reference_logps,
        compute_reference_logps,
    )

    spec, model, tokenizer = _tiny()
    data = _data(tmp_path / "pairs.jsonl", n=3)
    cache = tmp_path / "cache"
    pairs = _encode(spec, tokenizer, data)
    cached_reference_logps(cache, _fingerprints(spec, model, data), pairs, range(3), lambda ids: compute_reference_logps(model, pairs, ids, max_num_tokens=256), lambda s: None)

    data = _data(data, n=4)  # one pair more
    pairs = _encode(spec, tokenizer, data)
    said: list[str] = []
    values = cached_reference_logps(cache, _fingerprints(spec, model, data), pairs, range(4), lambda ids: compute_reference_logps(model, pairs, ids, max_num_tokens=256), said.append)
    assert said == [f"lmtune: recomputing the reference log-probs: the ones in {cache} are out of date (the data changed since (the file's size or modification time, or the tokenizer, differ))."]
    assert values[3].tolist() == pytest.approx(_alone(model, pairs, 3), rel=1e-6, abs=1e-5)

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.decoder.layers[0].ffn.inner_proj.weight.mul_(1.5)
    ckpt = tmp_path / "other.pt"
    torch.save({}, ckpt)
    from lmtune.data.encoded_cache import fingerprint
    from lmtune.preference.reference import model_fingerprint, reference_fingerprint

    def fp(s=dataclasses.replace(spec, checkpoint=ckpt)):  # type: ignore[no-untyped-def]
        return reference_fingerprint(fingerprint(data, spec.tokenizer), model_fingerprint(s, dtype=torch.float32, lora_base=False))

    said.clear()
    values = cached_reference_logps(cache, fp(), pairs, range(4), lambda ids: compute_reference_logps(other, pairs, ids, max_num_tokens=256), said.append)
    assert said == [f"lmtune: recomputing the reference log-probs: the ones in {cache} are out of date (the reference model differs (its name, architecture, checkpoint files, dtype or adapters))."]
    assert values[0].tolist() == pytest.approx(_alone(other, pairs, 0), rel=1e-6, abs=1e-5)
    first = fp()
    assert fp() == first  # read from the card and the files alone: the same every time
    ckpt.write_bytes(b"changed weights, longer")
    assert fp() != first  # the checkpoint's files are part of the model's fingerprint
    first = fp()
    assert fp(dataclasses.replace(spec, checkpoint=ckpt, config={**spec.config, "num_layers": 3})) != first  # and the architecture


def test_rank_shares_cover_the_pairs_in_order() -> None:
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    from lmtune.preference.reference import gather_shares, rank_share

    ids = np.array([3, 5, 8, 9, 11, 12, 20])
    assert np.concatenate([rank_share(ids, r, 3) for r in range(3)]).tolist() == ids.tolist()
    one = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.testing.assert_array_equal(gather_shares(create_fake_gangs(CPU).dp, one, 3), one)


def test_lora_reference_is_the_base_model_with_adapters_off(tmp_path: Path) -> None:
    from lmtune.adapters.lora import adapters_off, apply_lora, lora_modules
    from lmtune.options.lora import LoraSettings
    from lmtune.preference.reference import compute_reference_logps

    spec, model, tokenizer = _tiny()
    pairs = _encode(spec, tokenizer, _data(tmp_path / "pairs.jsonl", n=3))
    base = compute_reference_logps(model, pairs, range(3), max_num_tokens=256)
    settings = LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"])
    lora = apply_lora(copy.deepcopy(model), settings)
    with torch.no_grad():
        for _, m in lora_modules(lora):
            m.lora_b.normal_()  # trained adapters: the model is no longer the base
    adapted = compute_reference_logps(lora, pairs, range(3), max_num_tokens=256)
    assert np.abs(adapted - base).max() > 1e-2
    with adapters_off(lora):
        off = compute_reference_logps(lora, pairs, range(3), max_num_tokens=256)
    np.testing.assert_allclose(off, base, atol=1e-5)
    np.testing.assert_array_equal(compute_reference_logps(lora, pairs, range(3), max_num_tokens=256), adapted)


def test_a_reference_with_another_tokenizer_is_one_sentence(tmp_path: Path) -> None:
    import shutil

    from lmtune.errors import UserError
    from lmtune.preference.reference import check_same_tokenizer

    spec, _, _ = _tiny()
    policy = spec.tokenizer
    assert policy.hf_dir is not None
    copy_dir = shutil.copytree(policy.hf_dir, tmp_path / "same")
    same = dataclasses.replace(policy, name="copy", path=copy_dir / policy.path.relative_to(policy.hf_dir) if policy.path != policy.hf_dir else copy_dir)
    check_same_tokenizer(policy, same)  # the same files elsewhere: the same ids

    tok = json.loads((copy_dir / "tokenizer.json").read_text())
    tok["added_tokens"].append({**tok["added_tokens"][-1], "id": tok["added_tokens"][-1]["id"] + 1, "content": "<|extra|>"})
    (copy_dir / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match=r"^reference_model: the reference model's tokenizer 'copy' is not the policy's '.+' \(its tokenizer files differ\); the reference scores the policy's token ids"):
        check_same_tokenizer(policy, same)
    with pytest.raises(UserError, match=r"\(a qwen tokenizer, the policy's is llama\)"):
        check_same_tokenizer(policy, dataclasses.replace(policy, family="qwen"))
