"""vLLM serves the OLMo 2, Mistral and Qwen2 exports, and the transformers family's export of a
GPT-NeoX, with lmtune's greedy tokens.

Each family is the tiny random model transformers writes (``transformers_dirs``), named by a
card that gives only its directory, exported by lmtune (Olmo2ForCausalLM, MistralForCausalLM
with its sliding_window). The reference ids come from lmtune's own model and generator, not
from transformers: a faithfully read but wrong export would match transformers on its files.
vLLM runs in its own virtual environment (see tests/test_vllm.py).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from test_vllm import VLLM_PYTHON, vllm_env
from transformers_dirs import write_transformers_dir

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"no vLLM environment at {VLLM_PYTHON}")]

MAX_TOKENS = 24
SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
hf_dir, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = LLM(model=hf_dir, dtype="float32", enforce_eager=True, distributed_executor_backend="uni", max_model_len=128, seed=0)
outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=max_tokens))
print("RESULT " + json.dumps([{"arch": llm.llm_engine.model_config.architectures, "token_ids": list(o.outputs[0].token_ids)} for o in outputs]))
"""


def vllm_greedy(tmp_path: Path, out: Path, prompts: list[list[int]]) -> list[dict]:
    """vLLM's greedy outputs (architecture, token ids) for ``prompts`` on the HF directory ``out``, run in .venv-vllm."""
    script = tmp_path / "vllm_script.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(out), json.dumps(prompts), str(MAX_TOKENS)],
        capture_output=True, text=True, env=vllm_env(tmp_path), timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize(("model_type", "arch"), [("olmo2", "Olmo2ForCausalLM"), ("mistral", "MistralForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_vllm_generates_lmtunes_greedy_tokens(model_type: str, arch: str, tmp_path: Path, isolated_user_cards: Path) -> None:
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.export.hf_dir import export_hf, resolve_export
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions

    directory = write_transformers_dir(model_type, tmp_path / "hf", seed=9, hidden_size=128)  # vLLM's CPU attention needs head_dim >= 32
    (isolated_user_cards / "my_model.yaml").write_text(yaml.safe_dump({"name": "my_model", "checkpoint": str(directory)}))
    spec, tok, _ = resolve_export("my_model")
    out = export_hf(spec, tok, tmp_path / "export", log=lambda m: None)
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]

    model_spec = resolve_model(CardStore(), "my_model", None)
    tokenizer = load_tokenizer(model_spec.tokenizer)  # type: ignore[arg-type]
    rng = random.Random(5)
    prompts = [[rng.randint(0, 399) for _ in range(n)] for n in (6, 15, 11)]
    stops = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    stops = stops if isinstance(stops, list) else [stops]
    expected = [c.token_ids for c in Generator(load_any_model(model_spec), tokenizer, GeneratorOptions(max_gen_len=MAX_TOKENS), stop_ids=stops)(prompts)]

    outputs = vllm_greedy(tmp_path, out, prompts)
    assert outputs[0]["arch"] == [arch]
    assert [o["token_ids"] for o in outputs] == expected
    assert len({tuple(e) for e in expected}) > 1


def test_vllm_serves_a_transformers_family_export_with_lmtunes_greedy_tokens(tmp_path: Path, isolated_user_cards: Path) -> None:
    """GPT-NeoX, which lmtune builds through transformers (``model_family: transformers``) and exports with
    ``save_pretrained``: vLLM has its own GPTNeoXForCausalLM, so it serves the export natively."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.export.hf_dir import export_hf, resolve_export
    from lmtune.generate.generator import Generator
    from lmtune.models.loading import load_tokenizer
    from lmtune.options.generate import GeneratorOptions
    from tiny_builders import write_hf_gpt2_tokenizer

    vocab = 300  # write_hf_gpt2_tokenizer's; <|endoftext|> is the last id
    directory = write_hf_gpt2_tokenizer(tmp_path / "neox", vocab_size=vocab)
    config = GPTNeoXConfig(
        vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, max_position_embeddings=256,
        rotary_pct=0.5, eos_token_id=vocab - 1, bos_token_id=vocab - 1,
    )  # fmt: skip  # head_dim 32: vLLM's CPU attention needs 32 or more
    torch.manual_seed(9)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # logits of a few units, so that greedy choices are not near-ties
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and not name.endswith("bias") else 0.0))  # layer norms' scales about 1
    hf.save_pretrained(directory)
    (isolated_user_cards / "my_neox.yaml").write_text(yaml.safe_dump({"name": "my_neox", "checkpoint": str(directory)}))
    spec, tok, _ = resolve_export("my_neox")
    assert spec.family == "transformers"
    out = export_hf(spec, tok, tmp_path / "export", log=lambda m: None)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPTNeoXForCausalLM"]

    model_spec = resolve_model(CardStore(), "my_neox", None)
    rng = random.Random(5)
    prompts = [[rng.randint(0, vocab - 2) for _ in range(n)] for n in (6, 15, 11)]
    options = GeneratorOptions(max_gen_len=MAX_TOKENS)
    expected = [c.token_ids for c in Generator(load_any_model(model_spec), load_tokenizer(model_spec.tokenizer), options, stop_ids=[vocab - 1])(prompts)]  # type: ignore[arg-type]

    outputs = vllm_greedy(tmp_path, out, prompts)
    assert outputs[0]["arch"] == ["GPTNeoXForCausalLM"]
    assert [o["token_ids"] for o in outputs] == expected
    assert len({tuple(e) for e in expected}) > 1
