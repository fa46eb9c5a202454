#!/usr/bin/env bash
# Gas of one job's lifecycle (submitJob + claimJob + submitResult with a 256-byte output) in the steady
# state, i.e. after a first job has already run, so counters and pull balances are non-zero.
#
# Two measurements, printed side by side:
#   1. forge, isolation mode: each call runs as its own transaction (cold storage, 21,000 intrinsic gas and
#      calldata included), from contracts/test/GasLifecycle.t.sol; plus forge's per-function gas table.
#   2. Anvil receipts: deploys the three contracts on a throw-away Anvil, runs two lifecycles with cast, and
#      sums gasUsed of the second one's receipts (what a node and a submitter actually pay).
# Prints one JSON line last: {"forge_isolated_total":..,"anvil_receipts_total":..,"budget":200000,...}.
# Usage: scripts/gas-report.sh [--no-anvil] [--table]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$ROOT/.tools/bin:$PATH"
cd "$ROOT/contracts"

use_anvil=1
table=0
for arg in "$@"; do
  case "$arg" in
    --no-anvil) use_anvil=0 ;;
    --table) table=1 ;;
    *) echo "unknown argument: $arg (use --no-anvil, --table)" >&2; exit 2 ;;
  esac
done

forge build --quiet

# ---------------------------------------------------------------- 1. forge, isolated calls
log=$(forge test --isolate --match-test test_lifecycle_gas_steady_state -vv 2>&1) || {
  echo "$log" >&2; echo "gas lifecycle test failed" >&2; exit 1; }
pick() { echo "$log" | sed -n "s/^ *$1: \([0-9]*\)$/\1/p" | tail -1; }
f_submit=$(pick submitJob); f_claim=$(pick claimJob); f_result=$(pick submitResult)
f_total=$((f_submit + f_claim + f_result))
echo "forge --isolate   submitJob=$f_submit claimJob=$f_claim submitResult=$f_result total=$f_total"
if [ "$table" = 1 ]; then
  forge test --isolate --match-test test_lifecycle_gas_steady_state --gas-report 2>&1 | sed -n '/╭/,$p'
fi

# ---------------------------------------------------------------- 2. Anvil receipts
a_submit=0; a_claim=0; a_result=0; a_total=0
if [ "$use_anvil" = 1 ]; then
  port=$((20000 + RANDOM % 20000))
  rpc="http://127.0.0.1:$port"
  anvil --port "$port" --silent &
  anvil_pid=$!
  trap 'kill "$anvil_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do cast chain-id --rpc-url "$rpc" >/dev/null 2>&1 && break; sleep 0.1; done

  # Anvil's well-known dev keys: deployer/publisher, node operator, node signer, submitter.
  k_deployer=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
  k_operator=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
  k_signer=0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca883dbf6a1e4f9b0a1ba8e
  k_submitter=0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6
  deployer=$(cast wallet address "$k_deployer"); signer=$(cast wallet address "$k_signer")

  py=$(command -v "$ROOT/.venv/bin/python" || command -v python3)
  field() { "$py" -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(int(v,16) if sys.argv[2:] else v)' "$@"; }
  bytecode() { "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytecode"]["object"])' "out/$1.sol/$1.json"; }
  deploy() { # name, constructor signature, args...
    local name=$1 sig=$2; shift 2
    local args=""
    if [ $# -gt 0 ]; then args=$(cast abi-encode "$sig" "$@" | sed 's/^0x//'); fi
    cast send --rpc-url "$rpc" --private-key "$k_deployer" --json --create "$(bytecode "$name")$args" \
      | field contractAddress
  }
  send() { # key, value, to, sig, args... -> gasUsed
    local key=$1 value=$2 to=$3 sig=$4; shift 4
    cast send --rpc-url "$rpc" --private-key "$key" --value "$value" --json "$to" "$sig" "$@" \
      | field gasUsed hex
  }

  adapters=$(deploy AdapterRegistry "constructor()")
  nodes=$(deploy NodeRegistry "constructor(uint256,uint64)" 1000000000000000000 3600)
  market=$(deploy JobMarket "constructor(address,address,address,uint16,uint256,uint16)" \
    "$adapters" "$nodes" "$deployer" 100 100000000000000000 5000)
  send "$k_deployer" 0 "$nodes" "setMarket(address)" "$market" >/dev/null
  base=$(cast keccak "tiny-llama")
  send "$k_deployer" 0 "$adapters" "register(string,bytes32,bytes32,uint16,uint64,uint96)" \
    "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" "$(cast keccak weights)" "$base" 8 65536 \
    1000000000000000 >/dev/null
  send "$k_operator" 2ether "$nodes" "register(address,bytes32,string)" "$signer" "$base" \
    "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN" >/dev/null

  input=$(cast from-utf8 'Summarise: LoRA adapters are low-rank updates to a frozen base model.')
  output=$(cast from-utf8 "$(printf 'A%.0s' $(seq 256))")
  for job in 1 2; do
    deadline=$(( $(date +%s) + 3600 ))
    a_submit=$(send "$k_submitter" 10000000000000000 "$market" "submitJob(uint256,bytes,uint32,uint64)" \
      1 "$input" 64 "$deadline")
    a_claim=$(send "$k_operator" 0 "$market" "claimJob(uint256)" "$job")
    digest=$(cast call --rpc-url "$rpc" "$market" \
      "resultDigest(uint256,bytes32,bytes32,bytes32)(bytes32)" "$job" "$(cast keccak "$input")" \
      "$(cast keccak weights)" "$(cast keccak "$output")")
    sig=$(cast wallet sign --no-hash --private-key "$k_signer" "$digest")
    a_result=$(send "$k_operator" 0 "$market" "submitResult(uint256,bytes,bytes)" "$job" "$output" "$sig")
  done
  a_total=$((a_submit + a_claim + a_result))
  echo "anvil receipts    submitJob=$a_submit claimJob=$a_claim submitResult=$a_result total=$a_total"
fi

printf '{"forge_isolated_total":%d,"forge":{"submitJob":%d,"claimJob":%d,"submitResult":%d},' \
  "$f_total" "$f_submit" "$f_claim" "$f_result"
printf '"anvil_receipts_total":%d,"anvil":{"submitJob":%d,"claimJob":%d,"submitResult":%d},' \
  "$a_total" "$a_submit" "$a_claim" "$a_result"
printf '"intrinsic_gas_included":%d,"budget":200000}\n' $((3 * 21000))
