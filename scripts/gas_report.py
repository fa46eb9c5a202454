"""Gas of protocol v2 measured from Anvil receipts (used by scripts/gas-report.sh).

Deploys with scripts/deploy.sh on a throw-away Anvil, registers an adapter and a node, then measures, each
after a warm-up round and two challenge windows of time (steady state):
  - one job's submitJob + claimJob + submitResult with a 256-byte output (lifecycle_total);
  - a node's claimJobs + submitResults per job at batch 10 and batch 100.
Finalization is included: results are held for the challenge window in a HeldBalance word and mature without a
transaction of their own (the next credit or the withdrawal matures them), so a steady-state submitResults
already pays for maturing the previous round's earnings.

Prints one JSON object (the anvil figures) on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eth_abi import encode
from eth_account import Account
from web3 import Web3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chain.terms import Terms  # noqa: E402

# Anvil's well-known dev keys: deployer/owner/publisher, node operator, node signer, submitter.
K_DEPLOYER = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
K_OPERATOR = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
K_SIGNER = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca883dbf6a1e4f9b0a1ba8e"
K_SUBMITTER = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
ADAPTER_FEE = 10**15
PRICE = 10**16
INPUT = b"Summarise: LoRA adapters are low-rank updates to a frozen base model."
OUTPUT = bytes(0x41 + i % 26 for i in range(256))
BASE = Web3.keccak(text="tiny-llama")
PROOF_HASH = Web3.keccak(text="TOPLOC evidence bundle")
PEER_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def calldata_floor(data: bytes) -> int:
    """EIP-7623 (Prague): a transaction pays at least 21000 + 10 gas per calldata token (zero byte 1 token,
    other bytes 4)."""
    zeros = data.count(0)
    return 21000 + 10 * (zeros + 4 * (len(data) - zeros))


def abi(name: str) -> list:
    return json.loads((ROOT / f"contracts/out/{name}.sol/{name}.json").read_text())["abi"]


class Chain:
    def __init__(self, rpc: str, deployment: dict):
        self.w3 = Web3(Web3.HTTPProvider(rpc))
        self.market = self.w3.eth.contract(address=deployment["job_market"], abi=abi("JobMarket"))
        self.nodes = self.w3.eth.contract(address=deployment["node_registry"], abi=abi("NodeRegistry"))
        self.adapters = self.w3.eth.contract(
            address=deployment["adapter_registry"], abi=abi("AdapterRegistry")
        )
        self.nonces: dict[str, int] = {}
        self.proof = PROOF_HASH  # a node with [verify].prove on signs its TOPLOC proof's hash

    def send(self, key: str, fn, value: int = 0) -> dict:
        acct = Account.from_key(key)
        if acct.address not in self.nonces:
            self.nonces[acct.address] = self.w3.eth.get_transaction_count(acct.address)
        tx = fn.build_transaction(
            {
                "from": acct.address,
                "value": value,
                "nonce": self.nonces[acct.address],
                "gas": 29_000_000,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
                "chainId": self.w3.eth.chain_id,
            }
        )
        self.nonces[acct.address] += 1
        signed = Account.sign_transaction(tx, key)
        h = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        r = self.w3.eth.wait_for_transaction_receipt(h)
        if r["status"] != 1:
            raise RuntimeError(f"transaction failed: {fn.fn_name}")
        return {**r, "floor": calldata_floor(bytes.fromhex(tx["data"].removeprefix("0x")))}

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def submit(self) -> tuple[tuple, int]:
        deadline = self.w3.eth.get_block("latest")["timestamp"] + 3600
        r = self.send(
            K_SUBMITTER,
            self.market.functions.submitJob(1, ADAPTER_FEE, INPUT, 64, deadline),
            value=PRICE,
        )
        ev = self.market.events.JobSubmitted().process_receipt(r)[0]
        terms = Terms.from_abi(ev["args"]["terms"]).as_abi()
        return terms, r["gasUsed"]

    def keys(self, t: tuple) -> tuple[tuple, tuple]:
        """The ClaimKey and the ResultEntry (256-byte output, proof hash) for terms t, from keysOf."""
        head, words, body, rest = self.market.functions.keysOf(t).call()
        return (head, words, body), (head, words, rest, OUTPUT, b"\0" * 32, self.proof)

    def sign(self, terms_list: list[tuple]) -> bytes:
        result_type = self.market.functions.RESULT_TYPEHASH().call()
        batch_type = self.market.functions.BATCH_TYPEHASH().call()
        domain = self.market.functions.domainSeparator().call()
        out_hash = Web3.keccak(OUTPUT)
        leaves = b""
        for t in terms_list:
            th = self.market.functions.hashTerms(t).call()
            leaf = encode(
                ["bytes32", "uint256", "bytes32", "bytes32", "bytes32"],
                [result_type, t[0], th, out_hash, self.proof],
            )
            leaves += Web3.keccak(leaf)
        struct = Web3.keccak(encode(["bytes32", "bytes32"], [batch_type, Web3.keccak(leaves)]))
        digest = Web3.keccak(b"\x19\x01" + domain + struct)
        s = Account.unsafe_sign_hash(digest, K_SIGNER)
        return s.r.to_bytes(32, "big") + s.s.to_bytes(32, "big") + bytes([s.v])

    def lifecycle(self) -> dict:
        terms, g_submit = self.submit()
        claim_key, entry = self.keys(terms)
        g_claim = self.send(K_OPERATOR, self.market.functions.claimJob(claim_key))["gasUsed"]
        sig = self.sign([terms])
        g_result = self.send(K_OPERATOR, self.market.functions.submitResult(entry, sig))["gasUsed"]
        return {"submitJob": g_submit, "claimJob": g_claim, "submitResult": g_result}

    def batch(self, n: int) -> dict:
        ts = [self.submit()[0] for _ in range(n)]
        keys = [self.keys(t) for t in ts]
        rc = self.send(K_OPERATOR, self.market.functions.claimJobs([k for k, _ in keys]))
        items = [e for _, e in keys]
        rr = self.send(K_OPERATOR, self.market.functions.submitResults(items, self.sign(ts)))
        g_claim, g_result = rc["gasUsed"], rr["gasUsed"]
        return {
            "claimJobs": g_claim,
            "submitResults": g_result,
            "per_job": (g_claim + g_result) // n,
            # The calldata floor: what these transactions would cost with no execution at all.
            "claimJobs_calldata_floor": rc["floor"],
            "submitResults_calldata_floor": rr["floor"],
        }


def main() -> int:
    port = 20000 + (os.getpid() % 20000)
    rpc = f"http://127.0.0.1:{port}"
    anvil = subprocess.Popen(
        [str(ROOT / ".tools/bin/anvil"), "--port", str(port), "--silent", "--gas-limit", "60000000"],
        stdout=subprocess.DEVNULL,
    )
    backup = None
    dep = ROOT / "deployments/31337.json"
    if dep.exists():
        backup = dep.read_bytes()
    try:
        w3 = Web3(Web3.HTTPProvider(rpc))
        for _ in range(100):
            if w3.is_connected():
                break
            time.sleep(0.1)
        subprocess.run(
            [str(ROOT / "scripts/deploy.sh"), "--rpc-url", rpc, "--private-key", K_DEPLOYER],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        chain = Chain(rpc, json.loads(dep.read_text()))
        window = chain.market.functions.challengeWindow().call()
        chain.send(
            K_DEPLOYER,
            chain.adapters.functions.register(
                "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
                Web3.keccak(text="weights"),
                BASE,
                8,
                65536,
                ADAPTER_FEE,
            ),
        )
        signer = Account.from_key(K_SIGNER).address
        chain.send(
            K_OPERATOR,
            chain.nodes.functions.register(signer, BASE, PEER_ID),
            value=10 * 10**18,
        )
        report: dict = {}
        # Steady state: three warm-up rounds, two challenge windows apart, fill both held buckets of the
        # node and the adapter and make their pull balances non-zero, so every later round matures an older
        # bucket into a non-zero balance (what a node that does not withdraw after every round pays).
        for _ in range(3):
            chain.lifecycle()
            chain.advance(2 * window + 1)
        # Headline: results carry a proof hash, as a node with [verify].prove on posts them; then the same
        # without one (prove = off).
        for suffix, proof in (("", PROOF_HASH), ("_no_proof", b"\0" * 32)):
            chain.proof = proof
            report["lifecycle" + suffix] = chain.lifecycle()
            chain.advance(2 * window + 1)
            for n in (10, 100):
                chain.batch(n)  # warm-up at this batch size
                chain.advance(2 * window + 1)
                report[f"batch{n}{suffix}"] = chain.batch(n)
                chain.advance(2 * window + 1)
        print(json.dumps(report))
        return 0
    finally:
        anvil.terminate()
        anvil.wait()
        if backup is None:
            dep.unlink(missing_ok=True)
        else:
            dep.write_bytes(backup)


if __name__ == "__main__":
    sys.exit(main())
