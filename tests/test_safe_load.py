"""Loading a checkpoint never runs code from it (lmtune.safe_load).

One tiny run; each test plants an object whose unpickling runs a shell command (it would create
a marker file) into a copy of one of its files, reruns lmtune on it, and checks the one sentence,
exit status 2, that the marker was never created, and (on resume) that OUT is byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import REPO, assert_user_error, run_lmtune_in_process

pytestmark = pytest.mark.slow  # trains a run, then resumes it once per planted file

RUN = [
    "--config-file", "tiny_gsm8k", "--config", "max_num_steps=4", "checkpoint_every_n_steps=2", "tensorboard=false",
    "max_num_tokens=1024", "lr_scheduler.num_warmup_steps=0", "validate_every_n_steps=2", "valid_dataset=tiny_gsm8k",
    "max_eval_examples=4", "eval_max_gen_len=8", "early_stopping.metric=valid.loss",
]  # fmt: skip
RESUME = [*RUN, "max_num_steps=6"]
REFUSED = "holds objects lmtune will not unpickle"


class RunsCommand:
    """Unpickling this runs ``touch MARKER``, as a planted object on a shared cluster would run anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _plant(file: Path, marker: Path) -> None:
    """Adds the object to the state dict in ``file`` (read here with the full unpickler: the file is ours)."""
    state = torch.load(file, map_location="cpu", weights_only=False)
    state["planted"] = RunsCommand(marker)
    torch.save(state, file)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4, validation scores and early-stopping records."""
    root = tmp_path_factory.mktemp("safe_load")
    (root / "no_cards").mkdir()
    out = root / "out"
    r = run_lmtune_in_process("instruction_finetune", str(out), *RUN, env={"LMTUNE_USER_ASSET_DIR": str(root / "no_cards")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints/early_stopping.jsonl").is_file()
    return out


@pytest.fixture()
def out(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(trained, copy)
    return copy


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_every_file_of_a_run_reads_as_the_unrestricted_unpickler_reads_it(trained: Path) -> None:
    from lmtune.safe_load import load_torch_file

    files = sorted((trained / "checkpoints").rglob("*.pt"))
    assert {f.parent.name for f in files} >= {"tp_00", "trainer", "data_reader"} and len(files) == 5  # model x2, optimizer, trainer, reader
    for file in files:
        assert _same(load_torch_file(file), torch.load(file, map_location="cpu", weights_only=False)), file


def test_the_planted_object_runs_its_command_under_plain_unpickling(out: Path, tmp_path: Path) -> None:
    """What the other tests guard against: the same file, loaded as fairseq2 0.8.1 loads trainer state."""
    marker = tmp_path / "ran"
    file = out / "checkpoints/step_4/trainer/rank_00.pt"
    _plant(file, marker)
    torch.load(file, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["model/pp_00/tp_00/sdp_00.pt", "optimizer/pp_00/tp_00/sdp_00.pt", "trainer/rank_00.pt", "data_reader/dp_00.pt"])
def test_resume_refuses_a_planted_checkpoint_file_and_leaves_out_as_it_was(out: Path, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "ran"
    file = out / "checkpoints/step_4" / kind
    _plant(file, marker)
    before = _snapshot(out)
    line = assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *RESUME), str(file), REFUSED)
    assert "posix.system" in line
    assert not marker.exists()
    assert _snapshot(out) == before


def test_a_pretraining_resume_refuses_a_planted_reader_state(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Document {i}: the fox jumps over {i} lazy dogs, and the dogs sleep.\n\n" for i in range(200)))
    args = ["--config", "model=tiny_llama", "init=random", f"dataset={corpus}", "max_seq_len=64", "batch_size=4",
            "max_num_steps=2", "checkpoint_every_n_steps=2", "tensorboard=false"]  # fmt: skip
    out = tmp_path / "out"
    r = run_lmtune_in_process("pretrain", str(out), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    marker = tmp_path / "ran"
    file = out / "checkpoints/step_2/data_reader/dp_00.pt"
    _plant(file, marker)
    before = _snapshot(out)
    assert_user_error(run_lmtune_in_process("pretrain", str(out), *args, "max_num_steps=4"), str(file), REFUSED)
    assert not marker.exists()
    assert _snapshot(out) == before


def test_the_loader_fairseq2_resolves_refuses_it_unrestricted(out: Path, tmp_path: Path) -> None:
    """fairseq2 reads trainer state with restrict=False; lmtune's loader ignores that."""
    from fairseq2.io import TensorFileLoader, TensorFileLoadOptions

    from lmtune.models.loading import resolver
    from lmtune.safe_load import UnsafeCheckpointFile

    marker = tmp_path / "ran"
    file = out / "checkpoints/step_4/trainer/rank_00.pt"
    _plant(file, marker)
    with pytest.raises(UnsafeCheckpointFile, match=REFUSED):
        resolver().resolve(TensorFileLoader).load(file, TensorFileLoadOptions(restrict=False))
    assert not marker.exists()


def test_a_new_stage_refuses_a_planted_model_file(out: Path, tmp_path: Path) -> None:
    """The model of ``model=last_checkpoint`` is read by fairseq2's model family, through the same loader."""
    marker = tmp_path / "ran"
    file = out / "checkpoints/step_4/model/pp_00/tp_00/sdp_00.pt"
    _plant(file, marker)
    stage = tmp_path / "stage"
    r = run_lmtune_in_process("instruction_finetune", str(stage), *RUN, f"resume_checkpoint_dir={out / 'checkpoints'}", "model=last_checkpoint")
    assert_user_error(r, str(file), REFUSED)
    assert not marker.exists()


def test_a_planted_meta_checkpoint_is_refused_as_such(isolated_user_cards: Path, tmp_path: Path) -> None:
    """Before: "does not fit the model's architecture", which sent the user looking in the wrong place."""
    from tiny_builders import build_tiny_model, write_meta_reference

    config = yaml.safe_load((REPO / "assets/tiny.yaml").read_text().split("---")[1])["model_config"]
    file = write_meta_reference(build_tiny_model("llama", "llama3_2_1b", config), tmp_path / "meta")
    marker = tmp_path / "ran"
    _plant(file, marker)
    (isolated_user_cards / "planted.yaml").write_text(yaml.safe_dump({"name": "planted_meta", "base": "tiny_llama", "checkpoint": str(file)}))
    r = run_lmtune_in_process("instruction_finetune", str(tmp_path / "run"), *RUN, "model=planted_meta")
    line = assert_user_error(r, str(file), REFUSED)
    assert "architecture" not in line
    assert not marker.exists()


def test_lora_adapters_are_read_the_same_way(tmp_path: Path) -> None:
    from lmtune.adapters.lora import read_checkpoint_tensors
    from lmtune.safe_load import UnsafeCheckpointFile

    marker = tmp_path / "ran"
    file = tmp_path / "model/pp_00/tp_00/sdp_00.pt"
    file.parent.mkdir(parents=True)
    torch.save({"model": {"decoder.layers.0.self_attn.q_proj.lora_a": torch.zeros(2, 2)}, "planted": RunsCommand(marker)}, file)
    with pytest.raises(UnsafeCheckpointFile, match=REFUSED):
        read_checkpoint_tensors(tmp_path / "model")
    assert not marker.exists()


def test_an_encoded_array_of_objects_is_refused(out: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cache = tmp_path / "cache"  # a copy of the user cache the run was encoded into
    shutil.copytree(os.environ["LMTUNE_MODULE_CACHE_DIR"], cache)
    (array,) = cache.glob("encoded/train-*/offsets.npy")
    size = array.stat().st_size
    np.save(array, np.array([RunsCommand(marker)], dtype=object), allow_pickle=True)
    # Padded to the size the cache recorded, so that its size check passes and the array is read.
    with array.open("ab") as fp:
        fp.write(b"\0" * (size - array.stat().st_size))
    r = run_lmtune_in_process("instruction_finetune", str(out), *RESUME, env={"LMTUNE_CACHE_DIR": str(cache)})
    assert_user_error(r, str(array), REFUSED)
    assert not marker.exists()


def test_early_stopping_records_are_read_as_json_only(out: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    history = out / "checkpoints/early_stopping.jsonl"
    history.write_bytes(pickle.dumps(RunsCommand(marker)))
    assert_user_error(run_lmtune_in_process("instruction_finetune", str(out), *RESUME), str(history), "is not an early-stopping record")
    assert not marker.exists()


def _planted_hf_tokenizer(directory: Path, marker: Path) -> Path:
    """The tiny tokenizer, with a module of its own that runs a command when transformers imports it."""
    shutil.copytree(REPO / "assets/tiny/tokenizer", directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["planted.PlantedTokenizer", None]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "planted.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return directory


def test_a_tokenizer_directory_with_its_own_code_is_refused(isolated_user_cards: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    tok = _planted_hf_tokenizer(tmp_path / "tok", marker)
    cards = [
        {"name": "planted_tok", "tokenizer": str(tok), "tokenizer_family": "llama", "tokenizer_config": {"impl": "hg", "use_eot": True}},
        {"name": "planted_model", "base": "tiny_llama", "tokenizer_ref": "planted_tok"},
    ]
    (isolated_user_cards / "planted.yaml").write_text(yaml.safe_dump_all(cards))
    r = run_lmtune_in_process("audit", "tiny_gsm8k", "--model", "planted_model")
    assert_user_error(r, "card 'planted_tok'", str(tok / "tokenizer_config.json"), "auto_map", "trust_remote_code: true")
    assert not marker.exists()


def test_a_checkpoint_directory_with_its_own_code_is_refused(isolated_user_cards: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "planted", "auto_map": {"AutoModelForCausalLM": "planted.Model"}}))
    (hf / "planted.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (isolated_user_cards / "planted.yaml").write_text(yaml.safe_dump({"name": "planted_hf", "base": "tiny_llama", "checkpoint": str(hf)}))
    r = run_lmtune_in_process("instruction_finetune", str(tmp_path / "run"), *RUN, "model=planted_hf")
    assert_user_error(r, "card 'planted_hf'", str(hf / "config.json"), "auto_map")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_a_card_may_trust_its_directory_and_nothing_else_is_trusted(tmp_path: Path) -> None:
    from lmtune.errors import UserError
    from lmtune.safe_load import check_hf_dir, hf_trust_remote_code

    trusted = _planted_hf_tokenizer(tmp_path / "trusted", tmp_path / "ran")
    other = _planted_hf_tokenizer(tmp_path / "other", tmp_path / "ran")
    check_hf_dir(trusted, card="trusting", trusted=True)
    assert hf_trust_remote_code(trusted) and not hf_trust_remote_code(other)
    with pytest.raises(UserError, match="trust_remote_code is 'yes'; valid: true or false"):
        check_hf_dir(other, card="unsure", trusted="yes")
    assert not (tmp_path / "ran").exists()
