"""representations.every_n_steps and ``lmtune drift``: the saved hidden states equal a direct
computation (transformers for the model before training, fairseq2's layers one example at a time
for a checkpoint), they leave training's losses as they were, and drift reads them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import assert_user_error, run_lmtune_in_process
from lora_runs import BASE_CONFIG, losses, train, write_base

pytestmark = pytest.mark.slow  # trains runs with saved representations

EVERY = 3
K = 6
# Dropout makes the losses depend on the RNG draws and on train mode: a probe that drew random
# numbers or left the model in eval mode would change them.
MODEL = "model=drift_base"
REPS = [MODEL, "valid_dataset=tiny_gsm8k", "eval_task=none", f"representations.every_n_steps={EVERY}", f"representations.num_examples={K}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(cards, a run with representations, the same run without them)."""
    root = tmp_path_factory.mktemp("drift")
    cards = write_base(root)
    card = {"name": "drift_base", "base": "tiny_llama", "model_config": {**BASE_CONFIG, "dropout_p": 0.1}, "checkpoint": str(root / "base_hf")}
    (cards / "drift_base.yaml").write_text(yaml.safe_dump(card))
    with_reps = train(root / "with", cards, *REPS)
    without = train(root / "without", cards, MODEL, "valid_dataset=tiny_gsm8k", "eval_task=none")
    return cards, with_reps, without


def _first_examples(out: Path, k: int) -> list[list[int]]:
    """The token ids of the first k validation examples, from the encoded cache the run used (the
    test's own cache directory, or the module's for a module-scoped run)."""
    from lmtune.data.encoded_examples import EncodedExamples

    roots = dict.fromkeys(Path(os.environ[v]) for v in ("LMTUNE_CACHE_DIR", "LMTUNE_MODULE_CACHE_DIR"))
    (cache, *_) = [c for root in roots for c in (root / "encoded").glob("test-*")]
    examples = EncodedExamples.load(cache)
    kept = examples.trainable(128, "test")[:k]
    return [examples.item(int(i))["tokens"].tolist() for i in kept]


def _transformers_pooled(hf_dir: Path, token_lists: list[list[int]]) -> np.ndarray:
    """(layers, examples, dim): the embedding output and each decoder layer's output (before the
    final norm), averaged over the example's tokens, one example at a time in transformers."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    captured: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: object, output: object) -> None:
        captured.append((output[0] if isinstance(output, tuple) else output)[0].mean(dim=0))  # type: ignore[index]

    modules = [model.model.embed_tokens, *model.model.layers]
    handles = [m.register_forward_hook(keep) for m in modules]
    rows = []
    with torch.no_grad():
        for ids in token_lists:
            captured.clear()
            model(torch.tensor([ids]))
            rows.append(torch.stack(captured))
    for h in handles:
        h.remove()
    return torch.stack(rows, dim=1).numpy()


def _fairseq2_pooled(checkpoints: Path, step: int, token_lists: list[list[int]]) -> np.ndarray:
    """The same from a checkpoint, with torch forward hooks on fairseq2's frontend and layers,
    one unpacked example at a time."""
    from fairseq2.nn import BatchLayout

    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.loading import load_model

    model = load_model(resolve_model(CardStore(), f"checkpoint_step_{step}", checkpoints))
    captured: list[torch.Tensor] = []
    handles = [model.decoder_frontend.register_forward_hook(lambda m, a, out: captured.append(out[0][0].mean(dim=0)))]
    handles += [layer.register_forward_hook(lambda m, a, out: captured.append(out[0].mean(dim=0))) for layer in model.decoder.layers]
    rows = []
    with torch.no_grad():
        for ids in token_lists:
            captured.clear()
            seqs = torch.tensor([ids])
            model(seqs, BatchLayout.of(seqs))
            rows.append(torch.stack(captured))
    for h in handles:
        h.remove()
    return torch.stack(rows, dim=1).numpy()


def _assert_float16_of(saved: np.ndarray, reference: np.ndarray) -> None:
    assert saved.dtype == np.float16
    # float16 keeps 11 significant bits (relative rounding 2^-11); the two implementations differ by ~1e-6.
    np.testing.assert_allclose(saved.astype(np.float32), reference, rtol=1.5e-3, atol=1e-4)


def test_saved_files_have_the_stated_shapes_and_step_0_is_the_untrained_model(runs: tuple[Path, Path, Path]) -> None:
    _, out, _ = runs
    rep_dir = out / "representations"
    index = json.loads((rep_dir / "index.json").read_text())
    layers = BASE_CONFIG["num_layers"] + 1  # type: ignore[operator]
    assert index["steps"] == [0, 3, 6]
    assert index["layers"] == list(range(layers))
    assert index["num_examples"] == K
    for step in (0, 3, 6):
        saved = np.load(rep_dir / f"step_{step}.npy", mmap_mode="r")
        assert saved.shape == (layers, K, BASE_CONFIG["model_dim"]) and saved.dtype == np.float16
    tokens = _first_examples(out, K)
    assert len({len(t) for t in tokens}) > 1  # examples of different lengths share the packed batch
    step0 = np.load(rep_dir / "step_0.npy")
    _assert_float16_of(step0, _transformers_pooled(out.parent / "base_hf", tokens))
    # Step 3 is the model after its 3rd update, as the checkpoint of step 3 holds it.
    step3 = np.load(rep_dir / "step_3.npy")
    _assert_float16_of(step3, _fairseq2_pooled(out / "checkpoints", 3, tokens))
    assert np.abs(step3.astype(np.float32) - step0.astype(np.float32)).max() > 1e-2  # training moved them


def test_representations_leave_the_training_losses_unchanged(runs: tuple[Path, Path, Path]) -> None:
    _, with_reps, without = runs
    assert not (without / "representations").exists()
    assert losses(with_reps) == losses(without)
    assert len(losses(with_reps)) == 6


def test_drift_prints_cka_and_cosine_per_layer_and_writes_json_and_plot(runs: tuple[Path, Path, Path]) -> None:
    _, out, _ = runs
    result = run_lmtune_in_process("drift", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    tables = result.stdout.split("mean cosine similarity against step 0")
    assert tables[0].startswith("linear CKA against step 0")
    for table in tables:
        rows = [line.split() for line in table.splitlines() if line[:1].isdigit()]
        assert [r[0] for r in rows] == ["0", "1", "2"]
        for r in rows:
            values = [float(v) for v in r[1:]]
            assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values), r
            assert values[0] == 1.0  # step 0 against itself
    data = json.loads((out / "drift.json").read_text())
    assert data["steps"] == [0, 3, 6] and data["layers"] == [0, 1, 2]
    for row in data["linear_cka"] + data["mean_cosine_similarity"]:
        assert row[0] == pytest.approx(1.0, abs=1e-9)
    assert min(data["linear_cka"][2]) < 0.999  # the last layer drifted
    assert (out / "plots/drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_keeps_step_0_and_adds_later_steps(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import shutil

    cards, out, _ = runs
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    step0 = (resumed / "representations/step_0.npy").read_bytes()
    train(resumed, cards, *REPS, "max_num_steps=9")
    assert (resumed / "representations/step_0.npy").read_bytes() == step0  # not recomputed from the step-6 weights
    assert json.loads((resumed / "representations/index.json").read_text())["steps"] == [0, 3, 6, 9]


def test_representations_without_a_validation_split_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_lmtune_in_process("instruction_finetune", str(out), "--config-file", "tiny_gsm8k", "--config", "representations.every_n_steps=5")
    assert_user_error(result, "representations.every_n_steps needs a validation split")
    assert not out.exists()


def test_bad_layers_are_refused(tmp_path: Path) -> None:
    result = run_lmtune_in_process("instruction_finetune", str(tmp_path / "out"), "--config-file", "tiny_gsm8k", "--config", *REPS[1:], "representations.layers=[0,3]")
    assert_user_error(result, "representations.layers=[0, 3]", "from 0 (the embedding output) to 2")


def test_drift_without_saved_representations_is_one_sentence(tmp_path: Path) -> None:
    assert_user_error(run_lmtune_in_process("drift", str(tmp_path)), "holds no saved representations")


def test_more_examples_than_the_split_has_uses_all_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from lmtune.data.encoded_examples import EncodedExamples
    from lmtune.data.encoding import Example
    from lmtune.training.representations import choose_examples

    examples = EncodedExamples.from_examples([Example(tokens=[1, 2, 3], target_mask=[False, True, True]), Example(tokens=[1] * 9, target_mask=[True] * 9), Example(tokens=[4, 5], target_mask=[False, True])])
    assert choose_examples(examples, 8, 2, "valid.jsonl").tolist() == [0, 2]  # the first kept ones (the 9-token one is too long)
    assert capsys.readouterr().err == ""
    assert choose_examples(examples, 8, 5, "valid.jsonl").tolist() == [0, 2]
    assert capsys.readouterr().err.splitlines() == ["lmtune: representations.num_examples=5, but valid.jsonl has 2 usable examples; saving representations of all 2."]


def test_two_ranks_under_ddp_save_what_one_rank_computes(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Rank 0 runs the examples alone while rank 1 waits: step 0 equals the one-process run's, and step 3
    the two-process run's own checkpoint of step 3."""
    import os
    import subprocess
    import sys

    from lora_runs import RUN_ARGS

    cards, single, _ = runs
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", LMTUNE_USER_ASSET_DIR=str(cards))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", str(Path(sys.executable).with_name("lmtune")), "instruction_finetune", str(out), *RUN_ARGS, *REPS]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "representations/step_0.npy").read_bytes() == (single / "representations/step_0.npy").read_bytes()
    _assert_float16_of(np.load(out / "representations/step_3.npy"), _fairseq2_pooled(out / "checkpoints", 3, _first_examples(out, K)))
