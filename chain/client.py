"""A synchronous client for submitters, publishers and operators: the contract calls, typed.

The node daemon does not use this (it has the transaction manager); tools, the dev orchestrator
and the Python SDK do."""

from __future__ import annotations

import time
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain.artifacts import load_artifact
from chain.deployment import Deployment
from chain.errors import describe_revert


class ContractCallError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobResult:
    job_id: int
    node: str
    output: bytes
    output_hash: bytes
    node_amount: int
    adapter_amount: int
    protocol_amount: int
    tx_hash: str
    block_number: int


class ProtocolClient:
    def __init__(self, w3: Web3, deployment: Deployment, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.adapters: Contract = w3.eth.contract(
            address=deployment.adapter_registry, abi=load_artifact("AdapterRegistry").abi
        )
        self.nodes: Contract = w3.eth.contract(
            address=deployment.node_registry, abi=load_artifact("NodeRegistry").abi
        )
        self.market: Contract = w3.eth.contract(
            address=deployment.job_market, abi=load_artifact("JobMarket").abi
        )

    # ---- plumbing ----
    def transact(self, fn, value: int = 0) -> dict:
        if self.account is None:
            raise ContractCallError("this client has no account: pass one to send transactions")
        params = {"from": self.account.address, "value": value}
        try:
            fn.call(params)
        except Exception as e:
            data = getattr(e, "data", None)
            raise ContractCallError(describe_revert(data) if isinstance(data, str) else str(e)) from None
        params["nonce"] = self.w3.eth.get_transaction_count(self.account.address, "pending")
        tx = fn.build_transaction(params)
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise ContractCallError(f"transaction {tx_hash.hex()} reverted")
        return receipt

    # ---- publishers ----
    def register_adapter(
        self, cid: str, content_hash: bytes, base_model: bytes, rank: int, size: int, fee_per_job: int
    ) -> int:
        receipt = self.transact(
            self.adapters.functions.register(cid, content_hash, base_model, rank, size, fee_per_job)
        )
        (event,) = self.adapters.events.AdapterRegistered().process_receipt(receipt)
        return event["args"]["adapterId"]

    # ---- operators ----
    def register_node(self, signer: str, base_model: bytes, peer_id: str, stake_wei: int) -> dict:
        return self.transact(self.nodes.functions.register(signer, base_model, peer_id), value=stake_wei)

    def withdraw(self) -> dict:
        return self.transact(self.market.functions.withdraw())

    def withdrawable(self, account: str) -> int:
        return self.market.functions.balanceOf(account).call()

    # ---- submitters ----
    def submit_job(
        self,
        adapter_id: int,
        prompt: str | bytes,
        *,
        max_tokens: int,
        price_wei: int,
        deadline: int | None = None,
        ttl_s: int = 600,
    ) -> int:
        data = prompt.encode() if isinstance(prompt, str) else prompt
        deadline = deadline or int(self.w3.eth.get_block("latest")["timestamp"]) + ttl_s
        receipt = self.transact(
            self.market.functions.submitJob(adapter_id, data, max_tokens, deadline), value=price_wei
        )
        (event,) = self.market.events.JobSubmitted().process_receipt(receipt)
        return event["args"]["jobId"]

    def result(self, job_id: int, from_block: int = 0) -> JobResult | None:
        logs = self.market.events.ResultSubmitted.get_logs(
            from_block=from_block, argument_filters={"jobId": job_id}
        )
        if not logs:
            return None
        e = logs[-1]
        a = e["args"]
        return JobResult(
            job_id,
            a["node"],
            bytes(a["output"]),
            bytes(a["outputHash"]),
            a["nodeAmount"],
            a["adapterAmount"],
            a["protocolAmount"],
            e["transactionHash"].to_0x_hex(),
            e["blockNumber"],
        )

    def wait_result(self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5) -> JobResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.result(job_id, self.deployment.start_block)
            if found:
                return found
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id}: no result within {timeout:.0f}s")
