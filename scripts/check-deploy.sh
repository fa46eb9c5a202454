#!/usr/bin/env bash
# Proves that scripts/deploy.sh gives the same addresses on two fresh Anvils with different histories (the
# second one mines unrelated transactions from the deployer first, so nonces and block numbers differ), that a
# re-run deploys nothing and keeps start_block, and that the contracts work (arbiter wired, validators set).
# Deployments go to a temporary copy of deployments/, restored afterwards. Exit 0 = all checks passed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$ROOT/.tools/bin:$PATH"
KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 # Anvil's first dev key
VALIDATOR=0x70997970C51812dc3A010C7d01b50e0d17dc79C8

pids=()
backup=$(mktemp -d)
[ -d "$ROOT/deployments" ] && cp -a "$ROOT/deployments/." "$backup/"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$ROOT/deployments"; mkdir -p "$ROOT/deployments"; cp -a "$backup/." "$ROOT/deployments/"; rm -rf "$backup"
}
trap cleanup EXIT

start_anvil() { # port
  anvil --port "$1" --silent &
  pids+=($!)
  for _ in $(seq 100); do cast chain-id --rpc-url "http://127.0.0.1:$1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "anvil on $1 did not start" >&2; exit 1
}
deploy() { # port -> prints the JSON
  VALIDATORS=$VALIDATOR "$ROOT/scripts/deploy.sh" --rpc-url "http://127.0.0.1:$1" --private-key "$KEY" >/dev/null 2>&1 \
    || { echo "deploy on $1 failed" >&2; VALIDATORS=$VALIDATOR "$ROOT/scripts/deploy.sh" --rpc-url "http://127.0.0.1:$1" --private-key "$KEY" >&2; exit 1; }
  cat "$ROOT/deployments/31337.json"
}
addresses() { grep -E '"(adapter_registry|node_registry|job_market|arbiter)"'; }
fail() { echo "check-deploy: FAIL: $*" >&2; exit 1; }

p1=$((30000 + RANDOM % 10000)); p2=$((p1 + 1))
start_anvil "$p1"; start_anvil "$p2"
# Different history on the second chain: five unrelated transactions from the deployer.
for i in 1 2 3 4 5; do
  cast send --rpc-url "http://127.0.0.1:$p2" --private-key "$KEY" --value 1 0x000000000000000000000000000000000000dEaD >/dev/null
done

j1=$(deploy "$p1")
j2=$(deploy "$p2")
[ "$(echo "$j1" | addresses)" = "$(echo "$j2" | addresses)" ] || fail "addresses differ: $j1 vs $j2"
sb2=$(echo "$j2" | sed -n 's/.*"start_block": \([0-9]*\).*/\1/p')
[ "$sb2" = 5 ] || fail "start_block on the second chain is $sb2, want 5 (the block before the first deployment tx)"
python3 - "$j1" <<'PY' || fail "JSON keys"
import json, sys
d = json.loads(sys.argv[1])
assert sorted(d) == sorted(["chain_id", "adapter_registry", "node_registry", "job_market", "arbiter", "start_block"]), d
assert isinstance(d["chain_id"], int) and isinstance(d["start_block"], int)
PY

# Re-run on the second chain: nothing sent, same JSON (start_block kept).
n_before=$(cast nonce --rpc-url "http://127.0.0.1:$p2" "$(cast wallet address "$KEY")")
j2b=$(deploy "$p2")
n_after=$(cast nonce --rpc-url "http://127.0.0.1:$p2" "$(cast wallet address "$KEY")")
[ "$n_before" = "$n_after" ] || fail "a re-run sent transactions ($n_before -> $n_after)"
[ "$j2b" = "$j2" ] || fail "a re-run changed the JSON"

market=$(echo "$j1" | sed -n 's/.*"job_market": "\(0x[0-9a-fA-F]*\)".*/\1/p')
arbiter=$(echo "$j1" | sed -n 's/.*"arbiter": "\(0x[0-9a-fA-F]*\)".*/\1/p')
registry=$(echo "$j1" | sed -n 's/.*"adapter_registry": "\(0x[0-9a-fA-F]*\)".*/\1/p')
for p in "$p1" "$p2"; do
  got=$(cast call --rpc-url "http://127.0.0.1:$p" "$market" "arbiter()(address)")
  [ "${got,,}" = "${arbiter,,}" ] || fail "arbiter not wired on $p"
  v=$(cast call --rpc-url "http://127.0.0.1:$p" "$registry" "isValidator(address)(bool)" "$VALIDATOR")
  [ "$v" = true ] || fail "validator not set on $p"
done
echo "check-deploy: OK: same addresses on two chains with different histories; re-run sends nothing"
echo "$j1" | addresses
