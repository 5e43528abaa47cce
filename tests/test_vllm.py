"""vLLM serves lmtune's Hugging Face export and generates what `lmtune generate` generates.

The tiny default is fine-tuned briefly with export_hf=last, `lmtune generate` gives
the reference greedy ids from lmtune's own model, and vLLM (in its own virtual
environment, see .ci/setup_vllm.sh) generates from the export: offline `LLM(...)`
and the OpenAI-compatible server on 127.0.0.1. Prompt ids (vLLM tokenizing text and
rendering the chat template itself) and generated ids must be identical. Comparing
vLLM with transformers on the same files would not do: a faithfully-read but wrong
export would pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, free_port, run_lmtune_in_process

VLLM_PYTHON = Path(os.environ.get("LMTUNE_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not VLLM_PYTHON.is_file(),
    reason=f"no vLLM environment at {VLLM_PYTHON}: build it with .ci/setup_vllm.sh and set LMTUNE_VLLM_PYTHON to its bin/python",
)]  # slow: trains, exports and starts vLLM

MAX_TOKENS = 40
MAX_MODEL_LEN = 256
STARTUP_TIMEOUT_S = 240
CHAT = [{"role": "user", "content": "Mia has 12 pens. Mia buys 5 more. How many pens does Mia have?"}]

OFFLINE_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
hf_dir, texts, chat, max_tokens, max_len = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = LLM(model=hf_dir, dtype="float32", enforce_eager=True, distributed_executor_backend="uni", max_model_len=max_len, seed=0)
params = SamplingParams(temperature=0, max_tokens=max_tokens)
outputs = llm.generate(texts, params) + llm.chat([chat], params)
print("RESULT " + json.dumps([{"prompt_token_ids": list(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids)} for o in outputs]))
"""


def vllm_env(tmp: Path) -> dict[str, str]:
    """Offline, loopback only, caches inside the test's directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    (tmp / "tmp").mkdir(exist_ok=True)
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(tmp / "vllm_cache"), "HF_HOME": str(tmp / "hf_home"), "TMPDIR": str(tmp / "tmp"),
    })
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The export of a briefly fine-tuned tiny model, and lmtune's own prompts and greedy ids."""
    from lmtune.catalog.specs import model_from_checkpoint_dir
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.records import read_records
    from lmtune.models.loading import load_tokenizer

    tmp = tmp_path_factory.mktemp("vllm")
    run = tmp / "run"
    result = run_lmtune_in_process(
        "instruction_finetune", str(run), "--config-file", "tiny_gsm8k", "--config", "max_num_steps=40",
        "checkpoint_every_n_steps=40", "max_num_tokens=1024", "tensorboard=false", "export_hf=last",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hf_dir = run / "checkpoints" / "step_40" / "hf"
    assert (hf_dir / "config.json").is_file(), "export_hf=last did not export the final checkpoint"

    test_file = REPO / "assets" / "tiny" / "gsm8k" / "test" / "test.jsonl"
    lines = test_file.read_text().splitlines()[:4]
    texts = [json.loads(line)["src"] for line in lines]
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(line + "\n" for line in lines) + json.dumps({"messages": CHAT}) + "\n")
    result = run_lmtune_in_process(
        "generate", str(tmp / "gen"), "--config", f"checkpoint_dir={run / 'checkpoints'}", "model=last_checkpoint",
        f"dataset={prompts}", f"generator_config.max_gen_len={MAX_TOKENS}", "score=none",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    generations = [json.loads(line) for line in (tmp / "gen" / "generations.jsonl").read_text().splitlines()]

    spec = model_from_checkpoint_dir(run / "checkpoints", None, "test")
    encoder = ExampleEncoder(load_tokenizer(spec.tokenizer), spec.tokenizer.hf_dir)  # type: ignore[arg-type]
    prompt_ids = [encoder.encode_prompt(r) for r in read_records(prompts, need_target=False)]
    assert len(prompt_ids) == len(generations) == 5 and all(g["token_ids"] for g in generations)
    return {"tmp": tmp, "hf_dir": hf_dir, "texts": texts, "prompt_ids": prompt_ids, "token_ids": [g["token_ids"] for g in generations]}


def test_offline_llm_generates_lmtune_greedy_ids(reference: dict[str, object]) -> None:
    tmp, hf_dir = reference["tmp"], reference["hf_dir"]
    script = tmp / "offline.py"  # type: ignore[operator]
    script.write_text(OFFLINE_SCRIPT)
    result = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(hf_dir), json.dumps(reference["texts"]), json.dumps(CHAT), str(MAX_TOKENS), str(MAX_MODEL_LEN)],
        capture_output=True, text=True, env=vllm_env(tmp), timeout=600, cwd=tmp,  # type: ignore[arg-type]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    outputs = json.loads(lines[-1][len("RESULT "):])
    # vLLM tokenized the texts and rendered the chat itself: the prompts must be lmtune's.
    assert [o["prompt_token_ids"] for o in outputs] == reference["prompt_ids"]
    assert [o["token_ids"] for o in outputs] == reference["token_ids"]


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_openai_server_completion_matches_lmtune(reference: dict[str, object]) -> None:
    tmp, hf_dir = reference["tmp"], reference["hf_dir"]
    port = free_port()
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
        "--enforce-eager", "--distributed-executor-backend", "uni",
    ]
    log = (tmp / "server.log").open("w")  # type: ignore[operator]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(tmp), cwd=tmp)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert server.poll() is None, f"the vLLM server exited with {server.returncode}: " + (tmp / "server.log").read_text()[-3000:]  # type: ignore[operator]
            assert time.monotonic() < deadline, f"the vLLM server did not answer /health within {STARTUP_TIMEOUT_S} s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        answer = _post(f"http://127.0.0.1:{port}/v1/completions", {
            "model": "tiny", "prompt": reference["texts"][0], "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True,  # type: ignore[index]
        })
        choice = answer["choices"][0]  # type: ignore[index]
        assert choice["prompt_token_ids"] == reference["prompt_ids"][0]  # type: ignore[index]
        assert choice["token_ids"] == reference["token_ids"][0]  # type: ignore[index]
    finally:
        server.send_signal(signal.SIGTERM)  # by its PID; it stops its engine process itself
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
