"""``lmtune preference_finetune`` end to end, on an SFT checkpoint of the tiny GSM8K task.

Pairs: a tiny GSM8K question, its right answer chosen and the same working with a wrong final
answer rejected. Each criterion trains from a clean start; dpo's first loss is log 2 (the
reference is the starting policy); after DPO the held-out reward accuracy is high and greedy
accuracy is not below the SFT checkpoint's. Runs over several processes (killed and resumed, two
ranks, a sweep's points): test_preference_processes.py.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from helpers import assert_user_error, run_lmtune_in_process
from preference_runs import metrics, preference_args, write_pairs

pytestmark = pytest.mark.slow  # trains an SFT checkpoint, then preference runs on it


@pytest.mark.parametrize("criterion", ["dpo", "simpo", "orpo", "cpo"])
def test_each_criterion_trains(tmp_path: Path, sft: Path, pairs: Path, criterion: str) -> None:
    out = tmp_path / "out"
    r = run_lmtune_in_process("preference_finetune", str(out), *preference_args(sft, pairs, f"criterion.name={criterion}", "max_num_steps=3", "checkpoint_every_n_steps=3", "validate_every_n_steps=3"))
    assert r.returncode == 0, r.stderr[-3000:]
    train = metrics(out)
    assert sorted(train) == [1, 2, 3]
    assert all(math.isfinite(m["Preference Loss"]) for m in train.values())
    assert re.search(r"^step 3/3  loss \d+\.\d{3}  acc ", r.stderr, re.M), r.stderr
    valid = metrics(out, "valid")[3]
    assert 0 <= valid["Reward Accuracy"] <= 1 and math.isfinite(valid["Preference Loss"])
    assert (out / "checkpoints/step_3").is_dir()
    computed = "lmtune: computing the reference log-probs" in r.stderr
    assert computed == (criterion == "dpo"), r.stderr[-3000:]  # only dpo has a reference
    import yaml

    effective = yaml.safe_load((out / "lmtune.yaml").read_text())["criterion"]
    assert effective["beta"] == {"dpo": 0.1, "simpo": 2.0, "orpo": None, "cpo": 0.1}[criterion], effective  # each criterion's own default
    if criterion == "simpo":
        assert effective["gamma"] == 0.5
    if criterion == "dpo":
        # The reference is the starting policy: every pair's h is 0, so the loss is log 2 at step 1.
        assert train[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert abs(train[1]["Reward Margin"]) < 1e-5
        # lmtune report and OUT/plots read the preference loss as the run's loss.
        from lmtune.report.runs import LOSS, read_run_metrics

        assert read_run_metrics(out).series("train", LOSS) == ([1, 2, 3], [train[s]["Preference Loss"] for s in (1, 2, 3)])


def test_lora_dpo_scores_against_the_base_without_adapters(tmp_path: Path, sft: Path, pairs: Path) -> None:
    out = tmp_path / "out"
    r = run_lmtune_in_process("preference_finetune", str(out), *preference_args(sft, pairs, "lora.rank=4", "max_num_steps=2", "checkpoint_every_n_steps=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    train = metrics(out)
    # New adapters start at zero: the policy is the base, which is the reference, so the loss is log 2.
    assert train[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert train[2]["Preference Loss"] != train[1]["Preference Loss"]
    assert (out / "checkpoints/lora.yaml").is_file()


def test_a_cached_reference_is_never_loaded(tmp_path: Path, sft: Path, isolated_user_cards: Path) -> None:
    """A second run on the same data in a new OUT reads the cached reference log-probs without
    loading the reference model: its checkpoint is overwritten with zeros of the same size and
    modification time (what the fingerprint reads), so a load would fail, and the run trains to
    the first run's losses."""
    import shutil

    data = write_pairs(tmp_path / "data", 60, 10)
    ref_ckpt = shutil.copytree(sft / "step_400/model", tmp_path / "ref_model")
    (isolated_user_cards / "ref.yaml").write_text(f"name: ref_copy\nbase: tiny_llama\ncheckpoint: {ref_ckpt}\n")
    args = preference_args(sft, data, "reference_model=ref_copy", "max_num_steps=3", "checkpoint_every_n_steps=3")
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "first"), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("lmtune: loading the reference model ref_copy") == 1, r.stderr[-3000:]  # once for both splits
    assert r.stderr.count("lmtune: computing the reference log-probs") == 2, r.stderr[-3000:]
    for f in (p for p in ref_ckpt.rglob("*") if p.is_file()):
        st = f.stat()
        f.write_bytes(bytes(st.st_size))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "second"), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("lmtune: reusing the reference log-probs") == 2, r.stderr[-3000:]
    assert "loading the reference model" not in r.stderr and "computing the reference" not in r.stderr, r.stderr[-3000:]
    first, second = metrics(tmp_path / "first"), metrics(tmp_path / "second")
    assert sorted(second) == [1, 2, 3]
    assert first[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the starting policy
    for step in (1, 2, 3):
        assert second[step]["Preference Loss"] == first[step]["Preference Loss"], step


def test_dpo_on_sft_checkpoint_prefers_right_answers(tmp_path: Path, sft: Path, pairs: Path) -> None:
    out = tmp_path / "dpo"
    # A small learning rate: larger ones (3e-4, 1e-3) reach the same reward accuracy but cost
    # a few points of greedy accuracy on this tiny model.
    # float32 as the SFT checkpoint: the claim is DPO's, not bf16's (under bf16 autocast DPO scored 1 of 200 below SFT).
    more = ["dtype=float32", "learning_rate=1e-4", "max_num_tokens=2048", "max_num_steps=40", "checkpoint_every_n_steps=40", "validate_every_n_steps=20", "publish_metrics_every_n_steps=10"]
    r = run_lmtune_in_process("preference_finetune", str(out), *preference_args(sft, pairs, *more))
    assert r.returncode == 0, r.stderr[-3000:]
    valid = metrics(out, "valid")
    assert 0 < valid[20]["Reward Margin"] < valid[40]["Reward Margin"]
    assert valid[40]["Reward Accuracy"] >= 0.9, valid
    scores = {}
    for name, checkpoints in (("sft", sft), ("dpo", out / "checkpoints")):
        g = run_lmtune_in_process("generate", str(tmp_path / f"gen_{name}"), "--config", f"checkpoint_dir={checkpoints}", "model=last_checkpoint", "dataset=tiny_gsm8k")
        assert g.returncode == 0, g.stderr[-3000:]
        scores[name] = json.loads((tmp_path / f"gen_{name}/scores.json").read_text())
        assert scores[name]["num_examples"] == 200
    assert scores["dpo"]["accuracy"] >= scores["sft"]["accuracy"], scores


# ------------------------------------------------------------------ bad input


def test_unknown_criterion_lists_the_valid_ones(tmp_path: Path, sft: Path, pairs: Path) -> None:
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *preference_args(sft, pairs, "criterion.name=kto"))
    assert_user_error(r, "criterion.name='kto'", "dpo, simpo, orpo, cpo")
    assert not (tmp_path / "out").exists()


def test_malformed_record_is_named_by_line(tmp_path: Path, sft: Path) -> None:
    data = write_pairs(tmp_path / "data", 20, 5)
    with (data / "train.jsonl").open("a") as fp:
        fp.write('{"src": "2 + 2?", "tgt_chosen": "4"}\n')
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *preference_args(sft, data))
    assert_user_error(r, f"{data / 'train.jsonl'}:21")
    assert not (tmp_path / "out").exists()


def test_prompt_longer_than_max_seq_len_is_named(tmp_path: Path, sft: Path) -> None:
    data = write_pairs(tmp_path / "data", 20, 5)
    with (data / "train.jsonl").open("a") as fp:
        fp.write(json.dumps({"src": "How many? " * 80, "tgt_chosen": "#### 1", "tgt_rejected": "#### 2"}) + "\n")
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *preference_args(sft, data, "max_num_steps=1"))
    assert_user_error(r, f"{data / 'train.jsonl'}:21", "max_seq_len=128")


def test_random_model_has_no_dpo_reference(tmp_path: Path, pairs: Path) -> None:
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), "--config", "model=tiny_llama", f"dataset={pairs}", "max_seq_len=128", "max_num_tokens=1024")
    assert_user_error(r, "tiny_llama", "init: random", "simpo")
    assert not (tmp_path / "out").exists()


def test_identical_pairs_are_skipped_with_a_count_and_stale_reference_is_rebuilt(tmp_path: Path, sft: Path) -> None:
    data = write_pairs(tmp_path / "data", 30, 5)
    with (data / "train.jsonl").open("a") as fp:
        for _ in range(2):
            fp.write(json.dumps({"src": "1 + 1?", "tgt_chosen": "#### 2", "tgt_rejected": "#### 2"}) + "\n")
    args = preference_args(sft, data, "max_num_steps=1", "checkpoint_every_n_steps=1")
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "a"), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped 2 pairs whose chosen response equals the rejected one" in r.stderr, r.stderr[-3000:]
    records = list(Path(os.environ["LMTUNE_CACHE_DIR"], "encoded").glob("train-*/reference/*/reference.json"))
    assert len(records) == 1
    records[0].write_text("{not json")  # damaged: rebuilt with one line, not a traceback
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "b"), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("lmtune: recomputing the reference log-probs") == 1 and "they are unreadable" in r.stderr, r.stderr[-3000:]


def test_reference_model_with_another_tokenizer_is_refused(tmp_path: Path, sft: Path, pairs: Path, isolated_user_cards: Path) -> None:
    import shutil

    from lmtune.resources import assets_dir

    tok_dir = tmp_path / "tok"
    shutil.copytree(assets_dir() / "tiny/tokenizer", tok_dir)
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 476, "content": "<|tool|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (tok_dir / "tokenizer.json").write_text(json.dumps(data))
    cards = f"name: tok_plus\ntokenizer: {tok_dir}\ntokenizer_family: llama\ntokenizer_config:\n  impl: hg\n  use_eot: true\n---\n"
    cards += f"name: other_ref\nbase: tiny_llama\ntokenizer_ref: tok_plus\ncheckpoint: {sft / 'step_400/model'}\n"
    (isolated_user_cards / "ref.yaml").write_text(cards)
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *preference_args(sft, pairs, "reference_model=other_ref"))
    assert_user_error(r, "reference_model", "tok_plus", "its tokenizer files differ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["auto", "min"])
def test_best_checkpoint_is_ranked_by_held_out_reward_accuracy(tmp_path: Path, sft: Path, pairs: Path, mode: str) -> None:
    """auto: higher is better; min (perverse, but it tells the best step from the last one here,
    where the accuracy rises at every validation) ranks the lowest first."""
    out = tmp_path / "out"
    ranked = [
        "max_num_steps=6", "checkpoint_every_n_steps=2", "validate_every_n_steps=2", "learning_rate=3e-3", "early_stopping.metric=valid.reward_accuracy",
        f"early_stopping.mode={mode}", "early_stopping.patience=null", "keep_best_n_checkpoints=1",
    ]  # fmt: skip
    r = run_lmtune_in_process("preference_finetune", str(out), *preference_args(sft, pairs, *ranked))
    assert r.returncode == 0, r.stderr[-3000:]
    from lmtune.run_dir import best_step

    valid = metrics(out, "valid")
    assert sorted(valid) == [2, 4, 6]
    sign = -1 if mode == "min" else 1
    best = max(valid, key=lambda step: (sign * valid[step]["Reward Accuracy"], -step))  # the first of equals
    assert best_step(out / "checkpoints") == best, valid
    assert (out / f"checkpoints/step_{best}").is_dir()
