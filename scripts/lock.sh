#!/usr/bin/env bash
# Refresh the locked dependency sets (exact versions + sha256 of every file) from pyproject.toml:
#   requirements/cpu.txt   torch's CPU build (2.13.0+cpu) and everything else, for hosts without CUDA
#   requirements/cuda.txt  torch from PyPI (its Linux wheels are the CUDA builds, with the nvidia-* wheels)
# Both: Python 3.11, Linux x86_64 (manylinux_2_28), the [dev] extra included. scripts/setup.sh installs
# one of them with `pip install --require-hashes`. Versions already in a lock are kept unless a
# requirement changed; pass --upgrade to move everything to the newest allowed versions.
# Needs uv (in the dev extra). Not locked: the [cuda] extra (flash-attn ships only as an sdist that needs
# nvcc even to report its metadata), the [vllm] extra (it pins its own torch); see docs/operators.md; and
# the [verify] extra (toploc: setup.sh builds it from the sdist in requirements/toploc.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-.venv/bin/uv}"
TORCH_CPU="${TORCH_CPU:-2.13.0+cpu}"
# Where the CPU build of torch comes from: a local wheel folder if this machine has one, else the index
# given in TORCH_CPU_INDEX (PyTorch's CPU wheel index). The package index is uv's default, or UV_INDEX_URL.
if compgen -G "/opt/wheels/torch-${TORCH_CPU}-*.whl" >/dev/null; then
  cpu_source=(--find-links /opt/wheels)
elif [ -n "${TORCH_CPU_INDEX:-}" ]; then
  cpu_source=(--extra-index-url "$TORCH_CPU_INDEX")
else
  echo "no torch ${TORCH_CPU} wheel in /opt/wheels: set TORCH_CPU_INDEX to PyTorch's CPU wheel index" >&2
  exit 2
fi
common=(pyproject.toml --extra dev --generate-hashes --python-version 3.11
        --python-platform x86_64-manylinux_2_28
        --custom-compile-command "scripts/lock.sh" --quiet "$@")
mkdir -p requirements
printf '# written by scripts/lock.sh: the CPU build of torch\ntorch==%s\n' "$TORCH_CPU" > requirements/cpu-constraints.txt
"$UV" pip compile "${common[@]}" "${cpu_source[@]}" --index-strategy unsafe-best-match \
  --constraint requirements/cpu-constraints.txt -o requirements/cpu.txt
"$UV" pip compile "${common[@]}" --constraint <(printf 'torch==%s\n' "${TORCH_CPU%+*}") -o requirements/cuda.txt
echo "locked: requirements/cpu.txt ($(grep -c '==' requirements/cpu.txt) packages)," \
  "requirements/cuda.txt ($(grep -c '==' requirements/cuda.txt) packages)"
