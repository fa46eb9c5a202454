#!/usr/bin/env bash
# One-shot, idempotent set-up: Python venv, Foundry + solc from npm, Debian build deps.
# Every step is skipped when its stamp says it already ran with the same inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"
mkdir -p "$TOOLS"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
# pip on these machines warns about configured local indexes that hold no such package: noise, not errors.
quiet_pip() { "$@" 2> >(grep -v -e "is ignored: it is neither" -e "BuildBackendWarning" >&2); }

# --- Debian packages: GMP headers (libp2p's fastecdsa builds against them), Chromium (status-page test),
#     Prometheus (tests/test_grafana_dashboard.py runs the binary itself; on a host with systemd the
#     package also enables prometheus.service on :9090, which the test does not use) ---
need_apt=()
[ -e /usr/include/gmp.h ] || [ -e /usr/include/x86_64-linux-gnu/gmp.h ] || need_apt+=(libgmp-dev)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "missing Debian packages: ${need_apt[*]} (run: sudo apt-get install ${need_apt[*]})"
  fi
fi

# --- Foundry (anvil, forge, cast), solc and OpenZeppelin from npm ---
NPM_STAMP="$TOOLS/.npm-stamp"
NPM_SPEC="$(cat scripts/tools-package.json)"
if [ ! -f "$NPM_STAMP" ] || [ "$(cat "$NPM_STAMP")" != "$NPM_SPEC" ]; then
  log "npm install Foundry binaries, solc and OpenZeppelin into .tools/"
  cp scripts/tools-package.json "$TOOLS/package.json"
  (cd "$TOOLS" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  printf '%s' "$NPM_SPEC" > "$NPM_STAMP"
fi
mkdir -p "$TOOLS/bin"
for b in anvil forge cast; do
  src="$TOOLS/node_modules/@foundry-rs/$b-linux-amd64/bin/$b"
  chmod +x "$src"
  ln -sf "$src" "$TOOLS/bin/$b"
done
ln -sf "$ROOT/scripts/solc-wrapper" "$TOOLS/bin/solc"

# --- Python venv, from the locked dependency set (scripts/lock.sh refreshes it) ---
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  LOCK=requirements/cuda.txt   # torch's CUDA build from PyPI, with the nvidia-* wheels
else
  LOCK=requirements/cpu.txt    # torch==2.13.0+cpu
fi
PY_STAMP="$VENV/.stamp"
PY_SPEC="$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -c1-16)"
if [ ! -f "$PY_STAMP" ] || [ "$(cat "$PY_STAMP")" != "$PY_SPEC" ]; then
  [ -x "$VENV/bin/python" ] || { log "creating .venv"; python3 -m venv "$VENV"; }
  PIP="$VENV/bin/pip"
  quiet_pip "$PIP" install -q --upgrade pip >/dev/null
  log "pip install --require-hashes -r $LOCK (torch, transformers, peft, web3, ... at locked versions)"
  quiet_pip "$PIP" install -q --require-hashes -r "$LOCK"
  log "pip install --no-deps -e . (the project itself)"
  quiet_pip "$PIP" install -q --no-deps -e .
  printf '%s' "$PY_SPEC" > "$PY_STAMP"
fi

# --- toploc (TOPLOC proofs), built once against the installed torch and cached (requirements/toploc.txt) ---
TOPLOC_REQ=requirements/toploc.txt
TOPLOC_VERSION="$(sed -n 's/^toploc==\([^ ]*\).*/\1/p' "$TOPLOC_REQ")"
if ! "$VENV/bin/python" -c "import toploc, sys; sys.exit(toploc.__version__ != '$TOPLOC_VERSION')" 2>/dev/null; then
  TORCH_TAG="$("$VENV/bin/python" -c 'import sys, torch; print(f"torch-{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}")')"
  WHEELS="${OPENLORA_HOME:-$HOME/.cache/openlora}/wheels/toploc-$TOPLOC_VERSION-$TORCH_TAG"
  if ! compgen -G "$WHEELS/toploc-$TOPLOC_VERSION-*.whl" >/dev/null; then
    log "building toploc $TOPLOC_VERSION from its sdist against $TORCH_TAG (once; a few minutes) into $WHEELS"
    mkdir -p "$WHEELS.tmp"
    quiet_pip "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation --no-binary toploc --require-hashes \
      -r "$TOPLOC_REQ" -w "$WHEELS.tmp"
    rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
  fi
  log "pip install toploc from $WHEELS"
  quiet_pip "$VENV/bin/pip" install -q --no-deps --no-index --force-reinstall "$WHEELS"/toploc-"$TOPLOC_VERSION"-*.whl
  "$VENV/bin/python" -c "import toploc" || {
    log "toploc from $WHEELS does not import against this torch: delete that folder and run set-up again"
    exit 1
  }
fi
log "ready: .venv and .tools/bin"
