"""vLLM serves a LoRA run: its merged export, and its PEFT adapter over the exported base.

The reference is `lmtune generate` on the LoRA checkpoint itself (greedy). vLLM runs in its
own virtual environment (see tests/test_vllm.py), offline, on the prompts' token ids.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, run_lmtune_in_process
from lora_runs import LORA_ARGS, train, write_base
from test_vllm import VLLM_PYTHON, vllm_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"no vLLM environment at {VLLM_PYTHON}: set LMTUNE_VLLM_PYTHON")]  # slow: trains, exports and starts vLLM

MAX_TOKENS = 24
SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
mode, model_dir, adapter, prompts, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
extra = dict(enable_lora=True, max_lora_rank=16, max_loras=1) if mode == "adapter" else {}
llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, distributed_executor_backend="uni", max_model_len=256, seed=0, **extra)
request = LoRARequest("lmtune", 1, adapter) if mode == "adapter" else None
outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=max_tokens), lora_request=request)
print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from lmtune.catalog.specs import model_from_checkpoint_dir
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import read_records
    from lmtune.models.loading import load_tokenizer

    root = tmp_path_factory.mktemp("lora_vllm")
    cards = write_base(root)
    out = train(root / "out", cards, *LORA_ARGS)
    env = {"LMTUNE_USER_ASSET_DIR": str(cards)}
    for flags in ([], ["--adapter"]):
        r = run_lmtune_in_process("write_hf_config", str(out), *flags, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    test_file = REPO / "assets/tiny/gsm8k/test/test.jsonl"
    prompts_file = root / "prompts.jsonl"
    prompts_file.write_text("".join(line + "\n" for line in test_file.read_text().splitlines()[:4]))
    r = run_lmtune_in_process("generate", str(root / "gen"), "--config", f"checkpoint_dir={out}/checkpoints", "model=last_checkpoint",
                              f"dataset={prompts_file}", f"generator_config.max_gen_len={MAX_TOKENS}", "score=none", "dtype=float32", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    spec = model_from_checkpoint_dir(out / "checkpoints", None, "test")
    encoder = ExampleEncoder(load_tokenizer(spec.tokenizer), spec.tokenizer.hf_dir)  # type: ignore[arg-type]
    prompts = [encoder.encode_prompt(rec) for rec in read_records(prompts_file, need_target=False)]
    rows = [json.loads(line) for line in (root / "gen/generations.jsonl").read_text().splitlines()]
    return {"root": root, "step": out / "checkpoints/step_6", "prompts": prompts, "token_ids": [row["token_ids"] for row in rows]}


def _vllm(reference: dict[str, object], mode: str, model_dir: Path, adapter: Path | str = "") -> list[list[int]]:
    root: Path = reference["root"]  # type: ignore[assignment]
    script = root / "lora_vllm.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [str(VLLM_PYTHON), str(script), mode, str(model_dir), str(adapter), json.dumps(reference["prompts"]), str(MAX_TOKENS)],
        capture_output=True, text=True, env=vllm_env(root), timeout=600, cwd=root,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])  # type: ignore[no-any-return]


def test_vllm_serves_the_merged_export_with_lmtunes_greedy_tokens(reference: dict[str, object]) -> None:
    step: Path = reference["step"]  # type: ignore[assignment]
    assert _vllm(reference, "merged", step / "hf") == reference["token_ids"]


def test_vllm_serves_the_peft_adapter_over_its_base_with_lmtunes_greedy_tokens(reference: dict[str, object]) -> None:
    step: Path = reference["step"]  # type: ignore[assignment]
    assert _vllm(reference, "adapter", step / "hf_adapter_base", step / "hf_adapter") == reference["token_ids"]
    # and the adapter is what makes them: the base alone generates other tokens.
    assert _vllm(reference, "merged", step / "hf_adapter_base") != reference["token_ids"]
