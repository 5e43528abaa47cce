"""``lmtune preference_finetune`` end to end, on an SFT checkpoint of the tiny GSM8K task.

Pairs: a tiny GSM8K question, its right answer chosen and the same working with a wrong final
answer rejected. Each criterion trains from a clean start; dpo's first loss is log 2 (the
reference is the starting policy); a run killed with SIGKILL and rerun gives the uninterrupted
run's losses; two DDP ranks give one rank's losses with twice the batch; after DPO the
held-out reward accuracy is high and greedy accuracy is not below the SFT checkpoint's.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, assert_user_error, run_lmtune_in_process
from tiny_builders import train_tiny_checkpoint

pytestmark = pytest.mark.slow  # trains an SFT checkpoint, then preference runs on it

TRAIN = REPO / "assets/tiny/gsm8k/sft/train.jsonl"


def _wrong(target: str, rng: random.Random) -> str:
    answer = int(target.rsplit("#### ", 1)[1])
    return target.replace(f"#### {answer}", f"#### {answer + rng.choice([-3, -2, -1, 1, 2, 3])}")


def write_pairs(directory: Path, num_train: int, num_valid: int) -> Path:
    rng = random.Random(0)
    records = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", records[:num_train]), ("valid", records[-num_valid:])):
        lines = [json.dumps({"src": r["src"], "tgt_chosen": r["tgt"], "tgt_rejected": _wrong(r["tgt"], rng)}) for r in part]
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/checkpoints of a tiny GSM8K SFT run: the policy's (and dpo's reference's) start."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("sft") / "out", steps=400, every=400)  # greedy accuracy about 0.34


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "data", 1000, 100)


def _args(sft: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--config", "model=last_checkpoint", f"resume_checkpoint_dir={sft}", f"dataset={data}", "max_seq_len=128",
        "max_num_tokens=1024", "dtype=float32", "tensorboard=false", "learning_rate=1e-3", "publish_metrics_every_n_steps=1",
        "lr_scheduler.num_warmup_steps=0", *extra,
    ]  # fmt: skip


def _metrics(out: Path, split: str = "train") -> dict[int, dict]:  # type: ignore[type-arg]
    """Step -> metrics; a resumed run re-logs the steps after its checkpoint, and the later line wins."""
    return {m["Step"]: m for m in map(json.loads, (out / f"metrics/{split}.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("criterion", ["dpo", "simpo", "orpo", "cpo"])
def test_each_criterion_trains(tmp_path: Path, sft: Path, pairs: Path, criterion: str) -> None:
    out = tmp_path / "out"
    r = run_lmtune_in_process("preference_finetune", str(out), *_args(sft, pairs, f"criterion.name={criterion}", "max_num_steps=3", "checkpoint_every_n_steps=3", "validate_every_n_steps=3"))
    assert r.returncode == 0, r.stderr[-3000:]
    train = _metrics(out)
    assert sorted(train) == [1, 2, 3]
    assert all(math.isfinite(m["Preference Loss"]) for m in train.values())
    assert re.search(r"^step 3/3  loss \d+\.\d{3}  acc ", r.stderr, re.M), r.stderr
    valid = _metrics(out, "valid")[3]
    assert 0 <= valid["Reward Accuracy"] <= 1 and math.isfinite(valid["Preference Loss"])
    assert (out / "checkpoints/step_3").is_dir()
    computed = "lmtune: computing the reference log-probs" in r.stderr
    assert computed == (criterion == "dpo"), r.stderr[-3000:]  # only dpo has a reference
    if criterion == "dpo":
        # The reference is the starting policy: every pair's h is 0, so the loss is log 2 at step 1.
        assert train[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert abs(train[1]["Reward Margin"]) < 1e-5
        # lmtune report and OUT/plots read the preference loss as the run's loss.
        from lmtune.report.runs import LOSS, read_run_metrics

        assert read_run_metrics(out).series("train", LOSS) == ([1, 2, 3], [train[s]["Preference Loss"] for s in (1, 2, 3)])


def test_lora_dpo_scores_against_the_base_without_adapters(tmp_path: Path, sft: Path, pairs: Path) -> None:
    out = tmp_path / "out"
    r = run_lmtune_in_process("preference_finetune", str(out), *_args(sft, pairs, "lora.rank=4", "max_num_steps=2", "checkpoint_every_n_steps=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    train = _metrics(out)
    # New adapters start at zero: the policy is the base, which is the reference, so the loss is log 2.
    assert train[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert train[2]["Preference Loss"] != train[1]["Preference Loss"]
    assert (out / "checkpoints/lora.yaml").is_file()


def _complete_steps(out: Path) -> list[int]:
    ckpt = out / "checkpoints"
    return sorted(int(p.name[5:]) for p in ckpt.glob("step_*") if p.name[5:].isdigit()) if ckpt.is_dir() else []


def test_killed_run_resumes_to_the_uninterrupted_losses(tmp_path: Path, sft: Path, pairs: Path) -> None:
    args = _args(sft, pairs, "max_num_steps=12", "checkpoint_every_n_steps=3", "keep_last_n_checkpoints=2")
    reference = tmp_path / "reference"
    r = run_lmtune_in_process("preference_finetune", str(reference), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "preference_finetune", str(out), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _complete_steps(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = _complete_steps(out)
    assert at_kill and at_kill[-1] < 12, at_kill
    r = run_lmtune_in_process("preference_finetune", str(out), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    # The reference log-probs come from the cache the first run wrote, never from the trained policy.
    assert "lmtune: reusing the reference log-probs" in r.stderr and "computing the reference" not in r.stderr, r.stderr[-3000:]
    expected, resumed = _metrics(reference), _metrics(out)
    assert sorted(resumed) == sorted(expected) == list(range(1, 13))
    for step in range(at_kill[-1] + 1, 13):
        assert resumed[step]["Preference Loss"] == expected[step]["Preference Loss"], step


def test_dpo_on_sft_checkpoint_prefers_right_answers(tmp_path: Path, sft: Path, pairs: Path) -> None:
    out = tmp_path / "dpo"
    # A small learning rate: larger ones (3e-4, 1e-3) reach the same reward accuracy but cost
    # a few points of greedy accuracy on this tiny model.
    more = ["learning_rate=1e-4", "max_num_tokens=2048", "max_num_steps=40", "checkpoint_every_n_steps=40", "validate_every_n_steps=20", "publish_metrics_every_n_steps=10"]
    r = run_lmtune_in_process("preference_finetune", str(out), *_args(sft, pairs, *more))
    assert r.returncode == 0, r.stderr[-3000:]
    valid = _metrics(out, "valid")
    assert 0 < valid[20]["Reward Margin"] < valid[40]["Reward Margin"]
    assert valid[40]["Reward Accuracy"] >= 0.9, valid
    scores = {}
    for name, checkpoints in (("sft", sft), ("dpo", out / "checkpoints")):
        g = run_lmtune_in_process("generate", str(tmp_path / f"gen_{name}"), "--config", f"checkpoint_dir={checkpoints}", "model=last_checkpoint", "dataset=tiny_gsm8k")
        assert g.returncode == 0, g.stderr[-3000:]
        scores[name] = json.loads((tmp_path / f"gen_{name}/scores.json").read_text())
        assert scores[name]["num_examples"] == 200
    assert scores["dpo"]["accuracy"] >= scores["sft"]["accuracy"], scores


def _torchrun(out: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m", "lmtune", "preference_finetune", str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_ranks_equal_one_rank_accumulating_two_batches(tmp_path: Path, sft: Path, pairs: Path, parallelism: str) -> None:
    common = ["max_num_steps=4", "checkpoint_every_n_steps=4", "max_grad_norm=null", f"data_parallelism={parallelism}"]
    two = tmp_path / "two"
    r = _torchrun(two, _args(sft, pairs, *common))
    assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    r1 = run_lmtune_in_process("preference_finetune", str(one), *_args(sft, pairs, *common, "gradient_accumulation_steps=2"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    # Rank r reads batches r, r + 2, ...: the two ranks' step holds the batches one rank accumulates.
    a, b = _metrics(two), _metrics(one)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step]["Number of Examples"] == b[step]["Number of Examples"]
        assert a[step]["Preference Loss"] == pytest.approx(b[step]["Preference Loss"], rel=1e-4, abs=1e-6), step


def test_two_ranks_compute_their_shares_of_the_same_reference_logps(tmp_path: Path, sft: Path) -> None:
    import numpy as np

    data = write_pairs(tmp_path / "data", 41, 5)  # 41 pairs: rank 0 computes 21, rank 1 20
    common = ["max_num_steps=1", "checkpoint_every_n_steps=1", "data_cache=false"]  # OUT/reference: one file per run
    r2 = _torchrun(tmp_path / "two", _args(sft, data, *common))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "lmtune: computing the reference log-probs of 41 pairs of train.jsonl with last_checkpoint, each rank its share (rank 0: 21, rank 1: 20)" in r2.stderr, r2.stderr[-3000:]
    assert "pairs of valid.jsonl with last_checkpoint, each rank its share (rank 0: 3, rank 1: 2)" in r2.stderr, r2.stderr[-3000:]
    r1 = run_lmtune("preference_finetune", str(tmp_path / "one"), *_args(sft, data, *common))
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert "lmtune: computing the reference log-probs of 41 pairs of train.jsonl with last_checkpoint ->" in r1.stderr, r1.stderr[-3000:]
    for split, n in (("train", 41), ("valid", 5)):
        two = np.load(tmp_path / f"two/reference/{split}/reference_logps.npy")
        one = np.load(tmp_path / f"one/reference/{split}/reference_logps.npy")
        assert two.shape == one.shape == (n, 2) and np.isfinite(one).all() and (one < 0).all()
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-4)  # packed into other batches: float32 sums may differ in the last bits
    # The first step's loss is log 2 on both: every rank's reference values are the starting policy's.
    assert _metrics(tmp_path / "two")[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_a_sweep_over_beta_trains_each_point_on_one_shared_reference(tmp_path: Path, sft: Path) -> None:
    """``lmtune sweep --recipe preference_finetune``: each point trains as the verb would, and the
    points share the encoded pairs and the reference log-probs (computed once, by the first point)."""
    data = write_pairs(tmp_path / "data", 60, 10)
    out = tmp_path / "sweep"
    args = _args(sft, data, "max_num_steps=2", "checkpoint_every_n_steps=2")
    r = run_lmtune("sweep", str(out), "--recipe", "preference_finetune", *args, "--grid", "criterion.beta=0.1,0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    points = {beta: _metrics(out / f"runs/criterion.beta={beta}") for beta in ("0.1", "0.5")}
    for train in points.values():
        assert sorted(train) == [1, 2]
        assert train[1]["Preference Loss"] == pytest.approx(math.log(2), abs=1e-5)  # each point's reference is the start
    assert points["0.1"][2]["Preference Loss"] != pytest.approx(points["0.5"][2]["Preference Loss"], abs=1e-4)  # beta reached the loss
    for name in ("train.jsonl", "valid.jsonl"):
        assert r.stderr.count(f"lmtune: encoded {name}:") == 1, r.stderr[-3000:]
        assert r.stderr.count(f"pairs of {name} with last_checkpoint") == 1, r.stderr[-3000:]  # computed by the first point only
    assert r.stderr.count("lmtune: reusing the reference log-probs in ") == 2, r.stderr[-3000:]  # the second point, both splits
    cache = Path(os.environ["LMTUNE_CACHE_DIR"])
    assert len(list(cache.rglob("reference.json"))) == 2  # one entry per split, shared by both points


# ------------------------------------------------------------------ bad input


def test_unknown_criterion_lists_the_valid_ones(tmp_path: Path, sft: Path, pairs: Path) -> None:
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *_args(sft, pairs, "criterion.name=kto"))
    assert_user_error(r, "criterion.name='kto'", "dpo, simpo, orpo, cpo")
    assert not (tmp_path / "out").exists()


def test_malformed_record_is_named_by_line(tmp_path: Path, sft: Path) -> None:
    data = write_pairs(tmp_path / "data", 20, 5)
    with (data / "train.jsonl").open("a") as fp:
        fp.write('{"src": "2 + 2?", "tgt_chosen": "4"}\n')
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *_args(sft, data))
    assert_user_error(r, f"{data / 'train.jsonl'}:21")
    assert not (tmp_path / "out").exists()


def test_prompt_longer_than_max_seq_len_is_named(tmp_path: Path, sft: Path) -> None:
    data = write_pairs(tmp_path / "data", 20, 5)
    with (data / "train.jsonl").open("a") as fp:
        fp.write(json.dumps({"src": "How many? " * 80, "tgt_chosen": "#### 1", "tgt_rejected": "#### 2"}) + "\n")
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *_args(sft, data, "max_num_steps=1"))
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
    args = _args(sft, data, "max_num_steps=1", "checkpoint_every_n_steps=1")
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
    r = run_lmtune_in_process("preference_finetune", str(tmp_path / "out"), *_args(sft, pairs, "reference_model=other_ref"))
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
    r = run_lmtune_in_process("preference_finetune", str(out), *_args(sft, pairs, *ranked))
    assert r.returncode == 0, r.stderr[-3000:]
    from lmtune.run_dir import best_step

    valid = _metrics(out, "valid")
    assert sorted(valid) == [2, 4, 6]
    sign = -1 if mode == "min" else 1
    best = max(valid, key=lambda step: (sign * valid[step]["Reward Accuracy"], -step))  # the first of equals
    assert best_step(out / "checkpoints") == best, valid
    assert (out / f"checkpoints/step_{best}").is_dir()
