#!/usr/bin/env bash
# Deploy OpenLoRA protocol v2 at deterministic CREATE2 addresses (contracts/script/Deploy.s.sol) and write
# deployments/<chainId>.json. Parameters come from environment variables (see docs/deploy.md); every other
# argument goes to `forge script` unchanged, so any forge wallet and verification flag works:
#
#   scripts/deploy.sh --rpc-url http://127.0.0.1:8545 --private-key 0x...
#   scripts/deploy.sh --rpc-url "$L2_RPC" --account deployer --verify --etherscan-api-key "$KEY"
#
# Re-running against a chain where the contracts exist sends nothing and rewrites the JSON. After the
# broadcast it checks that every address in the JSON has code.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$ROOT/.tools/bin:$PATH"

if [ $# -eq 0 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi

rpc=""
prev=""
for arg in "$@"; do
  case "$arg" in
    --rpc-url=*) rpc="${arg#--rpc-url=}" ;;
  esac
  if [ "$prev" = "--rpc-url" ] || [ "$prev" = "-f" ] || [ "$prev" = "--fork-url" ]; then rpc="$arg"; fi
  prev="$arg"
done

mkdir -p "$ROOT/deployments"
cd "$ROOT/contracts"
forge script script/Deploy.s.sol:Deploy --broadcast "$@"

if [ -n "$rpc" ]; then
  chain=$(cast chain-id --rpc-url "$rpc")
  json="$ROOT/deployments/$chain.json"
  [ -f "$json" ] || { echo "deploy.sh: $json was not written" >&2; exit 1; }
  for key in adapter_registry node_registry job_market arbiter; do
    addr=$(sed -n "s/.*\"$key\": \"\(0x[0-9a-fA-F]*\)\".*/\1/p" "$json")
    code=$(cast code --rpc-url "$rpc" "$addr")
    if [ "$code" = "0x" ] || [ -z "$code" ]; then
      echo "deploy.sh: no code at $key $addr after the broadcast (did a transaction fail?)" >&2
      exit 1
    fi
  done
  echo "deploy.sh: $json: every address has code"
fi
