#!/usr/bin/env bash
# One command that proves the engine's GPU path on a CUDA machine, in under 8 minutes on one GPU:
#   1. installs what it needs: a venv (.venv-gpu, or $GPU_CHECK_VENV) with torch's CUDA build from PyPI and
#      the rest of requirements/cuda.txt (hashed locks), the project itself; flash-attn only when
#      GPU_CHECK_FLASH_ATTN=1 (it builds from source with nvcc: long) or when it is already installed;
#   2. runs the CUDA tests (engine = PEFT within bf16 tolerance on mixed batches, swaps on the side
#      stream, memory accounting, no uploads per decode step) and the CPU-shown GPU-path tests;
#   3. measures a rank-16 Llama-2-7B-shaped swap-in and runs scripts/bench/engine.py --device cuda on a
#      1.06 B-parameter Llama built from a config (random weights, no hub download);
#   4. prints ONE JSON object on stdout (progress on stderr); exit 0 when tests and bench passed.
#
#   bash scripts/gpu_check.sh             # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run   # CPU, tiny model, the project's .venv: the same steps (CI)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[gpu_check] $*" >&2; }

if [ "${1:-}" = "--dry-run" ]; then
  exec "${PYTHON:-$ROOT/.venv/bin/python}" scripts/gpu_check.py --dry-run
fi

has_cuda_torch() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
PY="${PYTHON:-}"
if [ -z "$PY" ] && [ -x "$ROOT/.venv/bin/python" ] && has_cuda_torch "$ROOT/.venv/bin/python"; then
  PY="$ROOT/.venv/bin/python"  # the project's venv already has torch's CUDA build (scripts/setup.sh on a GPU host)
fi
if [ -z "$PY" ]; then
  VENV="${GPU_CHECK_VENV:-$ROOT/.venv-gpu}"
  # Offline machine: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels (pip reads both from the environment).
  if ! has_cuda_torch "$VENV/bin/python"; then
    log "creating $VENV with torch's CUDA build (requirements/cuda.txt)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q --require-hashes -r requirements/cuda.txt >&2
    "$VENV/bin/pip" install -q --no-deps -e . >&2
  fi
  PY="$VENV/bin/python"
fi
if [ "${GPU_CHECK_FLASH_ATTN:-0}" = "1" ] && ! "$PY" -c 'import flash_attn' 2>/dev/null; then
  log "building flash-attn (needs nvcc; GPU_CHECK_FLASH_ATTN=0 skips it)"
  "$PY" -m pip install -q packaging ninja >&2
  MAX_JOBS="${MAX_JOBS:-8}" "$PY" -m pip install -q --no-build-isolation flash-attn >&2 \
    || log "flash-attn did not build: the check runs with SDPA (mask-free) attention"
fi
exec "$PY" scripts/gpu_check.py
