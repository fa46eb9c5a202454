"""Where one job's gas goes: an opcode-class profile of submitJob, claimJob and submitResult on Anvil.

Deploys protocol v2 on a throw-away Anvil (started with --steps-tracing), runs four single-job lifecycles two
challenge windows apart (the steady state scripts/gas-report.sh measures: 256-byte output, a proof hash) and
traces the last one's three transactions with debug_traceTransaction. Each top-level opcode is charged the gas
between it and the next top-level step, so a CALL/STATICCALL carries everything its callee spent. Prints one
JSON object: per transaction its gasUsed, the intrinsic part (21,000 + calldata at 4 gas per token; EIP-7623's
floor when higher) and the execution gas by class (SSTORE, SLOAD, calls, LOG, KECCAK256, other), which add up
to gasUsed exactly (`check`).

Usage: scripts/gas_profile.py   (after `make contracts`; about 10 s)
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_account import Account
from web3 import Web3

from chain.deployment import deploy
from chain.devnet import Anvil, dev_private_key
from chain.signing import ResultBatch, SignedResult
from chain.terms import Terms

OUTPUT = bytes(0x41 + i % 26 for i in range(256))
INPUT = b"Summarise: LoRA adapters are low-rank updates to a frozen base model."
PROOF = Web3.keccak(text="TOPLOC evidence bundle")
NAMED = {"SSTORE", "SLOAD", "CALL", "STATICCALL", "DELEGATECALL", "KECCAK256", "LOG1", "LOG2", "LOG3", "LOG4"}


def _send(w3: Web3, account, fn, value: int = 0) -> dict:
    tx = fn.build_transaction(
        {"from": account.address, "value": value, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    )
    if receipt["status"] != 1:
        raise RuntimeError(f"{fn.fn_name} reverted")
    return receipt


def profile(w3: Web3, tx_hash: bytes) -> dict:
    """gasUsed of a transaction split into intrinsic gas and execution gas by opcode class."""
    trace = w3.provider.make_request(
        "debug_traceTransaction",
        [tx_hash.to_0x_hex(), {"disableStorage": True, "disableMemory": True, "disableStack": True}],
    )["result"]
    steps = trace["structLogs"]
    top = min(s["depth"] for s in steps)
    at_top = [i for i, s in enumerate(steps) if s["depth"] == top]
    by_class: collections.Counter[str] = collections.Counter()
    for k, i in enumerate(at_top):
        nxt = at_top[k + 1] if k + 1 < len(at_top) else None
        cost = steps[i]["gasCost"] if nxt is None else steps[i]["gas"] - steps[nxt]["gas"]
        op = steps[i]["op"]
        by_class[op if op in NAMED else "other"] += cost
    data = bytes(w3.eth.get_transaction(tx_hash)["input"])
    zeros = data.count(0)
    tokens = zeros + 4 * (len(data) - zeros)
    execution = sum(by_class.values())
    gas_used = w3.eth.get_transaction_receipt(tx_hash)["gasUsed"]
    intrinsic = 21_000 + 4 * tokens
    # EIP-7623: a transaction pays at least 21000 + 10 gas per token (then its steps cost less than it paid).
    floor = 21_000 + 10 * tokens
    return {
        "gas_used": gas_used,
        "intrinsic": intrinsic,
        "calldata_tokens": tokens,
        "calldata_floor": floor,
        "execution": dict(by_class.most_common()),
        "check": max(intrinsic + execution, floor) == gas_used,
    }


def main() -> int:
    with Anvil(extra_args=["--steps-tracing"]) as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        owner, operator, signer, submitter = (Account.from_key(dev_private_key(i)) for i in range(4))
        d = deploy(w3, owner)
        market = d.contract(w3.eth, "JobMarket")
        base = Web3.keccak(text="tiny-llama")
        cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
        _send(w3, owner, d.contract(w3.eth, "AdapterRegistry").functions.register(
            cid, Web3.keccak(text="weights"), base, 8, 65536, 10**15
        ))  # fmt: skip
        peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        nodes = d.contract(w3.eth, "NodeRegistry")
        _send(w3, operator, nodes.functions.register(signer.address, base, peer), value=10**19)
        window = market.functions.challengeWindow().call()
        for _ in range(4):
            deadline = w3.eth.get_block("latest")["timestamp"] + 3600
            submit = market.functions.submitJob(1, 10**15, INPUT, 64, deadline)
            sub = _send(w3, submitter, submit, value=10**16)
            t = Terms.from_abi(market.events.JobSubmitted().process_receipt(sub)[0]["args"]["terms"])
            claim = _send(w3, operator, market.functions.claimJob(t.claim_key()))
            signed = SignedResult.for_output(t.job_id, t.hash(), OUTPUT, PROOF)
            sig = ResultBatch(w3.eth.chain_id, market.address, (signed,)).sign(signer.key)
            result = _send(w3, operator, market.functions.submitResult(t.result_entry(OUTPUT, PROOF), sig))
            w3.provider.make_request("evm_increaseTime", [2 * window + 1])
            w3.provider.make_request("evm_mine", [])
        report = {
            name: profile(w3, r["transactionHash"])
            for name, r in (("submitJob", sub), ("claimJob", claim), ("submitResult", result))
        }
        report["lifecycle_total"] = sum(r["gas_used"] for r in report.values())
        print(json.dumps(report))
        return 0


if __name__ == "__main__":
    sys.exit(main())
